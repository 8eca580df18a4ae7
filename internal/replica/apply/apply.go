// Package apply carries out replicated operations (op.Op) on the
// secondary's copy of a module directory.
//
// The Applier opens the directory once and does everything else with *at
// system calls relative to that descriptor. Paths from the wire are resolved
// with openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|RESOLVE_NO_MAGICLINKS):
// a replicated path names real directories only (the primary's FUSE layer
// never sees a lookup through a symlink, the kernel resolves those above
// it), so a symlink anywhere in a path means the trees diverged or the
// peer is hostile, and is refused rather than followed. The last component
// is never followed either: chown, utimens and xattr ops act on a symlink
// itself, and writes go only to regular files (a write to a device node
// replicated by mknod would otherwise reach the secondary's hardware).
//
// Writes go through a small LRU cache of O_RDWR descriptors so that a
// stream of small writes to one file costs one pwrite each. Cached
// descriptors (and cached O_PATH directory descriptors) are dropped when
// their path, or a parent, is renamed or removed.
//
// Durability: an Fsync op fsyncs the file and every directory on its path
// that had namespace changes (create, rename, ...) since it was last
// synced, so a file made durable on the primary is durable, with its name,
// on the secondary. SyncAll fsyncs what changed since the last SyncAll:
// the files written, truncated, allocated or created (tracked by open
// descriptor, so renames do not lose them) and the directories whose
// entries changed; it runs syncfs only when more changed than is tracked
// or after an op on attributes alone (chmod, chown, times, xattrs,
// symlinks, device nodes, links). syncfs would flush every unrelated
// writer of the filesystem too: on a busy system disk it can take longer
// than the peer's timeout. StartFlush takes the same set without flushing
// it: the returned Flush runs without the Applier's lock, so a background
// SyncAll does not hold back the ops after it (replica/wire).
//
// A failed op may leave a partial effect only where the kernel gives no
// way to undo it (a write cut short by ENOSPC leaves the part that fitted);
// the primary then runs alone and the zone is resynchronised later. A
// create followed by a failing chown is undone.
//
// An Applier is safe for concurrent use, but ops are applied one at a time
// in call order: the caller (replica/wire) applies them strictly in
// sequence.
//
// During an online resynchronisation (replica/compare) the secondary's
// tree differs from the primary's until the compare reaches each entry, so
// a live op may find its file missing or of another type. SetLenient turns
// such failures (Diverged) into reports instead of errors: the op is
// skipped, the compare engine learns its paths and compares them again,
// after the op. Everything else (ENOSPC, EIO...) still fails.
package apply

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/tandem-ha/tandem/internal/replica/op"
	"golang.org/x/sys/unix"
)

// Cache sizes: enough for a database's working set of files; every entry
// is one descriptor.
const (
	fileCacheSize = 64
	dirCacheSize  = 64
	maxDirty      = 1024 // directories tracked before falling back to syncfs
	// Files (descriptors) a SyncAll fsyncs one by one; past that one syncfs
	// (a flush for all) is cheaper than a flush per file.
	maxDirtyFiles = 32
)

const resolveFlags = unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS

// ErrClosed is returned by Apply after Close.
var ErrClosed = errors.New("applier closed")

// ErrNotRegular is returned for a data op (write, truncate, fallocate) on
// something that is not a regular file.
var ErrNotRegular = errors.New("not a regular file")

// Applier applies ops below one root directory.
type Applier struct {
	mu       sync.Mutex
	root     int
	umask    uint32
	files    fdCache // O_RDWR regular files
	dirs     fdCache // O_PATH directories
	dirty    map[string]struct{}
	overflow bool // more dirty directories than tracked: next fsync is a syncfs
	// Files changed since the last SyncAll: inode -> own descriptor.
	dirtyFiles map[fileID]int
	// SyncAll must run syncfs: too many files changed, or an op changed
	// attributes that are not tracked.
	syncAllFS bool
	closed    bool
	noOpen2   bool // openat2 unavailable: walk component by component
	lenient   func(o *op.Op, err error)
}

// New opens root and returns an Applier working below it.
func New(root string) (*Applier, error) {
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("replica apply: open root directory %s: %w", root, err)
	}
	return newApplier(fd), nil
}

