package replication

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/testbed"
)

// The GlusterFS reference: glusterd on two hosts of a bed of their own
// (each with its own /var/lib/glusterd, /var/log/glusterfs and /run, so the
// two daemons do not share state although they share the machine's files),
// one brick per host in its own backing directory, a replica-2 volume with
// the default options, mounted through FUSE (mount -t glusterfs) in alpha.

const (
	glusterVolume = "bench"
	glusterSetup  = 90 * time.Second // bound on each setup wait
)

// glusterTools are the programs the reference needs (Debian
// glusterfs-server, which brings glusterfs-client).
var glusterTools = []string{"glusterd", "gluster", "glusterfs"}

// ensureGluster installs glusterfs-server when a tool is missing. Only the
// benchmark asks for it; the normal test suite never installs it.
func ensureGluster(t *testing.T) error {
	var missing []string
	for _, tool := range glusterTools {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if _, err := os.Stat("/sbin/mount.glusterfs"); err != nil {
		missing = append(missing, "mount.glusterfs")
	}
	if len(missing) == 0 {
		return nil
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		return fmt.Errorf("GlusterFS missing (%s) and no apt-get to install it: install glusterfs-server by hand", strings.Join(missing, ", "))
	}
	t.Logf("GlusterFS missing (%s): installing the Debian package glusterfs-server for the benchmark's reference (apt-get update && apt-get install -y glusterfs-server)...", strings.Join(missing, ", "))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	for _, args := range [][]string{{"update", "-qq"}, {"install", "-y", "-qq", "glusterfs-server"}} {
		cmd := exec.CommandContext(ctx, "apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("apt-get %s: %w: %s (install glusterfs-server by hand)", strings.Join(args, " "), err, tailLines(string(out), 10))
		}
	}
	return nil
}

func tailLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// startGluster builds the GlusterFS bed and returns the target writing
// through the FUSE mount on alpha.
func startGluster(t *testing.T) (*target, error) {
	if err := ensureGluster(t); err != nil {
		return nil, err
	}
	bed := testbed.NewT(t, testbed.Options{})
	var hosts []*testbed.Host
	for _, name := range []string{"alpha", "beta"} {
		h, err := bed.AddHost(name)
		if err != nil {
			return nil, err
		}
		hosts = append(hosts, h)
	}
	bricks := map[string]string{}
	for _, h := range hosts {
		base := filepath.Join(bed.Dir(), "gluster-"+h.Name)
		lib, logs, brick := filepath.Join(base, "lib"), filepath.Join(base, "log"), filepath.Join(base, "brick")
		for _, d := range []string{lib, logs, brick} {
			if err := os.MkdirAll(d, 0o755); err != nil {
				return nil, err
			}
		}
		// The package's option groups and hooks, but no daemon state: each
		// host gets its own UUID.
		for _, sub := range []string{"groups", "hooks"} {
			if _, err := os.Stat("/var/lib/glusterd/" + sub); err == nil {
				if out, err := exec.Command("cp", "-a", "/var/lib/glusterd/"+sub, lib).CombinedOutput(); err != nil {
					return nil, fmt.Errorf("copy /var/lib/glusterd/%s: %v: %s", sub, err, out)
				}
			}
		}
		if err := h.BindMount(lib, "/var/lib/glusterd"); err != nil {
			return nil, err
		}
		if err := h.BindMount(logs, "/var/log/glusterfs"); err != nil {
			return nil, err
		}
		// glusterd keeps its socket and pid files in /run (/var/run).
		if err := h.MountTmpfs("/run", 64<<20); err != nil {
			return nil, err
		}
		if _, err := h.Run("mkdir", "-p", "/run/gluster"); err != nil {
			return nil, err
		}
		bricks[h.Name] = brick
		p, err := h.Start("glusterd", "-N", "-L", "WARNING")
		if err != nil {
			return nil, err
		}
		if err := waitFor(glusterSetup, "glusterd on "+h.Name+" answering (log "+p.LogPath+", "+logs+")", func() error {
			select {
			case <-p.Done():
				return errStop{fmt.Errorf("glusterd exited: %v", p.Wait(0))}
			default:
			}
			_, err := h.Run("gluster", "--mode=script", "pool", "list")
			return err
		}); err != nil {
			return nil, err
		}
	}
	alpha, beta := hosts[0], hosts[1]
	aIP, bIP := alpha.Addr("lan").String(), beta.Addr("lan").String()
	if _, err := alpha.Run("gluster", "--mode=script", "peer", "probe", bIP); err != nil {
		return nil, err
	}
	if err := waitFor(glusterSetup, "beta in alpha's trusted pool", func() error {
		out, err := alpha.Run("gluster", "--mode=script", "peer", "status")
		if err != nil {
			return err
		}
		if !strings.Contains(out, "Peer in Cluster (Connected)") {
			return errors.New(strings.TrimSpace(out))
		}
		return nil
	}); err != nil {
		return nil, err
	}
	// "force": the bricks are on the root filesystem, which gluster
	// refuses otherwise.
	if _, err := alpha.Run("gluster", "--mode=script", "volume", "create", glusterVolume, "replica", "2", "transport", "tcp",
		aIP+":"+bricks["alpha"], bIP+":"+bricks["beta"], "force"); err != nil {
		return nil, err
	}
	if _, err := alpha.Run("gluster", "--mode=script", "volume", "start", glusterVolume); err != nil {
		return nil, err
	}
	if err := waitFor(glusterSetup, "both bricks online", func() error {
		out, err := alpha.Run("gluster", "--mode=script", "volume", "status", glusterVolume, "detail")
		if err != nil {
			return err
		}
		if n := strings.Count(out, "Online"); n != 2 || strings.Count(strings.ReplaceAll(out, " ", ""), "Online:Y") != 2 {
			return errors.New(strings.TrimSpace(out))
		}
		return nil
	}); err != nil {
		return nil, err
	}
	mnt := filepath.Join(bed.Dir(), "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		return nil, err
	}
	if _, err := alpha.Run("mount", "-t", "glusterfs", aIP+":/"+glusterVolume, mnt); err != nil {
		return nil, err
	}
	// Before the bed kills the daemons: unmount, so no process is left
	// blocked on a dead FUSE connection.
	t.Cleanup(func() { alpha.Run("umount", "-l", mnt) })
	dir := filepath.Join(mnt, "w")
	// Both bricks must get what the mount writes, or this is no replica 2.
	if err := waitFor(glusterSetup, "a probe file on both bricks", func() error {
		if _, err := alpha.Run("sh", "-c", `mkdir -p "$1" && echo probe > "$1/probe" && sync`, "sh", dir); err != nil {
			return err
		}
		for _, h := range hosts {
			if b, err := os.ReadFile(filepath.Join(bricks[h.Name], "w", "probe")); err != nil || string(b) != "probe\n" {
				return fmt.Errorf("brick of %s: %q %v", h.Name, b, err)
			}
		}
		return nil
	}); err != nil {
		return nil, err
	}
	if _, err := alpha.Run("rm", "-f", filepath.Join(dir, "probe")); err != nil {
		return nil, err
	}
	return &target{product: Gluster, host: alpha, dirs: []string{dir}}, nil
}

// errStop ends waitFor at once.
type errStop struct{ error }

// waitFor retries fn every 200 ms until it returns nil, for at most
// within; the error names what was awaited and the last failure.
func waitFor(within time.Duration, what string, fn func() error) error {
	deadline := time.Now().Add(within)
	var err error
	for {
		err = fn()
		if err == nil {
			return nil
		}
		var stop errStop
		if errors.As(err, &stop) || time.Now().After(deadline) {
			return fmt.Errorf("waiting for %s: %w", what, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// glusterVersion is the first line of glusterfs --version, or "".
func glusterVersion() string {
	out, err := exec.Command("glusterfs", "--version").Output()
	if err != nil {
		return ""
	}
	return strings.SplitN(string(out), "\n", 2)[0]
}
