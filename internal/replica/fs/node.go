package fs

import (
	"context"
	"runtime"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// node is go-fuse's view of one inode. go-fuse may create several nodes for
// one inode and drop some without telling us, so a node does not own its
// meta: it holds a reference that a cleanup releases once the node is
// unreachable (go-fuse forgot it and no request uses it). Nothing is ever
// closed while a request could still use it.
type node struct {
	gofs.Inode
	f *fsys
	m *meta
}

// newNode wraps m, taking over one reference held by the caller.
func (f *fsys) newNode(m *meta) *node {
	nd := &node{f: f, m: m}
	runtime.AddCleanup(nd, f.release, m)
	return nd
}

var (
	_ gofs.NodeLookuper       = (*node)(nil)
	_ gofs.NodeGetattrer      = (*node)(nil)
	_ gofs.NodeSetattrer      = (*node)(nil)
	_ gofs.NodeCreater        = (*node)(nil)
	_ gofs.NodeMkdirer        = (*node)(nil)
	_ gofs.NodeMknoder        = (*node)(nil)
	_ gofs.NodeSymlinker      = (*node)(nil)
	_ gofs.NodeLinker         = (*node)(nil)
	_ gofs.NodeUnlinker       = (*node)(nil)
	_ gofs.NodeRmdirer        = (*node)(nil)
	_ gofs.NodeRenamer        = (*node)(nil)
	_ gofs.NodeReadlinker     = (*node)(nil)
	_ gofs.NodeGetxattrer     = (*node)(nil)
	_ gofs.NodeSetxattrer     = (*node)(nil)
	_ gofs.NodeRemovexattrer  = (*node)(nil)
	_ gofs.NodeListxattrer    = (*node)(nil)
	_ gofs.NodeStatfser       = (*node)(nil)
	_ gofs.NodeOpener         = (*node)(nil)
	_ gofs.NodeOpendirHandler = (*node)(nil)
	_ gofs.NodeOnForgetter    = (*node)(nil)
)

func errno(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	return gofs.ToErrno(err)
}

func callerOf(ctx context.Context) (uid, gid uint32) {
	if c, ok := ctx.(*fuse.Context); ok {
		return c.Uid, c.Gid
	}
	if c, ok := fuse.FromContext(ctx); ok {
		return c.Uid, c.Gid
	}
	return 0, 0
}

func fillAttr(a *fuse.Attr, st *unix.Stat_t) {
	a.Ino = st.Ino
	a.Size = uint64(st.Size)
	a.Blocks = uint64(st.Blocks)
	a.Atime = uint64(st.Atim.Sec)
	a.Atimensec = uint32(st.Atim.Nsec)
	a.Mtime = uint64(st.Mtim.Sec)
	a.Mtimensec = uint32(st.Mtim.Nsec)
	a.Ctime = uint64(st.Ctim.Sec)
	a.Ctimensec = uint32(st.Ctim.Nsec)
	a.Mode = st.Mode
	a.Nlink = uint32(st.Nlink)
	a.Uid = st.Uid
	a.Gid = st.Gid
	a.Rdev = uint32(st.Rdev)
	a.Blksize = uint32(st.Blksize)
}

// retryNofile runs open once more after a garbage collection when the fd
// limit is reached: nodes go-fuse dropped release their fd when collected.
func retryNofile(open func() (int, error)) (int, error) {
	fd, err := open()
	if err == unix.EMFILE || err == unix.ENFILE {
		runtime.GC()
		time.Sleep(20 * time.Millisecond) // cleanups run after the collection
		fd, err = open()
	}
	return fd, err
}

// OnForget: the kernel dropped the node. A deleted file's space comes back
// when its meta is released, which happens when the node is collected.
func (n *node) OnForget() {
	n.f.mu.Lock()
	deleted := len(n.m.links) == 0 && n.m != n.f.root
	n.f.mu.Unlock()
	if deleted {
		n.f.kickGC()
	}
}

// child registers the inode open (O_PATH) at fd as name in n and returns its
// go-fuse inode. It takes ownership of fd.
func (n *node) child(ctx context.Context, fd int, st *unix.Stat_t, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	m, err := n.f.acquire(fd, st)
	if err != nil {
		return nil, errno(err)
	}
	n.f.addLink(m, n.m, name)
	fillAttr(&out.Attr, st)
	out.Attr.Ino = m.ino
	return n.NewInode(ctx, n.f.newNode(m), gofs.StableAttr{Mode: m.mode, Ino: m.ino, Gen: m.gen}), 0
}

// openChild opens name in n as O_PATH and stats it.
func (n *node) openChild(name string, st *unix.Stat_t) (int, error) {
	fd, err := retryNofile(func() (int, error) {
		return unix.Openat(n.m.fd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	})
	if err != nil {
		return -1, err
	}
	if err := unix.Fstat(fd, st); err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// Lookup takes no namespace lock (lookups go on during a Freeze): the name
// it records refers to the parent's meta, not to a path, so a concurrent
// rename of an ancestor cannot make it stale; the kernel keeps renames in
// this directory out while it looks up.
func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	var st unix.Stat_t
	fd, err := n.openChild(name, &st)
	if err != nil {
		return nil, errno(err)
	}
	return n.child(ctx, fd, &st, name, out)
}

func (n *node) Getattr(ctx context.Context, fh gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	fd := n.m.fd
	if h, ok := fh.(*handle); ok {
		fd = h.fd
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return errno(err)
	}
	fillAttr(&out.Attr, &st)
	return 0
}

func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	var s syscall.Statfs_t
	if err := syscall.Fstatfs(n.f.root.fd, &s); err != nil {
		return errno(err)
	}
	out.FromStatfsT(&s)
	return 0
}

func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		sz, err := unix.Readlinkat(n.m.fd, "", buf)
		if err != nil {
			return nil, errno(err)
		}
		if sz < len(buf) {
			return buf[:sz], 0
		}
		if size > 1<<20 {
			return nil, syscall.ENAMETOOLONG
		}
	}
}