// NewFromFd returns an Applier working below the directory fd refers to,
// which may be an O_PATH descriptor opened before a mount hid the
// directory. The Applier uses its own descriptor (a reopen of fd's "."):
// the caller keeps fd and may close it.
func NewFromFd(fd int) (*Applier, error) {
	// "." relative to fd stays on fd's own mount: it does not enter a
	// filesystem mounted over the directory later.
	nfd, err := unix.Openat(fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("replica apply: reopen root directory from fd %d: %w", fd, err)
	}
	return newApplier(nfd), nil
}

func newApplier(fd int) *Applier {
	a := &Applier{root: fd, umask: readUmask(), dirty: make(map[string]struct{}), dirtyFiles: make(map[fileID]int)}
	a.files.init(fileCacheSize)
	a.dirs.init(dirCacheSize)
	return a
}

// readUmask reads the process umask without changing it (umask(2) would
// race with other goroutines creating files).
func readUmask() uint32 {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0o022
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "Umask:"); ok {
			if m, err := strconv.ParseUint(strings.TrimSpace(v), 8, 32); err == nil {
				return uint32(m)
			}
		}
	}
	return 0o022
}

// Close releases every descriptor. Apply fails afterwards.
func (a *Applier) Close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil
	}
	a.closed = true
	a.forgetFiles()
	a.files.closeAll()
	a.dirs.closeAll()
	return unix.Close(a.root)
}

