// Package resync is the simple full resynchronisation of a replicated
// directory: Emit describes a whole tree on the primary as the ops
// (replica/op) that recreate it in an empty directory, and Wipe empties the
// secondary's copy before those ops are applied there (replica/apply).
//
// The caller freezes mutations on the primary during Emit; the walk is
// robust anyway: entries that vanish under it are skipped.
//
// Both walks resolve every entry relative to its parent's open descriptor
// (openat, fstatat, readlinkat, unlinkat with O_NOFOLLOW), never follow a
// symlink and never leave the tree.
//
// Order of the ops for one tree:
//
//   - directories are created before their entries (Mkdir, mode 0700 so
//     that the entries can be made whatever the final mode);
//   - a regular file is a Create (mode 0600), Write ops of at most
//     ChunkSize bytes for its data regions only (holes are found with
//     SEEK_DATA/SEEK_HOLE and stay holes), and a Truncate to its exact size
//     when the data does not end there;
//   - symlinks are Symlink ops, fifos, sockets and devices Mknod ops;
//   - a further name of an inode already sent (nlink > 1) is a Link op from
//     the first name;
//   - then the entry's metadata: Chown, one SetXattr per attribute, Chmod
//     (all 07777 bits; after the chown, which clears set-id bits, and after
//     the attributes, since setting an ACL may clear set-group-ID), Utimens
//     (atime and mtime to the nanosecond);
//   - a directory's metadata comes after all its entries (post-order), so
//     creating them does not disturb its times and its default ACL is not
//     inherited by entries that do not have it; the root's own metadata
//     (Path "") comes last.
//
// The caller makes the result durable (a SyncAll op) once Emit returns.
package resync

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"github.com/tandem-ha/tandem/internal/replica/op"
	"golang.org/x/sys/unix"
)

// ChunkSize is the largest Data of one Write op sent by Emit.
const ChunkSize = 1 << 20

// xattrMax is XATTR_SIZE_MAX and XATTR_LIST_MAX: no attribute value, and no
// list of names, is longer.
const xattrMax = 64 << 10

// Stats counts what Emit sent.
type Stats struct {
	Files    int   // regular files (inodes, not names)
	Dirs     int   // directories below the root
	Symlinks int   // symbolic links
	Others   int   // fifos, sockets and device nodes
	Links    int   // further names of an inode already sent (Link ops)
	Bytes    int64 // file data sent in Write ops (holes excluded)
}

type inoKey struct{ dev, ino uint64 }

type walker struct {
	emit  func(*op.Op) error
	o     op.Op  // the op handed to emit, reused
	data  []byte // file chunks
	xlist []byte // attribute names
	xval  []byte // one attribute value
	link  []byte // symlink target
	first map[inoKey]string
	st    Stats
}

