package fs

import (
	"context"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/tandem-ha/tandem/internal/replica/op"
)

// Namespace operations hold fsys.ns from the path computation to the Submit:
// exclusively for those that remove or move a name (unlink, rmdir, rename:
// they change the path of an inode that data ops may be using), shared for
// those that only add one (create, mkdir, mknod, symlink, link: no existing
// path changes, and the kernel already serializes operations on one
// directory entry by holding the directory's lock).

// finishCreate gives a freshly created name the caller's ownership (the
// directory's group when it is set-group-ID, as a local filesystem does) and
// the requested mode (the process umask may have removed bits), and stats it.
// The kernel already applied the caller's umask and dropped set-group-ID
// where the caller may not have it.
func (n *node) finishCreate(name string, uid, gid, want uint32, typ uint32, st *unix.Stat_t) error {
	var pst unix.Stat_t
	if err := unix.Fstat(n.m.fd, &pst); err != nil {
		return err
	}
	if pst.Mode&unix.S_ISGID != 0 {
		gid = pst.Gid
		if typ == unix.S_IFDIR {
			want |= unix.S_ISGID
		}
	}
	if err := unix.Fstatat(n.m.fd, name, st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return err
	}
	if st.Uid != uid || st.Gid != gid {
		if err := unix.Fchownat(n.m.fd, name, int(uid), int(gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
	}
	if typ != unix.S_IFLNK && st.Mode&07777 != want {
		if err := unix.Fchmodat(n.m.fd, name, want, 0); err != nil {
			return err
		}
	}
	return unix.Fstatat(n.m.fd, name, st, unix.AT_SYMLINK_NOFOLLOW)
}

// entryPath is the op path of name in n; the caller holds ns.
// stampDir sends the directory's mtime after a change of its entries, so
// the copies' directory mtimes match. Read and submit under the inode's
// lock: the last stamp sent always carries the latest time.
func (n *node) stampDir() uint64 {
	f, m := n.f, n.m
	m.dataMu.Lock()
	defer m.dataMu.Unlock()
	var st unix.Stat_t
	if unix.Fstat(m.fd, &st) != nil {
		return 0
	}
	if p, named := f.pathOf(m); named {
		return f.submit(m, &op.Op{Kind: op.Utimens, Path: p, Atime: op.Time{Nsec: op.UtimeOmit},
			Mtime: op.Time{Sec: st.Mtim.Sec, Nsec: st.Mtim.Nsec}})
	}
	return 0
}

// lastOf is the later of two seqs (0: none).
func lastOf(a, b uint64) uint64 { return max(a, b) }

func (n *node) entryPath(name string) (string, bool) {
	p, ok := n.f.pathOf(n.m)
	return childPath(p, name), ok
}

// Create opens (and usually creates) a regular file.
func (n *node) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	f := n.f
	uid, gid := callerOf(ctx)
	rec := f.touches()
	if e := rec.dir(n.m); e != 0 {
		return nil, nil, 0, e
	}
	var seq uint64
	changed := false
	defer func() { rec.done(changed, seq) }() // after the unlock below
	f.ns.RLock()
	defer f.ns.RUnlock()
	path, named := n.entryPath(name)
	bflags := backingFlags(flags)
	created := true
	fd, err := unix.Openat(n.m.fd, name, bflags|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW, mode&07777)
	if err == unix.EEXIST && flags&unix.O_EXCL == 0 {
		// Created behind the kernel's back (the directory changed outside
		// the mount): open it as open(2) would.
		created = false
		var st unix.Stat_t
		if err := unix.Fstatat(n.m.fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return nil, nil, 0, errno(err)
		}
		if !mayOpen(&st, uid, gid, flags) {
			return nil, nil, 0, syscall.EACCES
		}
		if flags&unix.O_TRUNC != 0 && st.Mode&unix.S_IFMT == unix.S_IFREG && st.Size != 0 {
			// Cut below: its content is recorded first, as any
			// truncate's (the directory's record alone would leave the
			// old bytes under a later write's hole on the peer).
			if e := rec.cut(&st); e != 0 {
				return nil, nil, 0, e
			}
		}
		fd, err = unix.Openat(n.m.fd, name, bflags|unix.O_NOFOLLOW, 0)
	}
	if err != nil {
		return nil, nil, 0, errno(err)
	}
	fail := func(err error) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
		unix.Close(fd)
		if created {
			unix.Unlinkat(n.m.fd, name, 0)
		}
		return nil, nil, 0, errno(err)
	}
	var st unix.Stat_t
	if created {
		if err := n.finishCreate(name, uid, gid, mode&07777, unix.S_IFREG, &st); err != nil {
			return fail(err)
		}
	}
	if err := unix.Fstat(fd, &st); err != nil {
		return fail(err)
	}
	var pst unix.Stat_t
	pfd, err := n.openChild(name, &pst)
	if err != nil {
		return fail(err)
	}
	if st.Ino != pst.Ino || st.Dev != pst.Dev {
		unix.Close(pfd)
		return fail(unix.ESTALE)
	}
	ch, e := n.child(ctx, pfd, &pst, name, out)
	if e != 0 {
		return fail(e)
	}
	cm := ch.Operations().(*node).m
	changed = created
	if named {
		if created {
			cm.noCaps.Store(true)     // a new file has no file capabilities
			cm.mtimeDirty.Store(true) // the close sends the creation mtime
			seq = f.submit(cm, &op.Op{Kind: op.Create, Path: path, Mode: st.Mode & 07777,
				Uid: int64(st.Uid), Gid: int64(st.Gid), Flags: flags,
				Atime: op.Time{Sec: st.Atim.Sec, Nsec: st.Atim.Nsec}, Mtime: op.Time{Sec: st.Mtim.Sec, Nsec: st.Mtim.Nsec}})
			seq = lastOf(seq, n.stampDir())
		} else if flags&unix.O_TRUNC != 0 && st.Size != 0 {
			// A file made behind the mount's back (its content was
			// recorded above).
			cm.dataMu.Lock()
			if err := unix.Ftruncate(fd, 0); err == nil {
				cm.mtimeDirty.Store(true)
				changed = true
				seq = f.submit(cm, &op.Op{Kind: op.Truncate, Path: path})
			}
			cm.dataMu.Unlock()
		}
	}
	return ch, f.newHandle(cm, fd, flags), f.openFlags(flags), 0
}

