// Package inopath finds the current names of inodes in a directory tree:
// the change log (replica/changelog) names what changed by inode, since
// names change, and the resynchronisation needs the names as they are now.
package inopath

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// Key is an inode of the tree's filesystem.
type Key struct{ Dev, Ino uint64 }

// Find walks the tree below rootFd (a directory fd; kept by the caller)
// and returns every name, relative to the root ("" for the root itself),
// of each inode in want. Inodes not found (removed since) are absent from
// the result. The walk never follows symlinks and stays on the root's
// filesystem; entries that vanish under it are skipped. Cost: one readdir
// per directory, one open and stat per subdirectory, and one lstat per
// entry whose inode number (from the directory entry) is wanted; on a
// filesystem whose directory entries may carry other inode numbers than
// stat (overlayfs, network filesystems...), one lstat per entry. Up to
// walkers directories are listed at once (a cold tree's reads in flight
// together); the order of an inode's names is not fixed.
func Find(rootFd int, want map[Key]bool) (map[Key][]string, error) {
	return find(rootFd, want, !direntInodes(rootFd))
}

// find is Find; statAll stats every entry (its inode number from the
// directory entry is not trusted).
func find(rootFd int, want map[Key]bool, statAll bool) (map[Key][]string, error) {
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
	w := walker{want: want, out: out, dev: st.Dev, statAll: statAll, slots: make(chan struct{}, walkers-1)}
	w.dir(fd, "")
	w.wg.Wait()
	return out, nil
}

// walkers is how many directories the walk lists at once. On a cold tree
// each listing and each stat waits for the disk: one at a time, a walk of
// a large tree takes one disk read after another.
var walkers = 8

// dirBufs are getdents buffers, one per directory being listed.
var dirBufs = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// direntInodes says whether the directory entries of dfd's filesystem
// carry the inode numbers stat gives (but at mount points, which the walk
// stats anyway): ext2/3/4, xfs, btrfs, tmpfs, f2fs.
func direntInodes(dfd int) bool {
	var fs unix.Statfs_t
	if unix.Fstatfs(dfd, &fs) != nil {
		return false
	}
	switch uint64(fs.Type) {
	case unix.EXT4_SUPER_MAGIC, unix.XFS_SUPER_MAGIC, unix.BTRFS_SUPER_MAGIC, unix.TMPFS_MAGIC, unix.F2FS_SUPER_MAGIC:
		return true
	}
	return false
}

type walker struct {
	want    map[Key]bool // read only
	dev     uint64
	statAll bool // the entries' inode numbers cannot be trusted

	mu  sync.Mutex
	out map[Key][]string

	slots chan struct{} // a goroutine per directory while one is free
	wg    sync.WaitGroup
}

// found records name as one of k's.
func (w *walker) found(k Key, name string) {
	w.mu.Lock()
	w.out[k] = append(w.out[k], name)
	w.mu.Unlock()
}

// walk lists directory fd (named p; closed there) in a goroutine of its
// own when a slot is free, else in this one.
func (w *walker) walk(fd int, p string) {
	select {
	case w.slots <- struct{}{}:
		w.wg.Go(func() {
			defer func() { <-w.slots }()
			w.dir(fd, p)
		})
	default:
		w.dir(fd, p)
	}
}

// dir lists the directory open as fd (closed here) named p, then its
// subdirectories. A directory removed or unreadable under the walk ends
// its listing early.
func (w *walker) dir(fd int, p string) {
	var subdirs []string
	bp := dirBufs.Get().(*[]byte)
	for {
		n, err := unix.Getdents(fd, *bp)
		if err != nil || n <= 0 {
			break
		}
		for b := (*bp)[:n]; len(b) >= direntName; {
			// struct linux_dirent64: ino, off, reclen, type, name.
			reclen := int(binary.NativeEndian.Uint16(b[16:]))
			if reclen < direntName || reclen > len(b) {
				break
			}
			ino, typ := binary.NativeEndian.Uint64(b[0:]), b[18]
			name := b[direntName:reclen]
			if i := bytes.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			b = b[reclen:]
			if string(name) == "." || string(name) == ".." {
				continue
			}
			if w.entry(fd, p, string(name), ino, typ) {
				subdirs = append(subdirs, string(name))
			}
		}
	}
	dirBufs.Put(bp)
	for _, name := range subdirs {
		rel := join(p, name)
		cfd, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			continue // gone, or not readable: nothing to find below
		}
		var st unix.Stat_t
		if unix.Fstat(cfd, &st) != nil || st.Dev != w.dev {
			unix.Close(cfd) // another filesystem mounted there
			continue
		}
		if k := (Key{st.Dev, st.Ino}); w.want[k] {
			w.found(k, rel)
		}
		w.walk(cfd, rel)
	}
	unix.Close(fd)
}

// direntName is the offset of the name in a struct linux_dirent64.
const direntName = 19

// join is name inside the directory p (relative to the root).
func join(p, name string) string {
	if p == "" {
		return name
	}
	return p + "/" + name
}

// entry names the entry name of directory dfd (p from the root) when its
// inode is wanted, and says whether it is a directory to walk (named then,
// from its own stat).
func (w *walker) entry(dfd int, p, name string, ino uint64, typ uint8) bool {
	if typ == unix.DT_DIR {
		return true
	}
	if !w.statAll && typ != unix.DT_UNKNOWN && !w.want[Key{w.dev, ino}] {
		return false
	}
	var st unix.Stat_t
	if err := unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return false // gone
	}
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		return true
	}
	if k := (Key{st.Dev, st.Ino}); w.want[k] {
		w.found(k, join(p, name))
	}
	return false
}