// Emit walks the tree below rootFd (a directory descriptor, O_PATH or
// O_RDONLY; the caller keeps it) and calls emit with each op needed to
// recreate the tree, and the root's own metadata, in an empty directory.
// See the package comment for the order.
//
// The op and its Data are reused: emit must copy whatever it keeps after
// it returns (wire.Sender.Submit and apply.Applier.Apply do not keep
// them). An error from emit stops the walk and is returned, wrapped.
// Other errors name the entry that failed. Stats tells what was sent,
// also on error.
func Emit(rootFd int, emit func(o *op.Op) error) (Stats, error) {
	// "." relative to rootFd stays on its mount even if another one hides
	// the directory's path now.
	fd, err := openDir(rootFd, ".")
	if err != nil {
		return Stats{}, fmt.Errorf("resync: open the replicated directory (fd %d): %w", rootFd, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return Stats{}, fmt.Errorf("resync: stat the replicated directory: %w", err)
	}
	w := &walker{
		emit:  emit,
		data:  make([]byte, ChunkSize),
		xlist: make([]byte, xattrMax),
		xval:  make([]byte, xattrMax),
		link:  make([]byte, unix.PathMax+1),
		first: make(map[inoKey]string),
	}
	err = w.dir("", fd, &st)
	return w.st, err
}

// show names a path in messages.
func show(p string) string {
	if p == "" {
		return `"." (the replicated directory)`
	}
	return strconv.Quote(p)
}

func join(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

func (w *walker) send(o op.Op) error {
	w.o = o
	if err := w.emit(&w.o); err != nil {
		return fmt.Errorf("resync: %s: %w", &w.o, err)
	}
	return nil
}

// dir sends the entries of directory p (open as fd, which dir closes), then
// p's metadata.
func (w *walker) dir(p string, fd int, st *unix.Stat_t) error {
	f := os.NewFile(uintptr(fd), p)
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil {
		return fmt.Errorf("resync: read directory %s: %w", show(p), err)
	}
	slices.Sort(names) // a stable order, for tests and logs
	for _, name := range names {
		if err := w.entry(fd, join(p, name), name); err != nil {
			return err
		}
	}
	// Again: reading may have changed the atime (without O_NOATIME).
	if err := unix.Fstat(fd, st); err != nil {
		return fmt.Errorf("resync: stat directory %s: %w", show(p), err)
	}
	return w.meta(p, fd, "", st)
}

func (w *walker) entry(dfd int, p, name string) error {
	var st unix.Stat_t
	if err := unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if err == unix.ENOENT {
			return nil // vanished since the directory was read
		}
		return fmt.Errorf("resync: stat %s: %w", show(p), err)
	}
	typ := st.Mode & unix.S_IFMT
	if typ == unix.S_IFDIR {
		fd, err := openDir(dfd, name)
		if err == unix.ENOENT {
			return nil
		}
		if err != nil {
			return fmt.Errorf("resync: open directory %s: %w", show(p), err)
		}
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			return fmt.Errorf("resync: stat directory %s: %w", show(p), err)
		}
		if err := w.send(op.Op{Kind: op.Mkdir, Path: p, Mode: unix.S_IFDIR | 0o700, Uid: -1, Gid: -1}); err != nil {
			unix.Close(fd)
			return err
		}
		w.st.Dirs++
		return w.dir(p, fd, &st)
	}

	key := inoKey{st.Dev, st.Ino}
	if st.Nlink > 1 {
		if first, ok := w.first[key]; ok {
			if err := w.send(op.Op{Kind: op.Link, Path: first, Path2: p}); err != nil {
				return err
			}
			w.st.Links++
			return nil
		}
	}
	var sent bool
	var err error
	switch typ {
	case unix.S_IFREG:
		sent, err = w.file(dfd, p, name, &st)
	case unix.S_IFLNK:
		sent, err = w.symlink(dfd, p, name, &st)
	default:
		sent, err = true, w.node(dfd, p, name, &st)
	}
	if sent && st.Nlink > 1 {
		w.first[key] = p
	}
	return err
}

