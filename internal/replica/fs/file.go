package fs

import (
	"context"
	"sync/atomic"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/tandem-ha/tandem/internal/replica/op"
)

var (
	_ gofs.NodeReader    = (*node)(nil)
	_ gofs.NodeWriter    = (*node)(nil)
	_ gofs.NodeFlusher   = (*node)(nil)
	_ gofs.NodeReleaser  = (*node)(nil)
	_ gofs.NodeFsyncer   = (*node)(nil)
	_ gofs.NodeAllocater = (*node)(nil)
	_ gofs.NodeLseeker   = (*node)(nil)
)

// handle is one open file: a real fd on the inode.
type handle struct {
	m        *meta
	fd       int
	writable bool
	wrote    atomic.Bool
}

func (f *fsys) newHandle(m *meta, fd int, flags uint32) *handle {
	return &handle{
		m:        m,
		fd:       fd,
		writable: flags&unix.O_ACCMODE != unix.O_RDONLY,
	}
}

// backingFlags turns the kernel's open flags into flags for the real file:
// no O_APPEND (the kernel sends the offset where an append lands; pwrite on
// an O_APPEND fd would ignore it), no O_DIRECT (our buffers are not aligned;
// the page cache of the mount is what the application bypasses), no create
// flags (Create handles them), no O_NOFOLLOW (we open through
// /proc/self/fd), O_TRUNC applied explicitly so it is replicated.
//
// No O_SYNC/O_DSYNC either: the kernel follows every O_SYNC/O_DSYNC (and
// RWF_DSYNC) write with an FSYNC request (generic_write_sync, checked by
// TestWaits), which syncs locally and waits for the peer; syncing in the
// write as well would flush the disk twice.
func backingFlags(flags uint32) int {
	const strip = unix.O_APPEND | unix.O_CREAT | unix.O_EXCL | unix.O_NOCTTY | unix.O_TRUNC |
		unix.O_DIRECT | unix.O_NOFOLLOW | fuse.FMODE_EXEC | unix.O_SYNC | unix.O_DSYNC
	return int(flags&^strip) | unix.O_CLOEXEC
}

func (n *node) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	fd, err := retryNofile(func() (int, error) { return unix.Open(procPath(n.m.fd), backingFlags(flags), 0) })
	if err != nil {
		return nil, 0, errno(err)
	}
	h := n.f.newHandle(n.m, fd, flags)
	if flags&unix.O_TRUNC != 0 && h.writable {
		// Only with atomic_o_trunc; otherwise the kernel sends a SETATTR.
		f, m := n.f, n.m
		rec := f.touches()
		if e := rec.resize(m, 0); e != 0 {
			rec.done(false, 0)
			unix.Close(fd)
			return nil, 0, e
		}
		f.ns.RLock()
		m.dataMu.Lock()
		var seq uint64
		err := unix.Ftruncate(fd, 0)
		if err == nil {
			m.mtimeDirty.Store(true)
			if p, ok := f.pathOf(m); ok {
				seq = f.submit(m, &op.Op{Kind: op.Truncate, Path: p})
			}
			if uid, _ := callerOf(ctx); uid != 0 {
				if s := f.killSuid(m); s != 0 {
					seq = s
				}
			}
		}
		m.dataMu.Unlock()
		f.ns.RUnlock()
		rec.done(err == nil, seq)
		if err != nil {
			unix.Close(fd)
			return nil, 0, errno(err)
		}
	}
	return h, n.f.openFlags(flags), 0
}

// openFlags is the FUSE open reply for a handle opened with flags.
func (f *fsys) openFlags(flags uint32) uint32 {
	if f.direct && wantDirect(flags) {
		return fuse.FOPEN_DIRECT_IO | fuse.FOPEN_KEEP_CACHE // no invalidation at open
	}
	return fuse.FOPEN_KEEP_CACHE
}

func (n *node) Read(ctx context.Context, fh gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	h, ok := fh.(*handle)
	if !ok {
		return nil, syscall.EBADF
	}
	// Spliced from the real file when the kernel allows it.
	return fuse.ReadResultFd(uintptr(h.fd), off, len(dest)), 0
}

