package fs

import (
	"fmt"
	"sync"

	"golang.org/x/sys/unix"
)

// Freeze blocks every mutation through the mount (namespace, data and
// attributes) once those in progress have finished, until thaw is called.
// Reads go on. The agent freezes while it attaches a new replication stream
// and sends a full copy, so no op can slip between the copy and the stream.
func (m *Mounted) Freeze() (thaw func()) {
	m.fsys.ns.Lock()
	var once sync.Once
	return func() { once.Do(m.fsys.ns.Unlock) }
}

// FreezeFile blocks every change of the regular file open at fd (a
// descriptor of the backing directory's file, opened by the caller) that
// could reach the stream between the caller's read of it and its ops:
// writes, truncates and attribute changes of that inode under any of its
// names (its data lock) and every rename, unlink and rmdir (the namespace
// lock, shared). Changes of other files, and creates and links, go on. A
// resync compare sends a file's data under it: its argument needs only
// that the file's own variables and names stand still (see
// replica/compare's doc).
func (m *Mounted) FreezeFile(fd int) (thaw func(), err error) {
	f := m.fsys
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("freeze file: stat fd %d: %w", fd, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, fmt.Errorf("freeze file: fd %d is not a regular file (mode %#o)", fd, st.Mode)
	}
	// The inode's meta, the one every op on it uses (made now if no FUSE
	// node holds it: a lookup meanwhile finds this one).
	me := f.acquireKnown(&st)
	if me == nil {
		pfd, err := unix.Open(procPath(fd), unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("freeze file: reopen fd %d: %w", fd, err)
		}
		if me, err = f.acquire(pfd, &st); err != nil {
			return nil, fmt.Errorf("freeze file: %w", err)
		}
	}
	f.ns.RLock()
	me.dataMu.Lock()
	var once sync.Once
	return func() {
		once.Do(func() {
			me.dataMu.Unlock()
			f.ns.RUnlock()
			f.release(me)
		})
	}, nil
}