// mayOpen is a plain owner/group/other check for the rare open of a file
// that appeared behind the kernel's back (supplementary groups not seen).
func mayOpen(st *unix.Stat_t, uid, gid, flags uint32) bool {
	if uid == 0 {
		return true
	}
	var need uint32
	switch flags & unix.O_ACCMODE {
	case unix.O_RDONLY:
		need = 4
	case unix.O_WRONLY:
		need = 2
	default:
		need = 6
	}
	perm := st.Mode & 07
	if st.Uid == uid {
		perm = (st.Mode >> 6) & 07
	} else if st.Gid == gid {
		perm = (st.Mode >> 3) & 07
	}
	return perm&need == need
}

// finishEntry registers a created name and submits its op.
// It ends rec (the parent's record) either way.
func (n *node) finishEntry(ctx context.Context, name string, named bool, undo func(), out *fuse.EntryOut,
	rec *touched, mk func(st *unix.Stat_t) *op.Op) (*gofs.Inode, syscall.Errno) {
	var st unix.Stat_t
	fd, err := n.openChild(name, &st)
	if err != nil {
		undo()
		rec.done(false, 0)
		return nil, errno(err)
	}
	ch, e := n.child(ctx, fd, &st, name, out)
	if e != 0 {
		undo()
		rec.done(false, 0)
		return nil, e
	}
	var seq uint64
	if named {
		o := mk(&st)
		// The entry's own times, so the copies' mtimes match.
		o.Atime = op.Time{Sec: st.Atim.Sec, Nsec: st.Atim.Nsec}
		o.Mtime = op.Time{Sec: st.Mtim.Sec, Nsec: st.Mtim.Nsec}
		seq = n.f.submit(ch.Operations().(*node).m, o)
		seq = lastOf(seq, n.stampDir())
	}
	rec.done(true, seq)
	return ch, 0
}

