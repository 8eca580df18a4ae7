package demo

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
)

// tools the test bed runs, with the packages that provide them.
var tools = []struct{ name, deb, rpm string }{
	{"ip", "iproute2", "iproute"},
	{"nsenter", "util-linux", "util-linux"},
	{"unshare", "util-linux", "util-linux"},
	{"mount", "mount", "util-linux"},
	{"sh", "dash", "bash"},
}

// Check reports everything the demo needs and this machine lacks, with
// how to get it, or nil.
func Check() error {
	var need []string
	root := os.Geteuid() == 0
	if !root {
		need = append(need, "root: the demo builds network and mount namespaces and mounts FUSE; run it with sudo: sudo tandem demo")
	}
	var missing, debs, rpms []string
	for _, t := range tools {
		if _, err := exec.LookPath(t.name); err != nil {
			missing = append(missing, t.name)
			debs = appendNew(debs, t.deb)
			rpms = appendNew(rpms, t.rpm)
		}
	}
	if len(missing) > 0 {
		need = append(need, fmt.Sprintf("%s: not found in PATH (%s): apt-get install -y %s (Fedora, RHEL: dnf install -y %s)",
			strings.Join(missing, ", "), os.Getenv("PATH"), strings.Join(debs, " "), strings.Join(rpms, " ")))
	}
	if err := checkFUSE(root); err != nil {
		need = append(need, err.Error())
	}
	if len(need) == 0 {
		return nil
	}
	return fmt.Errorf("tandem demo cannot run here; it needs:\n  - %s", strings.Join(need, "\n  - "))
}

func appendNew(s []string, v string) []string {
	for _, x := range s {
		if x == v {
			return s
		}
	}
	return append(s, v)
}

// checkFUSE checks /dev/fuse, the replicated directory's front end; the
// agent mounts it directly (no fusermount needed).
func checkFUSE(root bool) error {
	const dev = "/dev/fuse"
	fi, err := os.Stat(dev)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return errors.New("FUSE (/dev/fuse is missing): load the module with `modprobe fuse`; in a container, start it with --device /dev/fuse --cap-add SYS_ADMIN")
		}
		return fmt.Errorf("FUSE: stat %s: %v", dev, err)
	}
	if fi.Mode()&os.ModeCharDevice == 0 {
		return fmt.Errorf("FUSE: %s is not a character device (mode %v): remove it and run `modprobe fuse`", dev, fi.Mode())
	}
	if !root {
		return nil // opening it needs root here; root is reported already
	}
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("FUSE: open %s: %v (in a container, start it with --device /dev/fuse --cap-add SYS_ADMIN)", dev, err)
	}
	f.Close()
	return nil
}
