package apply

import (
	"errors"
	"fmt"
	"os"
	"strconv"

	"github.com/tandem-ha/tandem/internal/replica/op"
	"golang.org/x/sys/unix"
)

// removeTree removes p and everything below it, never following a
// symlink. An absent p (or an absent parent) is no error. A directory that
// is a mount point (another filesystem) is refused, not entered.
func (a *Applier) removeTree(p string) error {
	dir, base := split(p)
	dfd, err := a.dirFD(dir)
	if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) || errors.Is(err, unix.ELOOP) {
		return nil // no such directory here, so no p either
	}
	if err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Fstat(a.root, &st); err != nil {
		return fmt.Errorf("stat the replicated directory: %w", err)
	}
	a.files.dropTree(p)
	a.dirs.dropTree(p)
	a.markDirty(dir)
	return removeEntry(dfd, base, p, st.Dev)
}

func removeEntry(dfd int, name, p string, dev uint64) error {
	err := unix.Unlinkat(dfd, name, 0)
	if err == nil || err == unix.ENOENT {
		return nil
	}
	if err != unix.EISDIR && err != unix.EPERM {
		return fmt.Errorf("remove %q: %w", p, err)
	}
	// EISDIR (EPERM on some filesystems): a directory, or a file we may
	// not remove; O_DIRECTORY|O_NOFOLLOW tells them apart.
	cfd, oerr := unix.Openat(dfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	switch {
	case oerr == unix.ENOENT:
		return nil
	case oerr == unix.ENOTDIR || oerr == unix.ELOOP:
		return fmt.Errorf("remove %q: %w", p, err)
	case oerr != nil:
		return fmt.Errorf("open directory %q to empty it: %w", p, oerr)
	}
	f := os.NewFile(uintptr(cfd), p)
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(cfd, &st); err != nil {
		return fmt.Errorf("stat directory %q: %w", p, err)
	}
	if st.Dev != dev {
		return fmt.Errorf("remove %q: a mount point (another filesystem inside the replicated directory): unmount it", p)
	}
	// Only this Applier changes the tree, so a second pass finds nothing;
	// it is there for directories whose listing changed while read.
	for pass := 0; ; pass++ {
		if _, err := f.Seek(0, 0); err != nil {
			return fmt.Errorf("rewind directory %q: %w", p, err)
		}
		names, err := f.Readdirnames(-1)
		if err != nil {
			return fmt.Errorf("read directory %q: %w", p, err)
		}
		if len(names) == 0 {
			break
		}
		if pass >= 3 {
			return fmt.Errorf("remove %q: still %d entries after %d passes", p, len(names), pass)
		}
		for _, n := range names {
			if err := removeEntry(cfd, n, p+"/"+n, dev); err != nil {
				return err
			}
		}
	}
	if err := unix.Unlinkat(dfd, name, unix.AT_REMOVEDIR); err != nil && err != unix.ENOENT {
		return fmt.Errorf("remove directory %q: %w", p, err)
	}
	return nil
}

// keptLabel is never removed by XattrSet: the LSM label is the host's.
const keptLabel = "security.selinux"

// xattrSet gives o.Path exactly the attributes listed in o.Data.
func (a *Applier) xattrSet(o *op.Op) error {
	list, err := op.ParseXattrs(o.Data)
	if err != nil {
		return err
	}
	var x xattrTarget
	if o.Path == "" {
		x.fd = a.root
	} else {
		dir, base := split(o.Path)
		dfd, err := a.dirFD(dir)
		if err != nil {
			return err
		}
		x.fd = -1
		x.path = "/proc/self/fd/" + strconv.Itoa(dfd) + "/" + base
	}
	names, err := x.list()
	if err != nil {
		return fmt.Errorf("list attributes: %w", err)
	}
	want := make(map[string]bool, len(list))
	for _, e := range list {
		want[e.Name] = true
	}
	for _, n := range names {
		if want[n] || n == keptLabel {
			continue
		}
		if err := x.remove(n); err != nil && err != unix.ENODATA {
			return fmt.Errorf("remove attribute %q: %w", n, err)
		}
	}
	for _, e := range list {
		if e.Keep {
			continue
		}
		if err := x.set(e.Name, e.Value); err != nil {
			return fmt.Errorf("set attribute %q: %w", e.Name, err)
		}
	}
	return nil
}

// xattrTarget is an open directory (fd) or an entry reached through our
// own descriptor's /proc link without following its last component.
type xattrTarget struct {
	fd   int
	path string
}

func (x xattrTarget) list() ([]string, error) {
	buf := make([]byte, 4096)
	for {
		var n int
		var err error
		if x.fd >= 0 {
			n, err = unix.Flistxattr(x.fd, buf)
		} else {
			n, err = unix.Llistxattr(x.path, buf)
		}
		if err == unix.ERANGE && len(buf) < 1<<20 {
			buf = make([]byte, 4*len(buf))
			continue
		}
		if err == unix.ENOTSUP {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		var names []string
		for b := buf[:n]; len(b) > 0; {
			i := 0
			for i < len(b) && b[i] != 0 {
				i++
			}
			if i > 0 {
				names = append(names, string(b[:i]))
			}
			b = b[min(i+1, len(b)):]
		}
		return names, nil
	}
}

func (x xattrTarget) remove(name string) error {
	if x.fd >= 0 {
		return unix.Fremovexattr(x.fd, name)
	}
	return unix.Lremovexattr(x.path, name)
}

func (x xattrTarget) set(name string, v []byte) error {
	if x.fd >= 0 {
		return unix.Fsetxattr(x.fd, name, v, 0)
	}
	return unix.Lsetxattr(x.path, name, v, 0)
}

// zeroRange writes zeros over [off, off+n) of the file, not past its end
// (as a hole punched with FALLOC_FL_KEEP_SIZE).
func zeroRange(fd int, off, n int64) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return err
	}
	end := min(off+n, st.Size)
	zeros := make([]byte, min(max(end-off, 0), 1<<20))
	for off < end {
		k := min(end-off, int64(len(zeros)))
		if err := pwriteAll(fd, zeros[:k], off); err != nil {
			return err
		}
		off += k
	}
	return nil
}
