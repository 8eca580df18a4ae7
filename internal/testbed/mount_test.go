package testbed

import (
	"context"
	"github.com/tandem-ha/tandem/internal/mountinfo"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// fuseEnv makes the test binary a tiny FUSE daemon serving one file,
// "hello", at the directory it names (see TestMain).
const fuseEnv = "TESTBED_TEST_FUSE_MOUNT"

func TestMain(m *testing.M) {
	if dir := os.Getenv(fuseEnv); dir != "" {
		os.Exit(fuseDaemon(dir))
	}
	os.Exit(m.Run())
}

type helloRoot struct{ fs.Inode }

var _ fs.NodeOnAdder = (*helloRoot)(nil)

func (r *helloRoot) OnAdd(ctx context.Context) {
	f := r.NewPersistentInode(ctx, &fs.MemRegularFile{Data: []byte("hello\n"), Attr: fuse.Attr{Mode: 0o644}}, fs.StableAttr{Ino: 2})
	r.AddChild("hello", f, false)
}

func fuseDaemon(dir string) int {
	srv, err := fs.Mount(dir, &helloRoot{}, &fs.Options{MountOptions: fuse.MountOptions{
		DirectMountStrict: true, FsName: "testbed-hello", Name: "testbedhello",
	}})
	if err != nil {
		os.Stderr.WriteString("fuse daemon: mount " + dir + ": " + err.Error() + "\n")
		return 1
	}
	srv.Wait()
	return 0
}

func TestParseMountinfo(t *testing.T) {
	in := "36 35 98:0 /mnt1 /mnt/a\\040b rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n" +
		"40 36 0:52 / /srv/x rw,nosuid - fuse.testbedhello testbed-hello rw,user_id=0\nbad line\n"
	got := mountinfo.Parse(in)
	if len(got) != 2 || got[0].Point != "/mnt/a b" || got[0].FSType != "ext3" || got[1].FSType != "fuse.testbedhello" || got[1].Dev != "0:52" {
		t.Fatalf("%+v", got)
	}
}

func TestBindMount(t *testing.T) {
	b, a, bb, _ := newBed(t)
	srcA, srcB := filepath.Join(b.Dir(), "a-data"), filepath.Join(b.Dir(), "b-data")
	for _, s := range []string{srcA, srcB} {
		if err := os.Mkdir(s, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(s, "who"), []byte(filepath.Base(s)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	top := filepath.Join(os.TempDir(), "tandem-testbed-bind-"+b.ID())
	dst := filepath.Join(top, "srv/data")
	t.Cleanup(func() { _ = os.RemoveAll(top) })
	if err := a.BindMount(srcA, dst); err != nil {
		t.Fatal(err)
	}
	if err := bb.BindMount(srcB, dst); err != nil {
		t.Fatal(err)
	}
	// Same path, different contents; the root namespace sees the bare,
	// empty directory BindMount created.
	for h, want := range map[*Host]string{a: "a-data", bb: "b-data"} {
		if out, err := h.Run("cat", dst+"/who"); err != nil || out != want {
			t.Errorf("host %s: %s/who = %q (%v), want %q", h.Name, dst, out, err, want)
		}
		if ok, err := h.Mounted(dst); !ok || err != nil {
			t.Errorf("host %s: Mounted(%s) = %v, %v", h.Name, dst, ok, err)
		}
	}
	if ents, err := os.ReadDir(dst); err != nil || len(ents) != 0 {
		t.Errorf("root namespace: %s holds %v (%v), want an empty directory", dst, ents, err)
	}
	// Writes land in the host's own source directory.
	if _, err := a.Run("sh", "-c", "echo x > "+dst+"/new"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(srcA, "new")); err != nil {
		t.Errorf("write through a's bind mount: %v", err)
	}
	// A file bound on a new file path.
	if err := a.BindMount(filepath.Join(srcA, "who"), filepath.Join(top, "etc/who")); err != nil {
		t.Fatal(err)
	}
	if out, err := a.Run("cat", filepath.Join(top, "etc/who")); err != nil || out != "a-data" {
		t.Errorf("file bind: %q %v", out, err)
	}

	// Unmount, and again.
	if err := a.Unmount(dst); err != nil {
		t.Fatal(err)
	}
	if out, err := a.Run("ls", dst); err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("after Unmount %s shows %q (%v)", dst, out, err)
	}
	if err := a.Unmount(dst); err == nil {
		t.Error("second Unmount succeeded")
	}
	if err := a.BindMount(srcA, dst); err != nil {
		t.Fatal(err)
	}

	// Bad input fails without leaving anything.
	if err := a.BindMount("relative", dst); err == nil {
		t.Error("relative source accepted")
	}
	if err := a.BindMount(srcA, "/"); err == nil {
		t.Error("bind on / accepted")
	}
	missing := filepath.Join(top, "x/y")
	if err := a.BindMount(filepath.Join(b.Dir(), "nope"), missing); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("missing source: %v", err)
	}
	if _, err := os.Stat(filepath.Join(top, "x")); err == nil {
		t.Error("failed BindMount left its directory")
	}

	// A tmpfs unmounted is no longer fillable.
	tmp := filepath.Join(b.Dir(), "small")
	if err := a.MountTmpfs(tmp, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := a.Unmount(tmp); err != nil {
		t.Fatal(err)
	}
	if err := a.FillDisk(tmp); err == nil {
		t.Error("FillDisk accepted an unmounted tmpfs path")
	}

	// Close removes what BindMount created.
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(top); err == nil {
		ents, _ := os.ReadDir(top)
		t.Errorf("%s left after Close (holds %v)", top, ents)
	}
}

// fusectlConnections lists live FUSE connections, read through a fusectl
// mounted in a throw-away mount namespace (the root namespace is not
// touched).
func fusectlConnections(t *testing.T) map[string]bool {
	t.Helper()
	out, err := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c",
		"mount -t fusectl fusectl /sys/fs/fuse/connections && ls /sys/fs/fuse/connections").CombinedOutput()
	if err != nil {
		t.Skipf("cannot mount fusectl to list FUSE connections: %v: %s", err, out)
	}
	m := map[string]bool{}
	for _, f := range strings.Fields(string(out)) {
		m[f] = true
	}
	return m
}

// TestFUSEMountInHost checks that a FUSE mount made by a process started in
// a host is visible to the host's other processes only, that a dead
// daemon's mount can be unmounted, and that Close releases FUSE mounts,
// alive or with a killed daemon, without any help.
func TestFUSEMountInHost(t *testing.T) {
	if err := Available(); err != nil {
		t.Skip(err)
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("no /dev/fuse: modprobe fuse")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	_ = CleanupStale()
	b, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	a, err := b.AddHost("a")
	if err != nil {
		t.Fatal(err)
	}
	other, err := b.AddHost("b")
	if err != nil {
		t.Fatal(err)
	}
	start := func(dir string) *Proc {
		t.Helper()
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		cmd := a.Command(exe, "-test.run=^$")
		cmd.Env = append(os.Environ(), fuseEnv+"="+dir)
		p, err := a.StartCmd(cmd)
		if err != nil {
			t.Fatal(err)
		}
		eventually(t, "FUSE mount at "+dir, func() error {
			select {
			case <-p.Done():
				log, _ := p.Log()
				t.Fatalf("FUSE daemon exited: %s", log)
			default:
			}
			out, err := a.Run("cat", dir+"/hello")
			if err == nil && out != "hello\n" {
				t.Fatalf("hello = %q", out)
			}
			return err
		})
		return p
	}
	dirs := []string{filepath.Join(b.Dir(), "fuse1"), filepath.Join(b.Dir(), "fuse2"), filepath.Join(b.Dir(), "fuse3")}
	var procs []*Proc
	for _, d := range dirs {
		procs = append(procs, start(d))
	}

	mounts, err := a.Mounts()
	if err != nil {
		t.Fatal(err)
	}
	conns := map[string]string{} // dir -> connection number
	for _, m := range mounts {
		if m.FSType == "fuse.testbedhello" {
			conns[m.Point] = m.Dev[strings.IndexByte(m.Dev, ':')+1:]
		}
	}
	if len(conns) != 3 {
		t.Fatalf("host a mounts: %+v", mounts)
	}
	live := fusectlConnections(t)
	for d, c := range conns {
		if !live[c] {
			t.Fatalf("connection %s of %s not in fusectl %v", c, d, live)
		}
	}

	// Invisible to the other host and to the root namespace.
	if out, err := other.Run("ls", dirs[0]); err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("host b sees %q in %s (%v)", out, dirs[0], err)
	}
	if ms, _ := other.Mounts(); strings.Contains(fmtMounts(ms), "testbedhello") {
		t.Errorf("host b mount table shows the FUSE mount:\n%s", fmtMounts(ms))
	}
	if mi, _ := os.ReadFile("/proc/self/mountinfo"); strings.Contains(string(mi), "testbedhello") {
		t.Error("root namespace shows the FUSE mount")
	}

	// Kill two daemons: their mounts go stale (ENOTCONN).
	for _, p := range procs[:2] {
		if err := p.Kill9(); err != nil {
			t.Fatal(err)
		}
	}
	// The dead daemons' connections remain while their mounts exist.
	live = fusectlConnections(t)
	if !live[conns[dirs[0]]] || !live[conns[dirs[1]]] {
		t.Fatalf("connections of stale mounts gone before unmount: %v, fusectl %v", conns, live)
	}
	out, err := a.Run("cat", dirs[0]+"/hello")
	if err == nil || !strings.Contains(out, "not connected") {
		t.Errorf("read through a dead daemon's mount: %q %v, want ENOTCONN", out, err)
	}
	// A stale mount unmounts; its connection goes.
	if err := a.Unmount(dirs[0]); err != nil {
		t.Fatal(err)
	}
	waitGone(t, conns[dirs[0]])

	// Close: fuse2 (daemon killed) and fuse3 (daemon alive) are released.
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	for _, d := range dirs[1:] {
		waitGone(t, conns[d])
	}
	if left := bedLeftovers(t, b.ID(), b.Dir()); len(left) > 0 {
		t.Fatalf("left after Close:\n%s", strings.Join(left, "\n"))
	}
	if err := syscall.Kill(procs[2].Pid(), 0); err == nil && liveProc(procs[2].Pid()) {
		t.Errorf("FUSE daemon %d alive after Close", procs[2].Pid())
	}
}

func fmtMounts(ms []Mount) string {
	var s []string
	for _, m := range ms {
		s = append(s, m.Point+" "+m.FSType)
	}
	return strings.Join(s, "\n")
}

// waitGone waits (at most 5 s) until FUSE connection c is gone.
func waitGone(t *testing.T, c string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for fusectlConnections(t)[c] {
		if time.Now().After(deadline) {
			t.Fatalf("FUSE connection %s still present 5s later", c)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