// Write applies data at the offset the kernel gave (for O_APPEND, the end of
// file as the kernel knows it, which every write through the mount keeps
// exact) and submits it under the inode lock.
func (n *node) Write(ctx context.Context, fh gofs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	h, ok := fh.(*handle)
	if !ok {
		return 0, syscall.EBADF
	}
	f, m := n.f, n.m
	rec := f.touches()
	from := m.recordFrom(h.fd, off)
	if e := rec.data(m, from, off+int64(len(data))-from); e != 0 {
		return 0, e
	}
	uid, _ := callerOf(ctx)
	if uid != 0 { // killSuid may change the mode
		if e := rec.meta(m); e != 0 {
			rec.done(false, 0)
			return 0, e
		}
	}
	f.ns.RLock()
	m.dataMu.Lock()
	done := 0
	var err error
	for done < len(data) {
		var w int
		w, err = unix.Pwrite(h.fd, data[done:], off+int64(done))
		if w <= 0 {
			if err == nil {
				err = syscall.EIO
			}
			break
		}
		done += w
		err = nil
	}
	var seq uint64
	if done > 0 {
		h.wrote.Store(true)
		if p, named := f.pathOf(m); named {
			// The write carries the mtime it gave the file, so the copies'
			// mtimes match at once, even for a file that stays open (a
			// failover must not leave them different).
			o := &op.Op{Kind: op.Write, Path: p, Data: data[:done], Off: off}
			var st unix.Stat_t
			if unix.Fstat(h.fd, &st) == nil {
				m.size.Store(st.Size)
				o.Atime = op.Time{Nsec: op.UtimeOmit}
				o.Mtime = op.Time{Sec: st.Mtim.Sec, Nsec: st.Mtim.Nsec}
			} else {
				m.mtimeDirty.Store(true) // sent at close instead
			}
			seq = f.submit(m, o)
		}
		if uid != 0 {
			if s := f.killSuid(m); s != 0 {
				seq = s
			}
		}
	}
	m.dataMu.Unlock()
	f.ns.RUnlock()
	rec.done(done > 0, seq)
	if f.sync == SyncWrite && done > 0 {
		if e := f.wait(seq, false, "write"); e != 0 {
			return 0, e
		}
	}
	if done == 0 {
		return 0, errno(err)
	}
	return uint32(done), 0
}