// file sends a regular file; sent tells whether it was created (not
// vanished).
func (w *walker) file(dfd int, p, name string, st *unix.Stat_t) (sent bool, err error) {
	// O_NONBLOCK: should a fifo have replaced the file, the open does not
	// hang (and the fstat below refuses it).
	fd, err := openNoatime(dfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK|unix.O_CLOEXEC)
	if err == unix.ENOENT {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("resync: open file %s: %w", show(p), err)
	}
	defer unix.Close(fd)
	if err := unix.Fstat(fd, st); err != nil {
		return false, fmt.Errorf("resync: stat file %s: %w", show(p), err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return false, fmt.Errorf("resync: %s changed type during the walk (mode %#o): are mutations frozen? retry the resync", show(p), st.Mode)
	}
	if err := w.send(op.Op{Kind: op.Create, Path: p, Mode: unix.S_IFREG | 0o600, Uid: -1, Gid: -1}); err != nil {
		return false, err
	}
	w.st.Files++
	if err := w.contents(fd, p, st.Size); err != nil {
		return true, err
	}
	if err := unix.Fstat(fd, st); err != nil { // the atime, when O_NOATIME was refused
		return true, fmt.Errorf("resync: stat file %s: %w", show(p), err)
	}
	return true, w.meta(p, fd, "", st)
}

// contents sends the data regions of the file open as fd, then a Truncate
// unless the last region ends at size.
func (w *walker) contents(fd int, p string, size int64) error {
	var off, end int64
	for off < size {
		start, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if err == unix.ENXIO {
			break // only a hole remains
		}
		stop := size
		if err == unix.EINVAL {
			start = off // no SEEK_DATA here: everything is data
		} else if err != nil {
			return fmt.Errorf("resync: find data in %s from offset %d: %w", show(p), off, err)
		} else if stop, err = unix.Seek(fd, start, unix.SEEK_HOLE); err != nil {
			return fmt.Errorf("resync: find a hole in %s from offset %d: %w", show(p), start, err)
		}
		stop = min(stop, size)
		for pos := start; pos < stop; {
			want := min(stop-pos, ChunkSize)
			n, err := preadFull(fd, w.data[:want], pos)
			if err != nil {
				return fmt.Errorf("resync: read %s at offset %d: %w", show(p), pos, err)
			}
			if n > 0 {
				if err := w.send(op.Op{Kind: op.Write, Path: p, Data: w.data[:n], Off: pos}); err != nil {
					return err
				}
				w.st.Bytes += int64(n)
				pos += int64(n)
				end = pos
			}
			if int64(n) < want {
				stop, size = pos, pos // shrank under us: send what is there
			}
		}
		off = max(stop, start+1)
	}
	if end != size {
		return w.send(op.Op{Kind: op.Truncate, Path: p, Off: size})
	}
	return nil
}

func preadFull(fd int, b []byte, off int64) (int, error) {
	done := 0
	for done < len(b) {
		n, err := unix.Pread(fd, b[done:], off+int64(done))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return done, err
		}
		if n == 0 {
			break
		}
		done += n
	}
	return done, nil
}

func (w *walker) symlink(dfd int, p, name string, st *unix.Stat_t) (sent bool, err error) {
	n, err := unix.Readlinkat(dfd, name, w.link)
	if err == unix.ENOENT {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("resync: read symlink %s: %w", show(p), err)
	}
	if n >= len(w.link) {
		return false, fmt.Errorf("resync: symlink %s: target longer than %d bytes", show(p), len(w.link)-1)
	}
	if err := w.send(op.Op{Kind: op.Symlink, Path: p, Data: w.link[:n], Uid: -1, Gid: -1}); err != nil {
		return false, err
	}
	w.st.Symlinks++
	// readlink updated the atime (no O_NOATIME for it): send the new one,
	// so both sides agree.
	if err := unix.Fstatat(dfd, name, st, unix.AT_SYMLINK_NOFOLLOW); err == unix.ENOENT {
		return true, nil
	} else if err != nil {
		return true, fmt.Errorf("resync: stat symlink %s: %w", show(p), err)
	}
	return true, w.meta(p, dfd, name, st)
}

func (w *walker) node(dfd int, p, name string, st *unix.Stat_t) error {
	o := op.Op{Kind: op.Mknod, Path: p, Mode: st.Mode&unix.S_IFMT | 0o600, Uid: -1, Gid: -1}
	if t := st.Mode & unix.S_IFMT; t == unix.S_IFCHR || t == unix.S_IFBLK {
		o.Rdev = st.Rdev
	}
	if err := w.send(o); err != nil {
		return err
	}
	w.st.Others++
	return w.meta(p, dfd, name, st)
}

