package fs

import (
	"fmt"
	"log/slog"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tandem-ha/tandem/internal/replica/op"
)

// fsys is the state of one mount.
type fsys struct {
	rep     Replicator
	changes Changes     // nil: no change records
	fenced  atomic.Bool // unmounting: every change is refused (EROFS)
	sync    SyncMode
	direct  bool // write-only and O_DSYNC handles are FOPEN_DIRECT_IO (direct.go)
	log     *slog.Logger

	root    *meta
	rootDev uint64

	// ns orders namespace ops (exclusive) against data and attribute ops
	// (shared), so that the path an op carries is the one its local apply
	// used, and ops reach the Replicator in the local order.
	ns sync.RWMutex
	// gen changes when a directory loses or changes its name: every cached
	// path below it is stale. ngen changes with every name change; it
	// validates paths found by searchName. Changed under ns held
	// exclusively (or, for changes made behind the mount's back, shared).
	gen, ngen atomic.Uint64

	// mu guards the registry, every meta's refs, links and kids.
	mu      sync.Mutex
	metas   map[devIno]*meta
	nextGen uint64
	closed  bool

	gcKick  chan struct{}
	lastErr atomic.Int64 // unix nanos of the last logged Wait error
}

type devIno struct{ dev, ino uint64 }

// meta is one real inode known to the mount. It lives while a go-fuse node
// for it is reachable or it has known children, and holds an O_PATH fd.
type meta struct {
	key  devIno
	ino  uint64 // inode number shown to the kernel
	gen  uint64 // distinguishes successive metas of one inode number
	mode uint32 // file type bits
	fd   int    // O_PATH|O_NOFOLLOW (the root: O_RDONLY|O_DIRECTORY)

	// Guarded by fsys.mu.
	refs  int
	links []link           // names it is known by (directories: at most one)
	kids  map[string]*meta // directories: known children by name

	pcache atomic.Pointer[pathCache]

	// dataMu orders data and attribute changes of this inode with their
	// Submit. Taken after fsys.ns, before fsys.mu.
	dataMu sync.Mutex
	// lastSeq is the sequence number of the last op submitted for it.
	lastSeq atomic.Uint64
	// mtimeDirty: data changed since the mtime was last sent.
	mtimeDirty atomic.Bool
	warned     atomic.Bool // "no name" logged
	noCaps     atomic.Bool // security.capability known absent
	// size is the file's size after the last write through the mount, or
	// at lookup: a write or fallocate starting past it checks for a hole
	// it would leave (recordFrom). A shrink since is recorded by its own
	// truncate, so a stale, larger value hides no unrecorded hole.
	size atomic.Int64
}

type link struct {
	parent *meta
	name   string
}

type pathCache struct {
	gen, ngen uint64
	path      string
	ok        bool
	searched  bool // found by searchName: valid until any name changes
}

// hasLinks reports whether the inode still has a name somewhere.
func (m *meta) hasLinks() bool {
	var st unix.Stat_t
	return unix.Fstat(m.fd, &st) == nil && st.Nlink > 0
}

func (m *meta) isDir() bool     { return m.mode == unix.S_IFDIR }
func (m *meta) isSymlink() bool { return m.mode == unix.S_IFLNK }

// procPath names the inode through its O_PATH fd; following it reaches the
// inode itself whatever its names are.
func procPath(fd int) string { return "/proc/self/fd/" + strconv.Itoa(fd) }

func newFsys(rootFd int, opts Options, logger *slog.Logger) (*fsys, error) {
	var st unix.Stat_t
	if err := unix.Fstat(rootFd, &st); err != nil {
		return nil, fmt.Errorf("stat: %w", err)
	}
	f := &fsys{
		rep:     opts.Replicator,
		changes: opts.Changes,
		sync:    opts.Sync,
		direct:  !opts.writeback,
		log:     logger,
		rootDev: st.Dev,
		metas:   make(map[devIno]*meta),
		gcKick:  make(chan struct{}, 1),
	}
	if f.rep == nil {
		f.rep = nopReplicator{}
	}
	f.nextGen = 1
	root := &meta{key: devIno{st.Dev, st.Ino}, ino: f.inoOf(&st), gen: f.nextGen, mode: st.Mode & unix.S_IFMT, fd: rootFd, refs: 1}
	f.nextGen++
	f.metas[root.key] = root
	f.root = root
	go f.gcLoop()
	return f, nil
}