// Apply validates o and applies it. The error names the op and its path and
// wraps the system error, so errors.Is(err, syscall.ENOSPC) and EDQUOT work.
func (a *Applier) Apply(o *op.Op) error {
	if err := o.Validate(); err != nil {
		return fmt.Errorf("apply %s: %w", o, err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return fmt.Errorf("apply %s: %w", o, ErrClosed)
	}
	if err := a.apply(o); err != nil {
		return a.failed(o, fmt.Errorf("apply %s: %w", o, err))
	}
	if err := a.stamp(o); err != nil {
		return a.failed(o, fmt.Errorf("apply %s: set times: %w", o, err))
	}
	a.track(o)
	return nil
}

// sameSize says whether the file open at fd has size already and no
// blocks allocated past it (a truncate to the same size frees those).
func sameSize(fd int, size int64) bool {
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil || st.Size != size || st.Blksize <= 0 {
		return false
	}
	bs := int64(st.Blksize)
	return st.Blocks*512 <= (size+bs-1)/bs*bs
}

// fileID names an inode of the tree.
type fileID struct{ dev, ino uint64 }

// track notes what a SyncAll must flush for o, applied.
func (a *Applier) track(o *op.Op) {
	switch o.Kind {
	case op.Write, op.Truncate, op.Fallocate, op.Create, op.Chmod, op.Chown, op.Utimens, op.SetXattr, op.RemoveXattr, op.XattrSet:
		if o.Path == "" {
			a.markDirty("")
			return
		}
		fd, err := a.fileFD(o.Path)
		if errors.Is(err, ErrNotRegular) && a.isDir(o.Path) {
			a.markDirty(o.Path) // a directory's own attributes
			return
		}
		if err != nil {
			a.syncAllFS = true
			return
		}
		// fileFD cached the descriptor: its inode is known after the
		// first op on it (no fstat per op).
		id, ok := a.files.identity(o.Path)
		if !ok {
			a.syncAllFS = true
			return
		}
		if _, ok := a.dirtyFiles[id]; ok {
			return
		}
		if len(a.dirtyFiles) >= maxDirtyFiles {
			a.syncAllFS = true
			return
		}
		dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
		if err != nil {
			a.syncAllFS = true
			return
		}
		a.dirtyFiles[id] = dup
	case op.Mkdir:
		a.markDirty(o.Path) // its own inode; its parent is marked
	case op.Rmdir:
		delete(a.dirty, o.Path) // gone: nothing to flush; its parent is marked
	case op.Rename:
		a.renameDirty(o.Path, o.Path2, o.Flags&unix.RENAME_EXCHANGE != 0)
	case op.Unlink, op.Fsync, op.SyncAll, op.Query:
		// Entries: the parents are marked. Syncs: nothing new.
	default: // symlinks, device nodes, links, removed trees
		a.syncAllFS = true
	}
}

// renameDirty moves the changed directories at or below from to their
// new names (and back for an exchange).
func (a *Applier) renameDirty(from, to string, exchange bool) {
	moved := map[string]string{}
	for d := range a.dirty {
		if r, ok := below(d, from); ok {
			moved[d] = join(to, r)
		} else if r, ok := below(d, to); ok && exchange {
			moved[d] = join(from, r)
		}
	}
	for d := range moved {
		delete(a.dirty, d)
	}
	for _, d := range moved {
		a.dirty[d] = struct{}{}
	}
}

// below says whether p is dir or inside it, and the rest of p.
func below(p, dir string) (string, bool) {
	if dir == "" {
		return p, true
	}
	if p == dir {
		return "", true
	}
	if strings.HasPrefix(p, dir) && p[len(dir)] == '/' {
		return p[len(dir)+1:], true
	}
	return "", false
}

func join(dir, rest string) string {
	if rest == "" {
		return dir
	}
	if dir == "" {
		return rest
	}
	return dir + "/" + rest
}

func (a *Applier) isDir(p string) bool {
	dir, base := split(p)
	dfd, err := a.dirFD(dir)
	if err != nil {
		return false
	}
	var st unix.Stat_t
	return unix.Fstatat(dfd, base, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && st.Mode&unix.S_IFMT == unix.S_IFDIR
}

// syncAll makes every op applied so far durable.
func (a *Applier) syncAll() error {
	f, err := a.takeFlushLocked()
	if err != nil {
		return err
	}
	return f.Run()
}

// syncfs is a variable for the tests.
var syncfs = unix.Syncfs

// Flush is what one SyncAll must make durable, taken from an Applier by
// StartFlush: it owns its descriptors and runs without the Applier's lock,
// so ops applied meanwhile are not held back.
type Flush struct {
	root    int // own duplicate of the Applier's root
	files   []int
	dirs    []string
	fs      bool // syncfs instead of the tracked files and directories
	noOpen2 bool
}

// StartFlush takes what changed since the last SyncAll (or StartFlush):
// once Run returns nil, every op applied before StartFlush is durable.
// The Applier tracks changes afresh from here, so a later SyncAll does not
// wait for this Flush: the caller that needs both must Run this one first.
func (a *Applier) StartFlush() (*Flush, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil, ErrClosed
	}
	return a.takeFlushLocked()
}

func (a *Applier) takeFlushLocked() (*Flush, error) {
	root, err := unix.FcntlInt(uintptr(a.root), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("duplicate the root descriptor: %w", err)
	}
	f := &Flush{root: root, fs: a.syncAllFS || a.overflow, noOpen2: a.noOpen2}
	for id, fd := range a.dirtyFiles {
		delete(a.dirtyFiles, id)
		var st unix.Stat_t
		if unix.Fstat(fd, &st) == nil && st.Nlink == 0 {
			// Removed since (a temporary file, a file renamed over): no
			// name reaches it, so nothing of it needs to be durable.
			// Closed (the file cache let it go at the removal), it is
			// dropped with its pages, where a flush would write them
			// (the primary's kernel never does).
			unix.Close(fd)
			continue
		}
		f.files = append(f.files, fd)
	}
	for d := range a.dirty {
		f.dirs = append(f.dirs, d)
	}
	clear(a.dirty)
	a.overflow, a.syncAllFS = false, false
	return f, nil
}

// Run makes the Flush durable and releases its descriptors. A directory
// renamed or removed since it changed makes it flush the whole filesystem;
// other errors (EIO, ENOSPC) are the answer.
func (f *Flush) Run() error {
	defer f.Release()
	if !f.fs {
		err := f.tracked()
		if err == nil || (!errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENOTDIR)) {
			return err
		}
	}
	return syncfs(f.root)
}

// Release closes the Flush's descriptors without flushing (Run does it).
func (f *Flush) Release() {
	for _, fd := range f.files {
		unix.Close(fd)
	}
	if f.root >= 0 {
		unix.Close(f.root)
	}
	f.files, f.root = nil, -1
}

