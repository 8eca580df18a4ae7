// Package inopath finds the current names of inodes in a directory tree:
// the change log (replica/changelog) names what changed by inode, since
// names change, and the resynchronisation needs the names as they are now.
package inopath

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Key is an inode of the tree's filesystem.
type Key struct{ Dev, Ino uint64 }

// Find walks the tree below rootFd (a directory fd; kept by the caller)
// and returns every name, relative to the root ("" for the root itself),
// of each inode in want. Inodes not found (removed since) are absent from
// the result. The walk never follows symlinks and stays on the root's
// filesystem; entries that vanish under it are skipped. Cost: one readdir
// and one lstat per entry of the tree.
func Find(rootFd int, want map[Key]bool) (map[Key][]string, error) {
	out := make(map[Key][]string)
	if len(want) == 0 {
		return out, nil
	}
	var st unix.Stat_t
	if err := unix.Fstat(rootFd, &st); err != nil {
		return nil, fmt.Errorf("stat the replicated directory: %w", err)
	}
	root := Key{st.Dev, st.Ino}
	if want[root] {
		out[root] = []string{""}
	}
	fd, err := unix.Openat(rootFd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open the replicated directory: %w", err)
	}
	w := walker{want: want, out: out, dev: st.Dev}
	w.dir(fd, "")
	return out, nil
}

type walker struct {
	want map[Key]bool
	out  map[Key][]string
	dev  uint64
}

// dir lists the directory open as fd (closed here) named p. A directory
// removed or unreadable under the walk ends its listing early.
func (w *walker) dir(fd int, p string) error {
	f := os.NewFile(uintptr(fd), p)
	defer f.Close()
	for {
		names, err := f.Readdirnames(1024)
		for _, name := range names {
			w.entry(fd, p, name)
		}
		if err != nil || len(names) == 0 {
			return nil
		}
	}
}

func (w *walker) entry(dfd int, p, name string) {
	var st unix.Stat_t
	if err := unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return // gone
	}
	rel := name
	if p != "" {
		rel = p + "/" + name
	}
	k := Key{st.Dev, st.Ino}
	if w.want[k] {
		w.out[k] = append(w.out[k], rel)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR || st.Dev != w.dev {
		return
	}
	cfd, err := unix.Openat(dfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return // gone, or not readable: nothing to find below
	}
	w.dir(cfd, rel)
}