// meta sends owner, attributes, mode and times of p. fd is p itself when
// name is "", else the directory holding name.
func (w *walker) meta(p string, fd int, name string, st *unix.Stat_t) error {
	if err := w.send(op.Op{Kind: op.Chown, Path: p, Uid: int64(st.Uid), Gid: int64(st.Gid)}); err != nil {
		return err
	}
	if err := w.xattrs(p, fd, name); err != nil {
		return err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFLNK { // a symlink has no mode of its own
		if err := w.send(op.Op{Kind: op.Chmod, Path: p, Mode: st.Mode & 0o7777}); err != nil {
			return err
		}
	}
	return w.send(op.Op{Kind: op.Utimens, Path: p,
		Atime: op.Time{Sec: st.Atim.Sec, Nsec: st.Atim.Nsec},
		Mtime: op.Time{Sec: st.Mtim.Sec, Nsec: st.Mtim.Nsec}})
}

// xattrs sends one SetXattr per attribute this process can list and read
// (security.selinux included). Symlinks and special files are reached by
// the l* calls on our own directory descriptor's /proc link, which cannot
// resolve anywhere else and do not follow the last component.
func (w *walker) xattrs(p string, fd int, name string) error {
	var proc string
	list := func() (int, error) { return unix.Flistxattr(fd, w.xlist) }
	get := func(attr string) (int, error) { return unix.Fgetxattr(fd, attr, w.xval) }
	if name != "" {
		proc = "/proc/self/fd/" + strconv.Itoa(fd) + "/" + name
		list = func() (int, error) { return unix.Llistxattr(proc, w.xlist) }
		get = func(attr string) (int, error) { return unix.Lgetxattr(proc, attr, w.xval) }
	}
	n, err := list()
	switch {
	case err == unix.ENOTSUP || err == unix.ENOENT && name != "":
		return nil // no attributes here, or vanished meanwhile
	case err != nil:
		return fmt.Errorf("resync: list extended attributes of %s: %w", show(p), err)
	}
	names := w.xlist[:n]
	for len(names) > 0 {
		i := bytes.IndexByte(names, 0)
		if i < 0 {
			i = len(names)
		}
		attr := string(names[:i])
		names = names[min(i+1, len(names)):]
		if attr == "" {
			continue
		}
		m, err := get(attr)
		if err == unix.ENODATA || err == unix.ENOENT && name != "" {
			continue // removed meanwhile
		}
		if err != nil {
			return fmt.Errorf("resync: read extended attribute %q of %s: %w", attr, show(p), err)
		}
		if err := w.send(op.Op{Kind: op.SetXattr, Path: p, Name: attr, Data: w.xval[:m]}); err != nil {
			return err
		}
	}
	return nil
}

// openDir opens directory name below dfd for reading, without following a
// symlink and, where allowed, without updating its atime.
func openDir(dfd int, name string) (int, error) {
	return openNoatime(dfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC)
}

// openNoatime opens with O_NOATIME, which needs ownership or CAP_FOWNER,
// falling back to a plain open: reading the tree should not change the
// primary's atimes.
func openNoatime(dfd int, name string, flags int) (int, error) {
	for {
		fd, err := unix.Openat(dfd, name, flags|unix.O_NOATIME, 0)
		if err == unix.EPERM {
			fd, err = unix.Openat(dfd, name, flags, 0)
		}
		if err == unix.EINTR {
			continue
		}
		return fd, err
	}
}

// Wipe removes everything below rootFd (a directory descriptor, O_PATH or
// O_RDONLY; the caller keeps it), but not the directory itself. It also
// removes the directory's own extended attributes except security.* (an
// LSM label is the host's business): Emit sends them again, and a default
// ACL left there would be inherited by every entry the resync creates.
//
// Symlinks are removed, never followed; a directory that is a mount point
// (another filesystem below the tree) is refused, not entered. A directory
// whose mode forbids removing its entries is given mode 0700 first.
func Wipe(rootFd int) error {
	fd, err := unix.Openat(rootFd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("resync: wipe: open the replicated directory (fd %d): %w", rootFd, err)
	}
	f := os.NewFile(uintptr(fd), ".")
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("resync: wipe: stat the replicated directory: %w", err)
	}
	if err := wipeDir(f, "", st.Dev); err != nil {
		return err
	}
	return clearXattrs(fd)
}