// tracked fsyncs the changed files, then the changed directories.
func (f *Flush) tracked() error {
	for _, fd := range f.files {
		if err := ignoringEINTR(func() error { return unix.Fsync(fd) }); err != nil {
			return err
		}
	}
	for _, d := range f.dirs {
		if err := syncDirBeneath(f.root, d, f.noOpen2); err != nil {
			return fmt.Errorf("fsync directory %q: %w", d, err)
		}
	}
	return nil
}

func (a *Applier) forgetFiles() {
	for id, fd := range a.dirtyFiles {
		unix.Close(fd)
		delete(a.dirtyFiles, id)
	}
}

// SetLenient makes Apply skip an op that fails because the tree diverged
// from the primary's (Diverged): report is called with the op and the
// error, under the Applier's lock (it must be quick, must not call Apply,
// and must copy what it keeps), and Apply returns nil. A nil report turns
// lenient mode off. The agent sets it while an online resynchronisation
// runs: every skipped path is compared again after the op
// (compare.Answerer.Skipped).
func (a *Applier) SetLenient(report func(o *op.Op, err error)) {
	a.mu.Lock()
	a.lenient = report
	a.mu.Unlock()
}

func (a *Applier) failed(o *op.Op, err error) error {
	if a.lenient != nil && Diverged(o, err) {
		a.lenient(o, err)
		return nil
	}
	return err
}

// Diverged reports whether err, returned for o, comes from the state of
// the secondary's namespace (an entry missing, present, of another type,
// a directory not empty, an attribute absent) rather than from the system
// (no space, I/O error, permission): a failure an online resynchronisation
// repairs by comparing the op's paths again.
func Diverged(o *op.Op, err error) bool {
	if errors.Is(err, ErrNotRegular) {
		return true
	}
	var errno unix.Errno
	if !errors.As(err, &errno) {
		return false
	}
	switch errno {
	case unix.ENOENT, unix.EEXIST, unix.ENOTDIR, unix.EISDIR, unix.ENOTEMPTY, unix.ELOOP, unix.ENODATA:
		return true
	case unix.EINVAL:
		// Renaming a directory below itself: the names mean other
		// entries here.
		return o.Kind == op.Rename
	case unix.EPERM:
		// A hard link to what is a directory here; a user.* attribute on
		// what is a symlink or a device here.
		switch o.Kind {
		case op.Link, op.SetXattr, op.RemoveXattr, op.XattrSet:
			return true
		}
	}
	return false
}

// stamp gives the entry the times the primary's inode had after the op, so
// both copies end with the same mtimes (op.Op.Stamped).
func (a *Applier) stamp(o *op.Op) error {
	if !o.Stamped() {
		return nil
	}
	ts := []unix.Timespec{{Sec: o.Atime.Sec, Nsec: o.Atime.Nsec}, {Sec: o.Mtime.Sec, Nsec: o.Mtime.Nsec}}
	p := o.Path
	if o.Kind == op.Link {
		p = o.Path2
	}
	switch o.Kind {
	case op.Write, op.Truncate, op.Fallocate:
		if fd, err := a.fileFD(p); err == nil {
			return unix.UtimesNanoAt(fd, "", ts, unix.AT_EMPTY_PATH)
		}
	}
	if p == "" {
		return unix.UtimesNanoAt(a.root, "", ts, unix.AT_EMPTY_PATH)
	}
	dir, base := split(p)
	dfd, err := a.dirFD(dir)
	if err != nil {
		return err
	}
	return unix.UtimesNanoAt(dfd, base, ts, unix.AT_SYMLINK_NOFOLLOW)
}

