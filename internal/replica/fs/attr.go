package fs

import (
	"context"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/tandem-ha/tandem/internal/replica/op"
)

// Attribute operations hold fsys.ns shared and the inode's dataMu.

// Setattr applies chown, chmod, truncate and times in that order (chown
// first: it clears set-user-ID bits that a chmod in the same request sets)
// and submits one op per change applied.
func (n *node) Setattr(ctx context.Context, fh gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	f, m := n.f, n.m
	h, _ := fh.(*handle)
	rec := f.touches()
	var e syscall.Errno
	if size, ok := in.GetSize(); ok {
		e = rec.resize(m, int64(size))
	} else if in.Valid&(fuse.FATTR_UID|fuse.FATTR_GID|fuse.FATTR_MODE|fuse.FATTR_ATIME|fuse.FATTR_MTIME) != 0 {
		e = rec.meta(m)
	}
	if e != 0 {
		rec.done(false, 0)
		return e
	}
	var seq uint64 // last op submitted
	changed := false
	f.ns.RLock()
	m.dataMu.Lock()
	defer func() {
		m.dataMu.Unlock()
		f.ns.RUnlock()
		rec.done(changed, seq)
	}()
	path, named := f.pathOf(m)
	sub := func(o *op.Op) {
		changed = true
		if named {
			o.Path = path
			seq = f.submit(m, o)
		}
	}
	uid, uok := in.GetUID()
	gid, gok := in.GetGID()
	if uok || gok {
		o := &op.Op{Kind: op.Chown, Uid: -1, Gid: -1}
		su, sg := -1, -1
		if uok {
			su, o.Uid = int(uid), int64(uid)
		}
		if gok {
			sg, o.Gid = int(gid), int64(gid)
		}
		if err := unix.Fchownat(m.fd, "", su, sg, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return errno(err)
		}
		sub(o)
	}
	if mode, ok := in.GetMode(); ok {
		if m.isSymlink() {
			return syscall.EOPNOTSUPP
		}
		var err error
		if h != nil {
			err = unix.Fchmod(h.fd, mode&07777)
		} else {
			err = unix.Chmod(procPath(m.fd), mode&07777)
		}
		if err != nil {
			return errno(err)
		}
		sub(&op.Op{Kind: op.Chmod, Mode: mode & 07777})
	}
	if size, ok := in.GetSize(); ok {
		var err error
		if h != nil && h.writable {
			err = unix.Ftruncate(h.fd, int64(size))
		} else {
			err = unix.Truncate(procPath(m.fd), int64(size))
		}
		if err != nil {
			return errno(err)
		}
		sub(&op.Op{Kind: op.Truncate, Off: int64(size)})
		if in.Valid&fuse.FATTR_KILL_SUIDGID != 0 {
			if s := f.killSuid(m); s != 0 {
				seq = s
			}
		}
		if in.Valid&fuse.FATTR_MTIME == 0 {
			// truncate(2) set the mtime; no close may follow to send it.
			var st unix.Stat_t
			if err := unix.Fstat(m.fd, &st); err == nil {
				sub(&op.Op{Kind: op.Utimens, Atime: op.Time{Nsec: op.UtimeOmit},
					Mtime: op.Time{Sec: st.Mtim.Sec, Nsec: st.Mtim.Nsec}})
			}
		}
	}
	if in.Valid&(fuse.FATTR_ATIME|fuse.FATTR_MTIME) != 0 {
		ts := []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_OMIT}}
		if in.Valid&fuse.FATTR_ATIME != 0 {
			ts[0] = unix.Timespec{Sec: int64(in.Atime), Nsec: int64(in.Atimensec)}
			if in.Valid&fuse.FATTR_ATIME_NOW != 0 {
				ts[0] = unix.Timespec{Nsec: unix.UTIME_NOW}
			}
		}
		if in.Valid&fuse.FATTR_MTIME != 0 {
			ts[1] = unix.Timespec{Sec: int64(in.Mtime), Nsec: int64(in.Mtimensec)}
			if in.Valid&fuse.FATTR_MTIME_NOW != 0 {
				ts[1] = unix.Timespec{Nsec: unix.UTIME_NOW}
			}
		}
		if err := unix.UtimesNanoAt(m.fd, "", ts, unix.AT_EMPTY_PATH|unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return errno(err)
		}
		// Send the times that resulted, so "now" is the primary's now.
		var st unix.Stat_t
		if err := unix.Fstat(m.fd, &st); err != nil {
			return errno(err)
		}
		o := &op.Op{Kind: op.Utimens, Atime: op.Time{Nsec: op.UtimeOmit}, Mtime: op.Time{Nsec: op.UtimeOmit}}
		if in.Valid&fuse.FATTR_ATIME != 0 {
			o.Atime = op.Time{Sec: st.Atim.Sec, Nsec: st.Atim.Nsec}
		}
		if in.Valid&fuse.FATTR_MTIME != 0 {
			o.Mtime = op.Time{Sec: st.Mtim.Sec, Nsec: st.Mtim.Nsec}
			m.mtimeDirty.Store(false)
		}
		sub(o)
	}
	var st unix.Stat_t
	fd := m.fd
	if h != nil {
		fd = h.fd
	}
	if err := unix.Fstat(fd, &st); err != nil {
		return errno(err)
	}
	fillAttr(&out.Attr, &st)
	return 0
}