// wipeDir empties directory p, open as f, on device dev.
func wipeDir(f *os.File, p string, dev uint64) error {
	fd := int(f.Fd())
	chmodded := false
	// Entries created while we read (none should be) are caught by the
	// next pass; a pass that removes nothing is an error.
	for pass := 0; ; pass++ {
		if _, err := f.Seek(0, 0); err != nil {
			return fmt.Errorf("resync: wipe: rewind directory %s: %w", show(p), err)
		}
		names, err := f.Readdirnames(-1)
		if err != nil {
			return fmt.Errorf("resync: wipe: read directory %s: %w", show(p), err)
		}
		if len(names) == 0 {
			return nil
		}
		if pass >= 3 {
			return fmt.Errorf("resync: wipe: directory %s still holds %d entries (%q...): is something writing to it?", show(p), len(names), names[0])
		}
		for _, name := range names {
			err := wipeEntry(fd, join(p, name), name, dev)
			if (errors.Is(err, unix.EACCES) || errors.Is(err, unix.EPERM)) && !chmodded {
				// A read-only or sticky directory of a non-root run.
				chmodded = true
				if unix.Fchmod(fd, 0o700) == nil {
					err = wipeEntry(fd, join(p, name), name, dev)
				}
			}
			if err != nil {
				return err
			}
		}
	}
}

func wipeEntry(dfd int, p, name string, dev uint64) error {
	err := unix.Unlinkat(dfd, name, 0)
	if err == nil || err == unix.ENOENT {
		return nil
	}
	if err != unix.EISDIR && err != unix.EPERM {
		return fmt.Errorf("resync: wipe: remove %s: %w", show(p), err)
	}
	// EISDIR (EPERM on some filesystems): a directory, or a file we may
	// not remove; O_DIRECTORY|O_NOFOLLOW tells them apart.
	cfd, oerr := unix.Openat(dfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if oerr == unix.ENOENT {
		return nil
	}
	if oerr == unix.ENOTDIR || oerr == unix.ELOOP {
		return fmt.Errorf("resync: wipe: remove %s: %w", show(p), err)
	}
	if oerr != nil {
		return fmt.Errorf("resync: wipe: open directory %s: %w", show(p), oerr)
	}
	cf := os.NewFile(uintptr(cfd), p)
	defer cf.Close()
	var st unix.Stat_t
	if err := unix.Fstat(cfd, &st); err != nil {
		return fmt.Errorf("resync: wipe: stat directory %s: %w", show(p), err)
	}
	if st.Dev != dev {
		return fmt.Errorf("resync: wipe: %s is a mount point (another filesystem inside the replicated directory): unmount it, then retry", show(p))
	}
	if err := wipeDir(cf, p, dev); err != nil {
		return err
	}
	if err := unix.Unlinkat(dfd, name, unix.AT_REMOVEDIR); err != nil && err != unix.ENOENT {
		return fmt.Errorf("resync: wipe: remove directory %s: %w", show(p), err)
	}
	return nil
}

func clearXattrs(fd int) error {
	buf := make([]byte, xattrMax)
	n, err := unix.Flistxattr(fd, buf)
	if err == unix.ENOTSUP {
		return nil
	}
	if err != nil {
		return fmt.Errorf("resync: wipe: list extended attributes of the replicated directory: %w", err)
	}
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if name == "" || strings.HasPrefix(name, "security.") {
			continue
		}
		if err := unix.Fremovexattr(fd, name); err != nil && err != unix.ENODATA {
			return fmt.Errorf("resync: wipe: remove extended attribute %q of the replicated directory: %w", name, err)
		}
	}
	return nil
}