func (n *node) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	f := n.f
	uid, gid := callerOf(ctx)
	rec := f.touches()
	if e := rec.dir(n.m); e != 0 {
		return nil, e
	}
	f.ns.RLock()
	defer f.ns.RUnlock()
	path, named := n.entryPath(name)
	if err := unix.Mkdirat(n.m.fd, name, mode&07777); err != nil {
		rec.done(false, 0)
		return nil, errno(err)
	}
	undo := func() { unix.Unlinkat(n.m.fd, name, unix.AT_REMOVEDIR) }
	var st unix.Stat_t
	if err := n.finishCreate(name, uid, gid, mode&07777, unix.S_IFDIR, &st); err != nil {
		undo()
		rec.done(true, 0) // the directory's mtime may have moved
		return nil, errno(err)
	}
	return n.finishEntry(ctx, name, named, undo, out, &rec, func(st *unix.Stat_t) *op.Op {
		return &op.Op{Kind: op.Mkdir, Path: path, Mode: st.Mode & 07777, Uid: int64(st.Uid), Gid: int64(st.Gid)}
	})
}

func (n *node) Mknod(ctx context.Context, name string, mode uint32, dev uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	f := n.f
	uid, gid := callerOf(ctx)
	rec := f.touches()
	if e := rec.dir(n.m); e != 0 {
		return nil, e
	}
	f.ns.RLock()
	defer f.ns.RUnlock()
	path, named := n.entryPath(name)
	if err := unix.Mknodat(n.m.fd, name, mode, int(dev)); err != nil {
		rec.done(false, 0)
		return nil, errno(err)
	}
	undo := func() { unix.Unlinkat(n.m.fd, name, 0) }
	var st unix.Stat_t
	if err := n.finishCreate(name, uid, gid, mode&07777, mode&unix.S_IFMT, &st); err != nil {
		undo()
		rec.done(true, 0) // the directory's mtime may have moved
		return nil, errno(err)
	}
	return n.finishEntry(ctx, name, named, undo, out, &rec, func(st *unix.Stat_t) *op.Op {
		return &op.Op{Kind: op.Mknod, Path: path, Mode: st.Mode, Rdev: st.Rdev, Uid: int64(st.Uid), Gid: int64(st.Gid)}
	})
}

func (n *node) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	f := n.f
	uid, gid := callerOf(ctx)
	rec := f.touches()
	if e := rec.dir(n.m); e != 0 {
		return nil, e
	}
	f.ns.RLock()
	defer f.ns.RUnlock()
	path, named := n.entryPath(name)
	if err := unix.Symlinkat(target, n.m.fd, name); err != nil {
		rec.done(false, 0)
		return nil, errno(err)
	}
	undo := func() { unix.Unlinkat(n.m.fd, name, 0) }
	var st unix.Stat_t
	if err := n.finishCreate(name, uid, gid, 0777, unix.S_IFLNK, &st); err != nil {
		undo()
		rec.done(true, 0) // the directory's mtime may have moved
		return nil, errno(err)
	}
	return n.finishEntry(ctx, name, named, undo, out, &rec, func(st *unix.Stat_t) *op.Op {
		return &op.Op{Kind: op.Symlink, Path: path, Data: []byte(target), Uid: int64(st.Uid), Gid: int64(st.Gid)}
	})
}

func (n *node) Link(ctx context.Context, target gofs.InodeEmbedder, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	t, ok := target.(*node)
	if !ok || t.f != n.f {
		return nil, syscall.EXDEV
	}
	f := n.f
	rec := f.touches()
	if e := rec.dir(n.m); e != 0 {
		return nil, e
	}
	if e := rec.meta(t.m); e != 0 { // its link count
		rec.done(false, 0)
		return nil, e
	}
	var seq uint64
	changed := false
	defer func() { rec.done(changed, seq) }() // after the unlock below
	f.ns.RLock()
	defer f.ns.RUnlock()
	tpath, tnamed := f.pathOf(t.m)
	path, named := n.entryPath(name)
	if err := unix.Linkat(t.m.fd, "", n.m.fd, name, unix.AT_EMPTY_PATH); err != nil {
		return nil, errno(err)
	}
	changed = true
	var st unix.Stat_t
	if err := unix.Fstat(t.m.fd, &st); err != nil {
		unix.Unlinkat(n.m.fd, name, 0)
		return nil, errno(err)
	}
	f.mu.Lock()
	t.m.refs++ // for the node below
	f.mu.Unlock()
	f.addLink(t.m, n.m, name)
	fillAttr(&out.Attr, &st)
	out.Attr.Ino = t.m.ino
	ch := n.NewInode(ctx, f.newNode(t.m), gofs.StableAttr{Mode: t.m.mode, Ino: t.m.ino, Gen: t.m.gen})
	if named && tnamed {
		seq = f.submit(t.m, &op.Op{Kind: op.Link, Path: tpath, Path2: path})
		seq = lastOf(seq, n.stampDir())
	} else if named {
		f.log.Error("hard link to a file with no known name not replicated", "path", path)
	}
	return ch, 0
}