// xattrTarget names the inode for the *xattr calls: through its fd for
// everything but symlinks (following /proc/self/fd/N reaches the inode);
// a symlink through its parent and name with the l* calls (the caller then
// holds fsys.ns).
func (n *node) xattrTarget() (path string, symlink bool, ok bool) {
	if !n.m.isSymlink() {
		return procPath(n.m.fd), false, true
	}
	n.f.mu.Lock()
	defer n.f.mu.Unlock()
	if len(n.m.links) == 0 {
		return "", true, false
	}
	l := n.m.links[0]
	return procPath(l.parent.fd) + "/" + l.name, true, true
}

// capsXattr is read by the kernel before every write (to drop file
// capabilities); its absence is cached per inode, since only this mount
// changes xattrs while mounted.
const capsXattr = "security.capability"

func (n *node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	if attr == capsXattr && n.m.noCaps.Load() {
		return 0, syscall.ENODATA
	}
	if n.m.isSymlink() {
		// Named through its parent: keep the name stable.
		n.f.ns.RLock()
		defer n.f.ns.RUnlock()
	}
	p, sym, ok := n.xattrTarget()
	if !ok {
		return 0, syscall.EOPNOTSUPP
	}
	var sz int
	var err error
	if sym {
		sz, err = unix.Lgetxattr(p, attr, dest)
	} else {
		sz, err = unix.Getxattr(p, attr, dest)
	}
	if attr == capsXattr && err == unix.ENODATA {
		n.m.noCaps.Store(true)
	}
	return uint32(max(sz, 0)), errno(err)
}

func (n *node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	if n.m.isSymlink() {
		// Named through its parent: keep the name stable.
		n.f.ns.RLock()
		defer n.f.ns.RUnlock()
	}
	p, sym, ok := n.xattrTarget()
	if !ok {
		return 0, syscall.EOPNOTSUPP
	}
	var sz int
	var err error
	if sym {
		sz, err = unix.Llistxattr(p, dest)
	} else {
		sz, err = unix.Listxattr(p, dest)
	}
	return uint32(max(sz, 0)), errno(err)
}

func (n *node) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	f, m := n.f, n.m
	rec := f.touches()
	if e := rec.meta(m); e != 0 {
		return e
	}
	var seq uint64
	changed := false
	defer func() { rec.done(changed, seq) }()
	f.ns.RLock()
	defer f.ns.RUnlock()
	m.dataMu.Lock()
	defer m.dataMu.Unlock()
	p, sym, ok := n.xattrTarget()
	if !ok {
		return syscall.EOPNOTSUPP
	}
	m.noCaps.Store(false)
	var err error
	if sym {
		err = unix.Lsetxattr(p, attr, data, int(flags))
	} else {
		err = unix.Setxattr(p, attr, data, int(flags))
	}
	if err != nil {
		return errno(err)
	}
	changed = true
	if path, named := f.pathOf(m); named {
		seq = f.submit(m, &op.Op{Kind: op.SetXattr, Path: path, Name: attr, Data: data, Flags: flags})
	}
	return 0
}

func (n *node) Removexattr(ctx context.Context, attr string) syscall.Errno {
	f, m := n.f, n.m
	rec := f.touches()
	if e := rec.meta(m); e != 0 {
		return e
	}
	var seq uint64
	changed := false
	defer func() { rec.done(changed, seq) }()
	f.ns.RLock()
	defer f.ns.RUnlock()
	m.dataMu.Lock()
	defer m.dataMu.Unlock()
	p, sym, ok := n.xattrTarget()
	if !ok {
		return syscall.EOPNOTSUPP
	}
	m.noCaps.Store(false)
	var err error
	if sym {
		err = unix.Lremovexattr(p, attr)
	} else {
		err = unix.Removexattr(p, attr)
	}
	if err != nil {
		return errno(err)
	}
	changed = true
	if path, named := f.pathOf(m); named {
		seq = f.submit(m, &op.Op{Kind: op.RemoveXattr, Path: path, Name: attr})
	}
	return 0
}