type nopReplicator struct{}

func (nopReplicator) Submit(*op.Op) uint64    { return 0 }
func (nopReplicator) Wait(uint64, bool) error { return nil }
func (f *fsys) inoOf(st *unix.Stat_t) uint64 {
	// As go-fuse's loopback: the real inode number on the root's device,
	// mixed with the device number elsewhere.
	swapped := (st.Dev << 32) | (st.Dev >> 32)
	rootSwapped := (f.rootDev << 32) | (f.rootDev >> 32)
	return (swapped ^ rootSwapped) ^ st.Ino
}

// acquire returns the meta of the inode open at fd (O_PATH) with one more
// reference; it takes ownership of fd (closing it when the inode is known).
func (f *fsys) acquire(fd int, st *unix.Stat_t) (*meta, error) {
	key := devIno{st.Dev, st.Ino}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		unix.Close(fd)
		return nil, unix.ENOTCONN
	}
	if m := f.knownLocked(st); m != nil {
		unix.Close(fd)
		return m, nil
	}
	m := &meta{key: key, ino: f.inoOf(st), gen: f.nextGen, mode: st.Mode & unix.S_IFMT, fd: fd, refs: 1}
	m.size.Store(st.Size)
	f.nextGen++
	f.metas[key] = m
	return m, nil
}

// acquireKnown is acquire for an inode the mount knows already (no
// descriptor to open): its meta with one more reference, or nil.
func (f *fsys) acquireKnown(st *unix.Stat_t) *meta {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil
	}
	return f.knownLocked(st)
}

// knownLocked is the registered meta of the inode st describes with one
// more reference, or nil. The caller's descriptor of the inode pins it, so
// its number cannot have been reused by another. f.mu held.
func (f *fsys) knownLocked(st *unix.Stat_t) *meta {
	key := devIno{st.Dev, st.Ino}
	m := f.metas[key]
	if m != nil && m.mode == st.Mode&unix.S_IFMT {
		m.refs++
		return m
	}
	if m != nil {
		// Cannot happen while m holds its fd; be safe: forget it.
		delete(f.metas, key)
	}
	return nil
}

// release drops one reference (a node became unreachable, or a handler's
// temporary reference).
func (f *fsys) release(m *meta) {
	f.mu.Lock()
	f.releaseLocked(m)
	f.mu.Unlock()
}

func (f *fsys) releaseLocked(m *meta) {
	for m != nil {
		m.refs--
		if m.refs > 0 || m == f.root {
			return
		}
		var next *meta
		for _, l := range m.links {
			if l.parent.kids[l.name] == m {
				delete(l.parent.kids, l.name)
			}
			if next == nil {
				next = l.parent
			} else {
				f.releaseLocked(l.parent)
			}
		}
		m.links = nil
		if f.metas[m.key] == m {
			delete(f.metas, m.key)
		}
		if !f.closed && m.fd >= 0 {
			unix.Close(m.fd)
		}
		m.fd = -1
		m = next
	}
}

// addLink records that m is named name in parent. It replaces what the
// registry thought was there (someone changed the directory behind us).
// A kids entry holds a reference on the parent, not on the child: a child
// removes itself from its parents when it is freed.
func (f *fsys) addLink(m, parent *meta, name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	old := parent.kids[name]
	if old == m {
		return
	}
	parent.refs++ // hold it across the removals below
	if old != nil {
		f.removeLinkLocked(parent, name)
	}
	if m.isDir() && len(m.links) > 0 {
		// A directory has one name; the old one is stale.
		l := m.links[0]
		f.removeLinkLocked(l.parent, l.name)
	}
	f.putLinkLocked(m, parent, name)
	f.releaseLocked(parent)
}