func (a *Applier) apply(o *op.Op) error {
	switch o.Kind {
	case op.Write:
		fd, err := a.fileFD(o.Path)
		if err != nil {
			return err
		}
		return pwriteAll(fd, o.Data, o.Off)
	case op.Truncate:
		fd, err := a.fileFD(o.Path)
		if err != nil {
			return err
		}
		if sameSize(fd, o.Off) {
			// Nothing to cut. ext4 would still zero the tail of the
			// last block, reading it from disk when it is not cached: a
			// resync's Truncate per file sent cost ~0.4 ms each. The
			// mtime the truncate would set comes in its own op.
			return nil
		}
		return ignoringEINTR(func() error { return unix.Ftruncate(fd, o.Off) })
	case op.Fallocate:
		fd, err := a.fileFD(o.Path)
		if err != nil {
			return err
		}
		err = ignoringEINTR(func() error { return unix.Fallocate(fd, o.Flags, o.Off, o.Len) })
		if err == unix.EOPNOTSUPP && o.Flags == unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE {
			// This filesystem cannot punch holes: zeros are the same bytes.
			return zeroRange(fd, o.Off, o.Len)
		}
		return err
	case op.Create:
		return a.create(o)
	case op.Mknod:
		dir, base := split(o.Path)
		dfd, err := a.dirFD(dir)
		if err != nil {
			return err
		}
		if err := unix.Mknodat(dfd, base, o.Mode, int(o.Rdev)); err != nil {
			return err
		}
		a.markDirty(dir)
		return a.finishNew(dfd, base, o, 0)
	case op.Mkdir:
		dir, base := split(o.Path)
		dfd, err := a.dirFD(dir)
		if err != nil {
			return err
		}
		if err := unix.Mkdirat(dfd, base, o.Mode&0o7777); err != nil {
			return err
		}
		a.markDirty(dir)
		return a.finishNew(dfd, base, o, unix.AT_REMOVEDIR)
	case op.Symlink:
		dir, base := split(o.Path)
		dfd, err := a.dirFD(dir)
		if err != nil {
			return err
		}
		if err := unix.Symlinkat(string(o.Data), dfd, base); err != nil {
			return err
		}
		a.markDirty(dir)
		if o.Uid >= 0 || o.Gid >= 0 {
			if err := unix.Fchownat(dfd, base, int(o.Uid), int(o.Gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
				_ = unix.Unlinkat(dfd, base, 0)
				return fmt.Errorf("chown %d:%d: %w", o.Uid, o.Gid, err)
			}
		}
		return nil
	case op.Unlink, op.Rmdir:
		dir, base := split(o.Path)
		dfd, err := a.dirFD(dir)
		if err != nil {
			return err
		}
		flags := 0
		if o.Kind == op.Rmdir {
			flags = unix.AT_REMOVEDIR
		}
		if err := unix.Unlinkat(dfd, base, flags); err != nil {
			return err
		}
		a.files.dropTree(o.Path)
		a.dirs.dropTree(o.Path)
		a.markDirty(dir)
		return nil
	case op.Rename:
		const known = unix.RENAME_NOREPLACE | unix.RENAME_EXCHANGE | unix.RENAME_WHITEOUT
		if o.Flags&^known != 0 {
			return fmt.Errorf("unknown rename flags %#x", o.Flags)
		}
		dir1, base1 := split(o.Path)
		dir2, base2 := split(o.Path2)
		d1, err := a.dirFD(dir1)
		if err != nil {
			return err
		}
		d2, err := a.dirFD(dir2)
		if err != nil {
			return err
		}
		if err := unix.Renameat2(d1, base1, d2, base2, uint(o.Flags)); err != nil {
			return err
		}
		// Both names now refer to other objects (or none).
		a.files.dropTree(o.Path)
		a.dirs.dropTree(o.Path)
		a.files.dropTree(o.Path2)
		a.dirs.dropTree(o.Path2)
		a.markDirty(dir1)
		a.markDirty(dir2)
		return nil
	case op.Link:
		dir1, base1 := split(o.Path)
		dir2, base2 := split(o.Path2)
		d1, err := a.dirFD(dir1)
		if err != nil {
			return err
		}
		d2, err := a.dirFD(dir2)
		if err != nil {
			return err
		}
		if err := unix.Linkat(d1, base1, d2, base2, 0); err != nil {
			return err
		}
		a.markDirty(dir2)
		return nil
	case op.Chmod:
		if o.Path == "" {
			return unix.Fchmod(a.root, o.Mode&0o7777)
		}
		dir, base := split(o.Path)
		dfd, err := a.dirFD(dir)
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Fstatat(dfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
		if st.Mode&unix.S_IFMT == unix.S_IFLNK {
			return nil // a symlink has no mode of its own; fchmodat would follow it
		}
		return unix.Fchmodat(dfd, base, o.Mode&0o7777, 0)
	case op.Chown:
		if o.Path == "" {
			return unix.Fchownat(a.root, "", int(o.Uid), int(o.Gid), unix.AT_EMPTY_PATH)
		}
		dir, base := split(o.Path)
		dfd, err := a.dirFD(dir)
		if err != nil {
			return err
		}
		return unix.Fchownat(dfd, base, int(o.Uid), int(o.Gid), unix.AT_SYMLINK_NOFOLLOW)
	case op.Utimens:
		ts := []unix.Timespec{{Sec: o.Atime.Sec, Nsec: o.Atime.Nsec}, {Sec: o.Mtime.Sec, Nsec: o.Mtime.Nsec}}
		if o.Path == "" {
			return unix.UtimesNanoAt(a.root, "", ts, unix.AT_EMPTY_PATH)
		}
		dir, base := split(o.Path)
		dfd, err := a.dirFD(dir)
		if err != nil {
			return err
		}
		return unix.UtimesNanoAt(dfd, base, ts, unix.AT_SYMLINK_NOFOLLOW)
	case op.SetXattr, op.RemoveXattr:
		return a.xattr(o)
	case op.Fsync:
		return a.fsync(o)
	case op.SyncAll:
		return a.syncAll()
	case op.Query:
		return nil // answered out of band (replica/compare); nothing to change
	case op.RemoveTree:
		return a.removeTree(o.Path)
	case op.XattrSet:
		return a.xattrSet(o)
	}
	return fmt.Errorf("unknown op kind %d", o.Kind)
}

// create makes a regular file. The primary created it, so normally it does
// not exist here; if it does (a replayed op, or an O_CREAT open that raced
// on the primary), it is left as it is, as O_CREAT without O_EXCL would.
func (a *Applier) create(o *op.Op) error {
	dir, base := split(o.Path)
	dfd, err := a.dirFD(dir)
	if err != nil {
		return err
	}
	fd, err := a.openat(dfd, base, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW, o.Mode&0o7777)
	if errors.Is(err, unix.EEXIST) {
		_, err = a.fileFD(o.Path)
		return err
	}
	if err != nil {
		return err
	}
	a.markDirty(dir)
	if err := a.fixOwnerMode(fd, o); err != nil {
		_ = unix.Close(fd)
		_ = unix.Unlinkat(dfd, base, 0)
		return err
	}
	a.files.put(o.Path, fd)
	return nil
}

// fixOwnerMode gives a new file the op's owner, then its exact mode (chown
// clears set-id bits, and the umask may have removed some).
func (a *Applier) fixOwnerMode(fd int, o *op.Op) error {
	if o.Uid >= 0 || o.Gid >= 0 {
		if err := unix.Fchown(fd, int(o.Uid), int(o.Gid)); err != nil {
			return fmt.Errorf("chown %d:%d: %w", o.Uid, o.Gid, err)
		}
	}
	if a.needChmod(o.Mode) {
		if err := unix.Fchmod(fd, o.Mode&0o7777); err != nil {
			return fmt.Errorf("chmod %o: %w", o.Mode&0o7777, err)
		}
	}
	return nil
}

// finishNew sets owner and mode of a new mknod/mkdir entry, removing it
// again on failure (undo flags as for unlinkat).
func (a *Applier) finishNew(dfd int, base string, o *op.Op, undo int) error {
	err := func() error {
		if o.Uid >= 0 || o.Gid >= 0 {
			if err := unix.Fchownat(dfd, base, int(o.Uid), int(o.Gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
				return fmt.Errorf("chown %d:%d: %w", o.Uid, o.Gid, err)
			}
		}
		if a.needChmod(o.Mode) {
			if err := unix.Fchmodat(dfd, base, o.Mode&0o7777, 0); err != nil {
				return fmt.Errorf("chmod %o: %w", o.Mode&0o7777, err)
			}
		}
		return nil
	}()
	if err != nil {
		_ = unix.Unlinkat(dfd, base, undo)
	}
	return err
}

func (a *Applier) needChmod(mode uint32) bool {
	return mode&0o7000 != 0 || mode&0o777&a.umask != 0
}

func (a *Applier) xattr(o *op.Op) error {
	if o.Path == "" {
		if o.Kind == op.SetXattr {
			return unix.Fsetxattr(a.root, o.Name, o.Data, int(o.Flags))
		}
		return unix.Fremovexattr(a.root, o.Name)
	}
	dir, base := split(o.Path)
	dfd, err := a.dirFD(dir)
	if err != nil {
		return err
	}
	// The l* calls do not follow the last component; the directory part
	// goes through our own descriptor's /proc link, so it cannot resolve
	// anywhere else.
	p := "/proc/self/fd/" + strconv.Itoa(dfd) + "/" + base
	if o.Kind == op.SetXattr {
		return unix.Lsetxattr(p, o.Name, o.Data, int(o.Flags))
	}
	return unix.Lremovexattr(p, o.Name)
}

func (a *Applier) fsync(o *op.Op) error {
	sync := func(fd int) error {
		if o.Flags&op.DataOnly != 0 {
			return ignoringEINTR(func() error { return unix.Fdatasync(fd) })
		}
		return ignoringEINTR(func() error { return unix.Fsync(fd) })
	}
	switch {
	case o.Path == "":
		if err := sync(a.root); err != nil {
			return err
		}
		delete(a.dirty, "")
	default:
		fd, ok := a.files.get(o.Path)
		if ok {
			if err := sync(fd); err != nil {
				return err
			}
			break
		}
		dir, base := split(o.Path)
		dfd, err := a.dirFD(dir)
		if err != nil {
			return err
		}
		var st unix.Stat_t
		if err := unix.Fstatat(dfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			fd, err := a.fileFD(o.Path)
			if err != nil {
				return err
			}
			if err := sync(fd); err != nil {
				return err
			}
		case unix.S_IFDIR:
			if err := a.syncDir(o.Path); err != nil {
				return err
			}
			delete(a.dirty, o.Path)
		default:
			// Nothing to flush but the entry itself: covered by the
			// parent below.
			a.markDirty(dir)
		}
	}
	if a.overflow {
		if err := unix.Syncfs(a.root); err != nil {
			return err
		}
		a.forgetFiles()
		clear(a.dirty)
		a.overflow, a.syncAllFS = false, false
		return nil
	}
	if len(a.dirty) == 0 || o.Path == "" {
		return nil
	}
	for d := o.Path; d != ""; {
		d, _ = split(d)
		if _, ok := a.dirty[d]; ok {
			if err := a.syncDir(d); err != nil {
				return fmt.Errorf("fsync directory %q: %w", d, err)
			}
			delete(a.dirty, d)
		}
	}
	return nil
}

func (a *Applier) syncDir(d string) error { return syncDirBeneath(a.root, d, a.noOpen2) }

// syncDirBeneath fsyncs directory d below root ("" is root itself). It
// does not touch the Applier (a Flush runs without its lock): after an
// ENOSYS it walks, but only openBeneath remembers to skip openat2.
func syncDirBeneath(root int, d string, noOpen2 bool) error {
	if d == "" {
		return ignoringEINTR(func() error { return unix.Fsync(root) })
	}
	flags := uint64(unix.O_RDONLY | unix.O_DIRECTORY | unix.O_CLOEXEC)
	fd, err := -1, error(unix.ENOSYS)
	if !noOpen2 {
		fd, err = openat2(root, d, flags, 0)
	}
	if err == unix.ENOSYS {
		fd, err = walkBeneath(root, d, int(flags), 0)
	}
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return ignoringEINTR(func() error { return unix.Fsync(fd) })
}

func (a *Applier) markDirty(d string) {
	if _, ok := a.dirty[d]; ok {
		return
	}
	if len(a.dirty) >= maxDirty {
		a.overflow = true
		return
	}
	a.dirty[d] = struct{}{}
}

// dirFD returns an O_PATH descriptor of directory d (cached; the caller
// must not close it).
func (a *Applier) dirFD(d string) (int, error) {
	if d == "" {
		return a.root, nil
	}
	if fd, ok := a.dirs.get(d); ok {
		return fd, nil
	}
	fd, err := a.openBeneath(a.root, d, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err == unix.ELOOP {
		return -1, fmt.Errorf("directory %q: a component is a symlink, which a replicated path never goes through: %w", d, err)
	}
	if err != nil {
		return -1, fmt.Errorf("directory %q: %w", d, err)
	}
	a.dirs.put(d, fd)
	return fd, nil
}

// fileFD returns a cached O_RDWR descriptor of regular file p.
func (a *Applier) fileFD(p string) (int, error) {
	if fd, ok := a.files.get(p); ok {
		return fd, nil
	}
	dir, base := split(p)
	dfd, err := a.dirFD(dir)
	if err != nil {
		return -1, err
	}
	// Only this Applier mutates the tree, so the check cannot go stale
	// before the open.
	var st unix.Stat_t
	if err := unix.Fstatat(dfd, base, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return -1, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return -1, fmt.Errorf("%w (mode %#o)", ErrNotRegular, st.Mode)
	}
	fd, err := a.openat(dfd, base, unix.O_RDWR|unix.O_NOFOLLOW, 0)
	if err != nil {
		return -1, err
	}
	a.files.put(p, fd)
	return fd, nil
}

// openat opens one component below dfd.
func (a *Applier) openat(dfd int, base string, flags int, mode uint32) (int, error) {
	return a.openBeneath(dfd, base, uint64(flags), mode)
}

// openBeneath opens relative path p below dirfd without following any
// symlink or leaving dirfd's tree.
func (a *Applier) openBeneath(dirfd int, p string, flags uint64, mode uint32) (int, error) {
	flags |= unix.O_CLOEXEC
	if !a.noOpen2 {
		fd, err := openat2(dirfd, p, flags, mode)
		if err != unix.ENOSYS {
			return fd, err
		}
		a.noOpen2 = true
	}
	return walkBeneath(dirfd, p, int(flags), mode)
}

func openat2(dirfd int, p string, flags uint64, mode uint32) (int, error) {
	how := unix.OpenHow{Flags: flags, Mode: uint64(mode), Resolve: resolveFlags}
	for i := 0; ; i++ {
		fd, err := unix.Openat2(dirfd, p, &how)
		if (err == unix.EAGAIN || err == unix.EINTR) && i < 16 {
			continue // a concurrent rename elsewhere; retry
		}
		return fd, err
	}
}

var noOpenat2 atomic.Bool

// OpenBeneath opens relative path p ("" or "." for dirfd itself) below
// directory dirfd with flags (O_CLOEXEC is added), following no symlink
// (ELOOP) and never leaving dirfd's tree: openat2 with RESOLVE_BENEATH,
// or a walk one component at a time on kernels without it. p must be
// clean (op.CleanPath). Safe for concurrent use.
func OpenBeneath(dirfd int, p string, flags uint64, mode uint32) (int, error) {
	if p == "" {
		p = "."
	}
	flags |= unix.O_CLOEXEC
	if !noOpenat2.Load() {
		fd, err := openat2(dirfd, p, flags, mode)
		if err != unix.ENOSYS {
			return fd, err
		}
		noOpenat2.Store(true)
	}
	if p == "." {
		return unix.Openat(dirfd, ".", int(flags), mode)
	}
	return walkBeneath(dirfd, p, int(flags), mode)
}

// walkBeneath is openBeneath for kernels without openat2: one component at
// a time, never following a symlink. p has been checked by op.CleanPath (no
// "..", no absolute path).
func walkBeneath(dirfd int, p string, flags int, mode uint32) (int, error) {
	cur := dirfd
	for {
		i := strings.IndexByte(p, '/')
		if i < 0 {
			fd, err := unix.Openat(cur, p, flags|unix.O_NOFOLLOW, mode)
			if cur != dirfd {
				unix.Close(cur)
			}
			return fd, err
		}
		next, err := unix.Openat(cur, p[:i], unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if cur != dirfd {
			unix.Close(cur)
		}
		if err != nil {
			return -1, err
		}
		cur, p = next, p[i+1:]
	}
}

// split returns the parent directory ("" for the root) and last name of a
// clean relative path.
func split(p string) (dir, base string) {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[:i], p[i+1:]
	}
	return "", p
}

func pwriteAll(fd int, b []byte, off int64) error {
	for len(b) > 0 {
		n, err := unix.Pwrite(fd, b, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return io.ErrShortWrite
		}
		b, off = b[n:], off+int64(n)
	}
	return nil
}

func ignoringEINTR(f func() error) error {
	for {
		if err := f(); err != unix.EINTR {
			return err
		}
	}
}
