package fs

import (
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/tandem-ha/tandem/internal/replica/changelog"
)

// Changes records what is about to change, before each local change, so
// that a crash or a stretch without peer never leaves a change the record
// misses (internal/replica/changelog implements it). Every Touch is ended
// by Done with the seq of the op that carried the change (0: none), or by
// Cancel when nothing changed.
type Changes interface {
	Touch(k changelog.Key, off, n int64) (changelog.Pin, error)
	TouchMeta(k changelog.Key) (changelog.Pin, error)
	TouchDir(k changelog.Key) (changelog.Pin, error)
	Done(p changelog.Pin, seq uint64)
	Cancel(p changelog.Pin)
}

// touched is the record of one request's changes: up to six pins (a
// rename exchanging two files between two directories, raced).
type touched struct {
	f    *fsys
	pins [6]changelog.Pin
	n    int
}

func (m *meta) changeKey() changelog.Key { return changelog.Key{Dev: m.key.dev, Ino: m.key.ino} }

// fencedErr refuses a change once the mount is being unmounted: a lazily
// detached mount keeps serving the files still open, and their changes
// would reach a copy that may be a SECOND's by then, behind the stream.
func (t *touched) fencedErr() syscall.Errno {
	if t.f.fenced.Load() {
		return syscall.EROFS
	}
	return 0
}

// record runs one Touch; an error (the record could not be written) fails
// the request with EIO before anything changed.
func (t *touched) record(pin changelog.Pin, err error) syscall.Errno {
	if err != nil {
		t.f.log.Error("change record failed: the request is refused (EIO)", "err", err)
		return syscall.EIO
	}
	t.pins[t.n] = pin
	t.n++
	return 0
}

// data records bytes [off, off+n) of m.
func (t *touched) data(m *meta, off, n int64) syscall.Errno {
	if e := t.fencedErr(); e != 0 {
		return e
	}
	if t.f.changes == nil || n <= 0 {
		return 0
	}
	return t.record(t.f.changes.Touch(m.changeKey(), off, n))
}

// recordFrom is where the record of a change of m's data from off on must
// start. A write or fallocate past the end leaves a hole between the end
// and off: recorded too, because the peer's copy at this name may not be
// this inode's (a file created while the copies were apart, where another
// file was), and the old bytes there would survive a resync that sends
// only the recorded zones.
func (m *meta) recordFrom(fd int, off int64) int64 {
	if off <= m.size.Load() {
		return off
	}
	var st unix.Stat_t
	if unix.Fstat(fd, &st) != nil {
		return 0 // unknown end: from the start
	}
	return min(off, st.Size)
}

// meta records m's attributes (and, with a size change, the bytes between
// the old and the new size: the caller adds them with data).
func (t *touched) meta(m *meta) syscall.Errno {
	if e := t.fencedErr(); e != 0 {
		return e
	}
	if t.f.changes == nil {
		return 0
	}
	return t.record(t.f.changes.TouchMeta(m.changeKey()))
}

// dir records directory m's entries.
func (t *touched) dir(m *meta) syscall.Errno {
	if e := t.fencedErr(); e != 0 {
		return e
	}
	if t.f.changes == nil {
		return 0
	}
	return t.record(t.f.changes.TouchDir(m.changeKey()))
}

// moved records the whole content of the regular file named name in dirfd,
// about to be renamed (its inode). The records name directories and the
// zones of inodes: a file moved over another name whose size and mtime it
// happens to share would look unchanged there, and its old content would
// stay on the peer. It returns the inode recorded (zero: none).
func (t *touched) moved(dirfd int, name string) (devIno, syscall.Errno) {
	if e := t.fencedErr(); e != 0 {
		return devIno{}, e
	}
	if t.f.changes == nil {
		return devIno{}, 0
	}
	var st unix.Stat_t
	if unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size == 0 {
		return devIno{}, 0 // the rename fails, or there is no content to move
	}
	id := devIno{st.Dev, st.Ino}
	return id, t.record(t.f.changes.Touch(changelog.Key{Dev: st.Dev, Ino: st.Ino}, 0, st.Size))
}

// done ends every Touch with seq, the last op submitted for the request
// (0: none was, the change stays recorded until the peer gets it some
// other way); with changed false, nothing changed and they are cancelled.
func (t *touched) done(changed bool, seq uint64) {
	for i := range t.n {
		if changed {
			t.f.changes.Done(t.pins[i], seq)
		} else {
			t.f.changes.Cancel(t.pins[i])
		}
	}
	t.n = 0
}

// cut records a truncate to 0 of the file st describes, which no meta
// holds yet: its attributes and its content.
func (t *touched) cut(st *unix.Stat_t) syscall.Errno {
	if e := t.fencedErr(); e != 0 {
		return e
	}
	if t.f.changes == nil {
		return 0
	}
	k := changelog.Key{Dev: st.Dev, Ino: st.Ino}
	if e := t.record(t.f.changes.TouchMeta(k)); e != 0 {
		return e
	}
	return t.record(t.f.changes.Touch(k, 0, st.Size))
}

// resize records a truncate of m (its O_PATH or open fd) to size: its
// attributes, and the bytes between the old and the new size.
func (t *touched) resize(m *meta, size int64) syscall.Errno {
	if e := t.fencedErr(); e != 0 {
		return e
	}
	if t.f.changes == nil {
		return 0
	}
	var st unix.Stat_t
	if err := unix.Fstat(m.fd, &st); err != nil {
		return errno(err)
	}
	if e := t.meta(m); e != 0 {
		return e
	}
	return t.data(m, min(st.Size, size), max(st.Size, size)-min(st.Size, size))
}

func (f *fsys) touches() touched { return touched{f: f} }