func (f *fsys) putLinkLocked(m, parent *meta, name string) {
	if parent.kids == nil {
		parent.kids = make(map[string]*meta)
	}
	parent.kids[name] = m
	m.links = append(m.links, link{parent, name})
	parent.refs++
	m.pcache.Store(nil)
	f.ngen.Add(1)
}

// removeLink forgets the name name in parent (unlinked, or replaced by a
// rename).
func (f *fsys) removeLink(parent *meta, name string) {
	f.mu.Lock()
	f.removeLinkLocked(parent, name)
	f.mu.Unlock()
}

func (f *fsys) removeLinkLocked(parent *meta, name string) {
	m := parent.kids[name]
	if m == nil {
		return
	}
	delete(parent.kids, name)
	for i, l := range m.links {
		if l.parent == parent && l.name == name {
			m.links = append(m.links[:i], m.links[i+1:]...)
			break
		}
	}
	m.pcache.Store(nil)
	f.ngen.Add(1)
	if m.isDir() {
		f.gen.Add(1) // the paths of everything below changed too
	}
	f.releaseLocked(parent)
}

// moveLink renames the entry (op, on) to (np, nn), replacing what was there.
func (f *fsys) moveLink(op *meta, on string, np *meta, nn string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	m, victim := op.kids[on], np.kids[nn]
	if m != nil && m == victim {
		return // two links of one inode: rename(2) does nothing
	}
	op.refs++
	np.refs++
	f.removeLinkLocked(np, nn)
	if m != nil {
		f.removeLinkLocked(op, on)
		f.putLinkLocked(m, np, nn)
	}
	f.releaseLocked(op)
	f.releaseLocked(np)
}

// exchangeLinks swaps the entries (p1, n1) and (p2, n2).
func (f *fsys) exchangeLinks(p1 *meta, n1 string, p2 *meta, n2 string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	a, b := p1.kids[n1], p2.kids[n2]
	if a == b {
		return
	}
	p1.refs++
	p2.refs++
	f.removeLinkLocked(p1, n1)
	f.removeLinkLocked(p2, n2)
	if a != nil {
		f.putLinkLocked(a, p2, n2)
	}
	if b != nil {
		f.putLinkLocked(b, p1, n1)
	}
	f.releaseLocked(p1)
	f.releaseLocked(p2)
}

// pathOf returns m's path relative to the root, and false when m has no name
// any more (deleted while open). The caller holds f.ns (either way), which
// keeps every name stable.
func (f *fsys) pathOf(m *meta) (string, bool) {
	g, ng := f.gen.Load(), f.ngen.Load()
	if c := m.pcache.Load(); c != nil && c.gen == g && (!c.searched || c.ngen == ng) {
		return c.path, c.ok
	}
	f.mu.Lock()
	p, ok := f.buildPathLocked(m)
	f.mu.Unlock()
	searched := false
	if !ok && !m.isDir() {
		// A hard link we never looked up may still name it.
		p, ok = f.searchName(m)
		searched = true
		if !ok && m.hasLinks() && !m.warned.Swap(true) {
			f.log.Error("file has no name inside the replicated directory (hard link from outside?): its changes are not replicated", "ino", m.key.ino)
		}
	}
	m.pcache.Store(&pathCache{gen: g, ngen: ng, path: p, ok: ok, searched: searched})
	return p, ok
}

func (f *fsys) buildPathLocked(m *meta) (string, bool) {
	if m == f.root {
		return "", true
	}
	var names []string
	n := 0
	for p := m; p != f.root; {
		if len(p.links) == 0 {
			return "", false
		}
		l := p.links[0]
		names = append(names, l.name)
		n += len(l.name) + 1
		p = l.parent
		if len(names) > 1<<16 {
			return "", false // a cycle would be a bug; do not spin
		}
	}
	var b strings.Builder
	b.Grow(n)
	for i := len(names) - 1; i >= 0; i-- {
		b.WriteString(names[i])
		if i > 0 {
			b.WriteByte('/')
		}
	}
	return b.String(), true
}

// childPath joins a parent path and a name.
func childPath(parent, name string) string {
	if parent == "" {
		return name
	}
	return parent + "/" + name
}