// killSuid clears set-user-ID, and set-group-ID on a group-executable
// file, after a write or truncate by a caller other than root, as the
// kernel does for a writer without CAP_FSETID (with
// FUSE_HANDLE_KILLPRIV_V2 this is the daemon's job, and the agent writes
// as root, which keeps the bits). It returns the seq of the Chmod op sent,
// or 0. Called with m.dataMu held.
func (f *fsys) killSuid(m *meta) uint64 {
	var st unix.Stat_t
	if unix.Fstat(m.fd, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG {
		return 0
	}
	mode := st.Mode & 07777
	kill := mode & unix.S_ISUID
	if mode&(unix.S_ISGID|unix.S_IXGRP) == unix.S_ISGID|unix.S_IXGRP {
		kill |= unix.S_ISGID
	}
	if kill == 0 || unix.Chmod(procPath(m.fd), mode&^kill) != nil {
		return 0
	}
	if p, named := f.pathOf(m); named {
		return f.submit(m, &op.Op{Kind: op.Chmod, Path: p, Mode: mode &^ kill})
	}
	return 0
}

// Flush is close(2) (once per close of a descriptor). A handle that may have
// written sends the file's mtime if data changed since it was last sent, and
// waits until the peer applied everything submitted for the inode.
func (n *node) Flush(ctx context.Context, fh gofs.FileHandle) syscall.Errno {
	h, ok := fh.(*handle)
	if !ok || !h.writable {
		return 0
	}
	n.sendMtime(h)
	if h.wrote.Load() {
		return n.f.wait(n.m.lastSeq.Load(), false, "close")
	}
	return 0
}

// sendMtime replicates the mtime after data changes (writes do not carry
// it), so the peer's copy matches after a close.
func (n *node) sendMtime(h *handle) {
	f, m := n.f, n.m
	if !m.mtimeDirty.Load() {
		return
	}
	f.ns.RLock()
	m.dataMu.Lock()
	if m.mtimeDirty.Load() {
		var st unix.Stat_t
		if unix.Fstat(h.fd, &st) == nil {
			m.mtimeDirty.Store(false)
			if p, named := f.pathOf(m); named {
				f.submit(m, &op.Op{Kind: op.Utimens, Path: p, Atime: op.Time{Nsec: op.UtimeOmit},
					Mtime: op.Time{Sec: st.Mtim.Sec, Nsec: st.Mtim.Nsec}})
			}
		}
	}
	m.dataMu.Unlock()
	f.ns.RUnlock()
}

// Release is the last close of the handle; it does not wait (the kernel
// does not wait for it either).
func (n *node) Release(ctx context.Context, fh gofs.FileHandle) syscall.Errno {
	h, ok := fh.(*handle)
	if !ok {
		return 0
	}
	if h.writable {
		n.sendMtime(h) // pages written back from a mmap after the last close
	}
	unix.Close(h.fd)
	h.fd = -1
	return 0
}

// Fsync syncs locally, submits an Fsync op and waits until the peer made
// everything up to it durable.
func (n *node) Fsync(ctx context.Context, fh gofs.FileHandle, flags uint32) syscall.Errno {
	f, m := n.f, n.m
	fd := -1
	if h, ok := fh.(*handle); ok {
		fd = h.fd
	} else {
		var err error
		if fd, err = unix.Open(procPath(m.fd), unix.O_RDONLY|unix.O_CLOEXEC, 0); err != nil {
			return errno(err)
		}
		defer unix.Close(fd)
	}
	dataOnly := flags&1 != 0 // FUSE_FSYNC_FDATASYNC
	// Ask the peer first, then flush here: both disks flush at once instead
	// of one after the other. The call returns only when both are done.
	f.ns.RLock()
	var seq uint64
	if p, named := f.pathOf(m); named {
		o := &op.Op{Kind: op.Fsync, Path: p}
		if dataOnly {
			o.Flags = op.DataOnly
		}
		seq = f.submit(m, o)
	}
	f.ns.RUnlock()
	var err error
	if dataOnly {
		err = unix.Fdatasync(fd)
	} else {
		err = unix.Fsync(fd)
	}
	if err != nil {
		return errno(err)
	}
	return f.wait(seq, true, "fsync")
}

func (n *node) Allocate(ctx context.Context, fh gofs.FileHandle, off uint64, size uint64, mode uint32) syscall.Errno {
	h, ok := fh.(*handle)
	if !ok {
		return syscall.EBADF
	}
	f, m := n.f, n.m
	rec := f.touches()
	if e := rec.meta(m); e != 0 {
		return e
	}
	from := m.recordFrom(h.fd, int64(off))
	if e := rec.data(m, from, int64(off)+int64(size)-from); e != 0 {
		rec.done(false, 0)
		return e
	}
	f.ns.RLock()
	m.dataMu.Lock()
	err := unix.Fallocate(h.fd, mode, int64(off), int64(size))
	var seq uint64
	if err == nil {
		m.mtimeDirty.Store(true)
		h.wrote.Store(true)
		if p, named := f.pathOf(m); named {
			seq = f.submit(m, &op.Op{Kind: op.Fallocate, Path: p, Flags: mode, Off: int64(off), Len: int64(size)})
		}
	}
	m.dataMu.Unlock()
	f.ns.RUnlock()
	rec.done(err == nil, seq)
	if f.sync == SyncWrite && err == nil {
		return f.wait(seq, false, "fallocate")
	}
	return errno(err)
}

func (n *node) Lseek(ctx context.Context, fh gofs.FileHandle, off uint64, whence uint32) (uint64, syscall.Errno) {
	h, ok := fh.(*handle)
	if !ok {
		return 0, syscall.EBADF
	}
	r, err := unix.Seek(h.fd, int64(off), int(whence))
	return uint64(r), errno(err)
}

// dirHandle is an open directory: listing from the real directory, and
// fsyncdir replicated. It exposes no ioctl (a FS_IOC_SETFLAGS would change
// the directory without an op).
type dirHandle struct {
	n  *node
	ds gofs.DirStream
}

var (
	_ gofs.FileReaddirenter = (*dirHandle)(nil)
	_ gofs.FileSeekdirer    = (*dirHandle)(nil)
	_ gofs.FileReleasedirer = (*dirHandle)(nil)
	_ gofs.FileFsyncdirer   = (*dirHandle)(nil)
)

func (n *node) OpendirHandle(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	fd, err := unix.Openat(n.m.fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, 0, errno(err)
	}
	ds, e := gofs.NewLoopbackDirStreamFd(fd)
	if e != 0 {
		unix.Close(fd)
		return nil, 0, e
	}
	return &dirHandle{n: n, ds: ds}, 0, 0
}

func (d *dirHandle) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	return d.ds.(gofs.FileReaddirenter).Readdirent(ctx)
}

func (d *dirHandle) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	return d.ds.(gofs.FileSeekdirer).Seekdir(ctx, off)
}

func (d *dirHandle) Releasedir(ctx context.Context, flags uint32) { d.ds.Close() }

func (d *dirHandle) Fsyncdir(ctx context.Context, flags uint32) syscall.Errno {
	if e := d.ds.(gofs.FileFsyncdirer).Fsyncdir(ctx, flags); e != 0 {
		return e
	}
	f, m := d.n.f, d.n.m
	f.ns.RLock()
	var seq uint64
	if p, named := f.pathOf(m); named {
		o := &op.Op{Kind: op.Fsync, Path: p}
		if flags&1 != 0 {
			o.Flags = op.DataOnly
		}
		seq = f.submit(m, o)
	}
	f.ns.RUnlock()
	return f.wait(seq, true, "fsyncdir")
}