func (n *node) Unlink(ctx context.Context, name string) syscall.Errno {
	return n.remove(name, 0, op.Unlink)
}

func (n *node) Rmdir(ctx context.Context, name string) syscall.Errno {
	return n.remove(name, unix.AT_REMOVEDIR, op.Rmdir)
}

func (n *node) remove(name string, flags int, kind op.Kind) syscall.Errno {
	f := n.f
	rec := f.touches()
	if e := rec.dir(n.m); e != 0 {
		return e
	}
	var seq uint64
	changed := false
	defer func() { rec.done(changed, seq) }() // after the unlock below
	f.ns.Lock()
	defer f.ns.Unlock()
	path, named := n.entryPath(name)
	if err := unix.Unlinkat(n.m.fd, name, flags); err != nil {
		return errno(err)
	}
	changed = true
	f.removeLink(n.m, name)
	if named {
		seq = f.submit(nil, &op.Op{Kind: kind, Path: path})
		seq = lastOf(seq, n.stampDir())
	}
	return 0
}

// movedAgain, under f.ns, records the files a rename moves if they are not
// the ones recorded before the lock (another rename through the mount took
// the lock first and moved a name). Rare: the record is then made under
// the lock.
func (f *fsys) movedAgain(rec *touched, ids [2]devIno, dir1 int, name1 string, dir2 int, name2 string, flags uint32) syscall.Errno {
	check := func(id devIno, dirfd int, name string) syscall.Errno {
		var st unix.Stat_t
		if unix.Fstatat(dirfd, name, &st, unix.AT_SYMLINK_NOFOLLOW) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size == 0 {
			return 0
		}
		if (devIno{st.Dev, st.Ino}) == id || rec.n == len(rec.pins) {
			return 0
		}
		_, e := rec.moved(dirfd, name)
		return e
	}
	if e := check(ids[0], dir1, name1); e != 0 {
		return e
	}
	if flags&unix.RENAME_EXCHANGE != 0 {
		return check(ids[1], dir2, name2)
	}
	return 0
}

func (n *node) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	np, ok := newParent.(*node)
	if !ok || np.f != n.f {
		return syscall.EXDEV
	}
	if flags&^(unix.RENAME_NOREPLACE|unix.RENAME_EXCHANGE) != 0 {
		return syscall.EINVAL // RENAME_WHITEOUT is for overlayfs
	}
	f := n.f
	rec := f.touches()
	if e := rec.dir(n.m); e != 0 {
		return e
	}
	if np != n {
		if e := rec.dir(np.m); e != 0 {
			rec.done(false, 0)
			return e
		}
	}
	var seq uint64
	changed := false
	defer func() { rec.done(changed, seq) }() // after the unlock below
	// The moved files' content, recorded before the lock (a record may
	// wait for its journal), checked again under it.
	var movedIDs [2]devIno
	var e syscall.Errno
	if movedIDs[0], e = rec.moved(n.m.fd, name); e != 0 {
		return e
	}
	if flags&unix.RENAME_EXCHANGE != 0 {
		if movedIDs[1], e = rec.moved(np.m.fd, newName); e != 0 {
			return e
		}
	}
	f.ns.Lock()
	defer f.ns.Unlock()
	if e := f.movedAgain(&rec, movedIDs, n.m.fd, name, np.m.fd, newName, flags); e != 0 {
		return e
	}
	p1, ok1 := n.entryPath(name)
	p2, ok2 := np.entryPath(newName)
	if err := unix.Renameat2(n.m.fd, name, np.m.fd, newName, uint(flags)); err != nil {
		return errno(err)
	}
	changed = true
	if flags&unix.RENAME_EXCHANGE != 0 {
		f.exchangeLinks(n.m, name, np.m, newName)
	} else {
		f.moveLink(n.m, name, np.m, newName)
	}
	if ok1 && ok2 {
		seq = f.submit(nil, &op.Op{Kind: op.Rename, Path: p1, Path2: p2, Flags: flags})
		seq = lastOf(seq, n.stampDir())
		if np != n {
			seq = lastOf(seq, np.stampDir())
		}
	} else {
		f.log.Error("rename involving a deleted directory not replicated", "from", p1, "to", p2)
	}
	return 0
}