// searchName looks for a name of m in the real tree (rare: a file whose only
// known name was unlinked while another, never looked up, remains).
func (f *fsys) searchName(m *meta) (string, bool) {
	var st unix.Stat_t
	if err := unix.Fstat(m.fd, &st); err != nil || st.Nlink == 0 {
		return "", false
	}
	type dir struct {
		fd   int
		path string
	}
	rfd, err := unix.Openat(f.root.fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", false
	}
	queue := []dir{{rfd, ""}}
	defer func() {
		for _, d := range queue {
			unix.Close(d.fd)
		}
	}()
	buf := make([]byte, 32<<10)
	for len(queue) > 0 {
		d := queue[0]
		queue = queue[1:]
		found, foundOK := "", false
		for !foundOK {
			n, err := unix.Getdents(d.fd, buf)
			if err != nil || n <= 0 {
				break
			}
			for off := 0; off < n; {
				reclen := int(buf[off+16]) | int(buf[off+17])<<8
				ino := leUint64(buf[off:])
				typ := buf[off+18]
				nameB := buf[off+19 : off+reclen]
				if i := indexByte(nameB, 0); i >= 0 {
					nameB = nameB[:i]
				}
				name := string(nameB)
				off += reclen
				if name == "." || name == ".." {
					continue
				}
				if ino == st.Ino && typ != unix.DT_DIR {
					var cst unix.Stat_t
					if unix.Fstatat(d.fd, name, &cst, unix.AT_SYMLINK_NOFOLLOW) == nil && cst.Dev == st.Dev && cst.Ino == st.Ino {
						found, foundOK = childPath(d.path, name), true
						break
					}
				}
				if typ == unix.DT_DIR {
					if cfd, err := unix.Openat(d.fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0); err == nil {
						queue = append(queue, dir{cfd, childPath(d.path, name)})
					}
				}
			}
		}
		unix.Close(d.fd)
		if foundOK {
			return found, true
		}
	}
	return "", false
}

func leUint64(b []byte) uint64 {
	return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
		uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}

// close drops every fd once the server stopped.
func (f *fsys) close() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return
	}
	f.closed = true
	// Nothing uses a meta fd any more; the fields stay as they are (cleanups
	// that run later see f.closed and close nothing).
	for _, m := range f.metas {
		if m.fd >= 0 {
			unix.Close(m.fd)
		}
	}
	f.metas = nil
	close(f.gcKick)
}

// kickGC asks for a garbage collection soon: forgotten nodes release their
// inode (and, for deleted files, the disk space) when collected.
func (f *fsys) kickGC() {
	defer func() { _ = recover() }() // gcKick closed at shutdown
	select {
	case f.gcKick <- struct{}{}:
	default:
	}
}

func (f *fsys) gcLoop() {
	for range f.gcKick {
		time.Sleep(20 * time.Millisecond) // batch a burst of forgets
		runtime.GC()
		time.Sleep(200 * time.Millisecond) // at most a few per second
	}
}

// submit hands o to the Replicator and records its seq on m.
func (f *fsys) submit(m *meta, o *op.Op) uint64 {
	seq := f.rep.Submit(o)
	if m != nil && seq > m.lastSeq.Load() {
		m.lastSeq.Store(seq)
	}
	return seq
}

// wait waits for the peer. The Replicator decides what a peer failure
// means: nil while this node goes on alone (the data is safe here), an
// error when this node is leaving the serving role and the peer that takes
// over may lack the data: the application then gets EIO, never a false
// acknowledgement.
func (f *fsys) wait(seq uint64, durable bool, what string) syscall.Errno {
	// Even seq 0 (nothing sent: no peer attached) goes to the Replicator:
	// only it knows whether this node still serves or is leaving.
	err := f.rep.Wait(seq, durable)
	if err == nil {
		return 0
	}
	now := time.Now().UnixNano()
	if last := f.lastErr.Load(); now-last > int64(time.Second) && f.lastErr.CompareAndSwap(last, now) {
		f.log.Warn("replica wait failed: the application gets EIO", "op", what, "seq", seq, "durable", durable, "err", err)
	}
	return syscall.EIO
}
