package compare

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	"github.com/tandem-ha/tandem/internal/replica/apply"
	"github.com/tandem-ha/tandem/internal/replica/op"
	"github.com/tandem-ha/tandem/internal/replica/sumcache"
	"github.com/zeebo/xxh3"
	"golang.org/x/sys/unix"
)

// Answer answers query q (an op.Query) from the copy below rootFd, a
// directory descriptor (O_PATH is enough) the caller keeps open. It is
// safe to call from several goroutines at once and while ops are being
// applied: the answer then mixes states from between the query and the
// reply, which the engine's compare tolerates (see the package comment).
//
// It reads only: paths resolve beneath rootFd without following any
// symlink, files are opened with O_NOATIME where allowed, and only
// regular files are ever opened for reading (a device node is not). A
// missing entry is an answer, not an error. QuerySkipped needs the state
// of an Answerer.
func Answer(rootFd int, q *op.Op) ([]byte, error) { return answer(rootFd, nil, q) }

// answer is Answer with the hashes of unchanged files taken from sums
// (nil: read).
func answer(rootFd int, sums *sumcache.Cache, q *op.Op) ([]byte, error) {
	if q.Kind != op.Query {
		return nil, fmt.Errorf("compare: answer a %s op: not a query", q.Kind)
	}
	if err := q.Validate(); err != nil {
		return nil, fmt.Errorf("compare: %w", err)
	}
	var b []byte
	var err error
	switch q.Flags {
	case op.QueryListDir:
		b, err = answerList(rootFd, sums, q)
	case op.QueryHashBlocks:
		b, err = answerHash(rootFd, q)
	case op.QueryXattrs:
		b, err = answerXattrs(rootFd, q)
	case op.QueryFindInode:
		b, err = answerFindInode(rootFd, q)
	case op.QueryHashBatch:
		b, err = answerHashBatch(rootFd, q)
	default:
		return nil, fmt.Errorf("compare: %s: not answered here (QuerySkipped needs an Answerer)", q)
	}
	if err != nil {
		return nil, fmt.Errorf("compare: %s: %w", q, err)
	}
	return b, nil
}

// openNoatime opens p beneath root, with O_NOATIME where the kernel
// allows it (owner or CAP_FOWNER).
func openNoatime(root int, p string, flags uint64) (int, error) {
	fd, err := apply.OpenBeneath(root, p, flags|unix.O_NOATIME, 0)
	if err == unix.EPERM {
		fd, err = apply.OpenBeneath(root, p, flags, 0)
	}
	return fd, err
}

// openatNoatime is openNoatime for one name inside directory dfd.
func openatNoatime(dfd int, name string, flags int) (int, error) {
	for {
		fd, err := unix.Openat(dfd, name, flags|unix.O_NOATIME|unix.O_CLOEXEC, 0)
		if err == unix.EPERM {
			fd, err = unix.Openat(dfd, name, flags|unix.O_CLOEXEC, 0)
		}
		if err == unix.EINTR {
			continue
		}
		return fd, err
	}
}

func fillEntry(e *Entry, st *unix.Stat_t) {
	e.Mode = st.Mode
	e.Uid, e.Gid = st.Uid, st.Gid
	e.Size = st.Size
	e.Mtime = op.Time{Sec: st.Mtim.Sec, Nsec: st.Mtim.Nsec}
	e.Nlink = uint64(st.Nlink)
	e.Ino = st.Ino
	e.Rdev = st.Rdev
}

// readTarget reads the symlink name inside dfd.
func readTarget(dfd int, name string) (string, error) {
	buf := make([]byte, 256)
	for {
		n, err := unix.Readlinkat(dfd, name, buf)
		if err != nil {
			return "", err
		}
		if n < len(buf) {
			return string(buf[:n]), nil
		}
		if len(buf) > unix.PathMax {
			return "", fmt.Errorf("symlink %q: target longer than %d bytes", name, unix.PathMax)
		}
		buf = make([]byte, 2*len(buf))
	}
}

func answerList(root int, sums *sumcache.Cache, q *op.Op) ([]byte, error) {
	p, err := parseListParams(q.Data)
	if err != nil {
		return nil, err
	}
	if p.Only != "" && (strings.ContainsRune(p.Only, '/') || p.Only == "." || p.Only == ".." || strings.IndexByte(p.Only, 0) >= 0) {
		return nil, fmt.Errorf("listdir: bad entry name %q", p.Only)
	}
	fd, err := openNoatime(root, q.Path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW)
	switch err {
	case nil:
	case unix.ENOENT:
		return appendListAnswer(nil, &ListAnswer{Status: statusMissing}), nil
	case unix.ENOTDIR, unix.ELOOP:
		return appendListAnswer(nil, &ListAnswer{Status: statusOther}), nil
	default:
		return nil, fmt.Errorf("open directory: %w", err)
	}
	f := os.NewFile(uintptr(fd), q.Path)
	defer f.Close()
	if testHookListOpened != nil {
		testHookListOpened(q.Path)
	}
	a := &ListAnswer{Status: statusOK}
	sums = sums.For(fd) // nil on a filesystem whose ctimes cannot be trusted
	// Before every stat of the listing: what is read after a stat is
	// recorded for the stat's ctime only if that lies well before.
	ls := lister{sums: sums, before: sumcache.Now()}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("stat directory: %w", err)
	}
	fillEntry(&a.Self, &st)
	if a.Self.Xattrs, err = xattrDigest(fd, ""); err != nil {
		return nil, fmt.Errorf("read the directory's attributes: %w", err)
	}
	var names []string
	if p.Only != "" {
		names = []string{p.Only}
	} else {
		names, err = f.Readdirnames(-1)
		if errors.Is(err, unix.ENOENT) {
			// Removed since it was opened (a live op): as if the open
			// had come after; the primary asks again or compares it in
			// its parent.
			return appendListAnswer(nil, &ListAnswer{Status: statusMissing}), nil
		}
		if err != nil {
			return nil, fmt.Errorf("read directory: %w", err)
		}
		sort.Strings(names)
		names = names[sort.SearchStrings(names, p.After):]
		if len(names) > 0 && names[0] == p.After {
			names = names[1:]
		}
	}
	size := 0
	var h hasher
	// Small regular files are read in batches (batchReader) while the
	// next entries are stat'ed; tag is each one's entry.
	later := uringOn()
	br := batchReader{before: testHookBeforeBatch}
	for i, name := range names {
		if len(a.Entries) >= p.PageMax || size >= maxPageBytes {
			a.More = i < len(names)
			break
		}
		e := Entry{Name: name}
		ok, sf, err := ls.statEntry(fd, name, &e, p.InlineMax, &h, later)
		if err != nil {
			br.wait()
			return nil, err
		}
		if !ok {
			continue // vanished since the listing
		}
		if sf.name != "" {
			sf.tag = len(a.Entries)
			br.add(sf)
		}
		a.Entries = append(a.Entries, e)
		size += 64 + len(name) + len(e.Target)
	}
	gone := false
	for _, batch := range br.wait() {
		for _, f := range batch {
			e := &a.Entries[f.tag]
			if f.ok {
				e.Hash, e.HasHash = f.sum, true
				sums.PutSum(f.stamp, ls.before, f.sum)
				continue
			}
			// Changed, replaced or removed since its stat, or no
			// io_uring: described again, one by one.
			*e = Entry{Name: e.Name}
			ok, _, err := ls.statEntry(fd, e.Name, e, p.InlineMax, &h, false)
			if err != nil {
				return nil, err
			}
			if !ok {
				e.Name, gone = "", true
			}
		}
	}
	if gone {
		a.Entries = slices.DeleteFunc(a.Entries, func(e Entry) bool { return e.Name == "" })
	}
	return appendListAnswer(make([]byte, 0, size+128), a), nil
}

// testHookListOpened, if set, runs when a listing has opened its
// directory, before it reads it.
var testHookListOpened func(path string)

// testHookBeforeBatch, if set, runs before a listing sends a batch of
// small files to read, between their stats and their reads.
var testHookBeforeBatch func()

// lister is one listing's use of the hashes of unchanged files.
type lister struct {
	sums   *sumcache.Cache // nil: none
	before int64           // sumcache.Now() before the listing's first stat
}

// known is what the cache knew of an entry at its first stat.
type known struct {
	stamp sumcache.Stamp
	sumcache.Known
}

// xattrs is the attribute digest of the entry name inside dfd (name "":
// dfd itself), whose stat st was: remembered (k, if st is still the state
// k was looked up for), or read and remembered.
func (l *lister) xattrs(dfd int, name string, st *unix.Stat_t, k known) (uint64, error) {
	s := sumcache.StampOf(st)
	if k.HasXattrs && s == k.stamp {
		return k.Xattrs, nil
	}
	d, err := xattrDigest(dfd, name)
	if err == nil {
		l.sums.PutXattrs(s, l.before, d)
	}
	return d, err
}

// statEntry fills e for name inside dfd: attributes, xattr digest, symlink
// target, and the content hash of a regular file up to inline bytes.
// False when the entry vanished meanwhile. With later, a small regular
// file is not read: sf names it (its expected size, its inode) for the
// caller to read in a batch; else sf.name is "". A file unchanged since a
// listing read it is not read again (l.sums).
func (l *lister) statEntry(dfd int, name string, e *Entry, inline int64, h *hasher, later bool) (ok bool, sf smallFile, err error) {
	var st unix.Stat_t
	if err := unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if err == unix.ENOENT {
			return false, sf, nil
		}
		return false, sf, fmt.Errorf("stat %q: %w", name, err)
	}
	fillEntry(e, &st)
	small := st.Mode&unix.S_IFMT == unix.S_IFREG && st.Size <= inline
	k := known{stamp: sumcache.StampOf(&st)}
	k.Known = l.sums.Get(k.stamp, small)
	if k.HasSum && k.HasXattrs {
		e.Xattrs, e.Hash, e.HasHash = k.Xattrs, k.Sum, true
		return true, sf, nil
	}
	if later && small {
		if e.Xattrs, err = l.xattrs(dfd, name, &st, k); err != nil {
			if err == unix.ENOENT {
				return false, sf, nil
			}
			return false, sf, fmt.Errorf("read the attributes of %q: %w", name, err)
		}
		return true, smallFile{dfd: dfd, name: name, ino: st.Ino, size: st.Size, stamp: k.stamp}, nil
	}
	if st.Mode&unix.S_IFMT == unix.S_IFREG && st.Size <= inline {
		// O_NONBLOCK: should a fifo have replaced the file, the open does
		// not hang (and the fstat refuses it).
		ffd, err := openatNoatime(dfd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK)
		if err == unix.ENOENT {
			return false, sf, nil
		}
		if err != nil {
			return false, sf, fmt.Errorf("open %q: %w", name, err)
		}
		defer unix.Close(ffd)
		if err := unix.Fstat(ffd, &st); err != nil {
			return false, sf, fmt.Errorf("stat %q: %w", name, err)
		}
		if st.Mode&unix.S_IFMT == unix.S_IFREG {
			// The attributes of what was opened: the descriptor's call
			// is cheaper than one by name.
			fillEntry(e, &st)
			if e.Xattrs, err = l.xattrs(ffd, "", &st, k); err != nil {
				return false, sf, fmt.Errorf("read the attributes of %q: %w", name, err)
			}
			if st.Size > inline {
				return true, sf, nil
			}
			if err := hashOpen(ffd, e, inline, h); err != nil {
				return false, sf, err
			}
			if e.HasHash && e.Size == st.Size {
				l.sums.PutSum(sumcache.StampOf(&st), l.before, e.Hash)
			}
			return true, sf, nil
		}
		// Replaced meanwhile by another type: described by name below.
		if err := unix.Fstatat(dfd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if err == unix.ENOENT {
				return false, sf, nil
			}
			return false, sf, fmt.Errorf("stat %q: %w", name, err)
		}
		fillEntry(e, &st)
	}
	if e.Xattrs, err = l.xattrs(dfd, name, &st, k); err != nil {
		if err == unix.ENOENT {
			return false, sf, nil
		}
		return false, sf, fmt.Errorf("read the attributes of %q: %w", name, err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		t, err := readTarget(dfd, name)
		if err == unix.ENOENT || err == unix.EINVAL {
			// Gone, or no longer a symlink (EINVAL: replaced by a live op
			// since the stat): as gone. The op that did it comes after
			// the query, so the primary finds this answer stale.
			return false, sf, nil
		}
		if err != nil {
			return false, sf, fmt.Errorf("read symlink %q: %w", name, err)
		}
		e.Target, e.hasTarget = t, true
	}
	return true, sf, nil
}

// hashOpen hashes the small regular file open as ffd (its entry e) whole.
func hashOpen(ffd int, e *Entry, inline int64, h *hasher) error {
	sum, n, err := h.whole(ffd, inline)
	if err != nil {
		return fmt.Errorf("read %q: %w", e.Name, err)
	}
	if n <= inline {
		// The hash covers exactly n bytes: report that size, so the
		// compare sees a difference if the file changed meanwhile.
		e.Size, e.Hash, e.HasHash = n, sum, true
	}
	return nil
}

// openRegular opens p beneath root for reading if it is a regular file:
// non-regular entries are only looked at (O_PATH), never opened, so a
// device node's driver is not called. st describes what p is.
func openRegular(root int, p string, st *unix.Stat_t) (fd int, regular bool, err error) {
	pfd, err := apply.OpenBeneath(root, p, unix.O_PATH|unix.O_NOFOLLOW, 0)
	if err != nil {
		return -1, false, err
	}
	defer unix.Close(pfd)
	if err := unix.Fstat(pfd, st); err != nil {
		return -1, false, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return -1, false, nil
	}
	// Reopen the same inode (the O_PATH descriptor pins it) for reading.
	proc := "/proc/self/fd/" + strconv.Itoa(pfd)
	fd, err = unix.Open(proc, unix.O_RDONLY|unix.O_NOATIME|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err == unix.EPERM {
		fd, err = unix.Open(proc, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	}
	if err != nil {
		return -1, false, err
	}
	if err := unix.Fstat(fd, st); err != nil {
		unix.Close(fd)
		return -1, false, err
	}
	return fd, true, nil
}

func answerHash(root int, q *op.Op) ([]byte, error) {
	r := reader{b: q.Data}
	bs := r.uvarint()
	cut := int64(r.uvarint())
	if r.err != nil || len(r.b) != 0 || cut < 0 {
		return nil, errors.New("hashblocks: bad parameters")
	}
	if bs < minBlockSize || bs > maxBlockSize {
		return nil, fmt.Errorf("hashblocks: block size must be %d..%d bytes", minBlockSize, maxBlockSize)
	}
	if q.Len/int64(bs) >= maxHashBlocks {
		return nil, fmt.Errorf("hashblocks: %d bytes is more than %d blocks of %d", q.Len, maxHashBlocks, bs)
	}
	if q.Path == "" {
		return appendHashAnswer(nil, &HashAnswer{Status: statusOther, File: Entry{Mode: unix.S_IFDIR}}), nil
	}
	var st unix.Stat_t
	fd, regular, err := openRegular(root, q.Path, &st)
	switch {
	case err == unix.ENOENT || err == unix.ENOTDIR || err == unix.ELOOP:
		// ELOOP: a symlink among the parents, so the path names nothing
		// here (the last component, a symlink, is opened with O_PATH).
		return appendHashAnswer(nil, &HashAnswer{Status: statusMissing}), nil
	case err != nil:
		return nil, fmt.Errorf("open: %w", err)
	}
	a := &HashAnswer{Status: statusOK}
	fillEntry(&a.File, &st)
	if !regular {
		a.Status = statusOther
		return appendHashAnswer(nil, a), nil
	}
	defer unix.Close(fd)
	if a.File.Xattrs, err = xattrDigest(fd, ""); err != nil {
		return nil, fmt.Errorf("read attributes: %w", err)
	}
	end := min(q.Off+q.Len, st.Size)
	if cut > 0 {
		end = min(end, cut) // the primary's size: its last block is that short
	}
	if end > q.Off {
		var h hasher
		a.Hashes = make([]uint64, 0, (end-q.Off+int64(bs)-1)/int64(bs))
		if err := h.blocks(fd, q.Off, end, int64(bs), func(_ int64, sum uint64, _ bool) { a.Hashes = append(a.Hashes, sum) }); err != nil {
			return nil, fmt.Errorf("read: %w", err)
		}
	}
	return appendHashAnswer(nil, a), nil
}

func answerXattrs(root int, q *op.Op) ([]byte, error) {
	fd, err := apply.OpenBeneath(root, q.Path, unix.O_PATH|unix.O_NOFOLLOW, 0)
	if err == unix.ENOENT || err == unix.ENOTDIR || err == unix.ELOOP {
		return []byte{statusMissing}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open: %w", err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, err
	}
	var list []op.Xattr
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		// The O_PATH descriptor of a symlink: its /proc link must not be
		// followed, and the l* calls on it read the link's own attributes.
		list, err = readXattrsNoFollow("/proc/self/fd/" + strconv.Itoa(fd))
	} else {
		list, err = readXattrs(fd, "")
	}
	if err != nil {
		return nil, fmt.Errorf("read attributes: %w", err)
	}
	b := op.AppendXattrs([]byte{statusOK}, list)
	if len(b) > maxXattrsAnswer {
		return nil, fmt.Errorf("%d bytes of attributes, more than an answer carries (%d)", len(b), maxXattrsAnswer)
	}
	return b, nil
}

// answerFindInode walks the copy (names and stats only, not crossing
// into another filesystem) for the non-directory names of one inode.
func answerFindInode(root int, q *op.Op) ([]byte, error) {
	ino, n := binary.Uvarint(q.Data)
	if n <= 0 || n != len(q.Data) {
		return nil, errors.New("findinode: bad parameters")
	}
	fd, err := openNoatime(root, "", unix.O_RDONLY|unix.O_DIRECTORY)
	if err != nil {
		return nil, fmt.Errorf("open the replicated directory: %w", err)
	}
	var rst unix.Stat_t
	if err := unix.Fstat(fd, &rst); err != nil {
		unix.Close(fd)
		return nil, err
	}
	var paths []string
	more := false
	var walk func(fd int, dir string) error
	walk = func(fd int, dir string) error {
		f := os.NewFile(uintptr(fd), dir)
		defer f.Close()
		names, err := f.Readdirnames(-1)
		if err != nil {
			if errors.Is(err, unix.ENOENT) {
				return nil
			}
			return fmt.Errorf("read directory %q: %w", dir, err)
		}
		slices.Sort(names)
		for _, name := range names {
			var st unix.Stat_t
			if unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW) != nil || st.Dev != rst.Dev {
				continue
			}
			p := name
			if dir != "" {
				p = dir + "/" + name
			}
			if st.Mode&unix.S_IFMT != unix.S_IFDIR {
				if st.Ino == ino {
					if len(paths) >= maxFound {
						more = true
						return nil
					}
					paths = append(paths, p)
				}
				continue
			}
			cfd, err := openatNoatime(fd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW)
			if err != nil {
				continue // vanished or replaced meanwhile
			}
			if err := walk(cfd, p); err != nil {
				return err
			}
		}
		return nil
	}
	if err := walk(fd, ""); err != nil {
		return nil, err
	}
	return appendPaths(nil, paths, more), nil
}

// readXattrsNoFollow reads the attributes of path itself (l* calls).
func readXattrsNoFollow(p string) ([]op.Xattr, error) {
	dir, name := p[:strings.LastIndexByte(p, '/')], p[strings.LastIndexByte(p, '/')+1:]
	dfd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(dfd)
	return readXattrs(dfd, name)
}

// hasher hashes file data with xxh3.
type hasher struct {
	buf []byte
}

var zeroHashes sync.Map // block length -> xxh3 of that many zero bytes

func zeroHash(n int64) uint64 {
	if v, ok := zeroHashes.Load(n); ok {
		return v.(uint64)
	}
	h := xxh3.Hash(make([]byte, n))
	zeroHashes.Store(n, h)
	return h
}

// whole hashes the file open as fd from offset 0, reading at most max+1
// bytes: n > max means the file is longer than max (no hash).
func (h *hasher) whole(fd int, max int64) (sum uint64, n int64, err error) {
	if int64(cap(h.buf)) < max+1 {
		h.buf = make([]byte, max+1)
	}
	b := h.buf[:max+1]
	k, err := preadFull(fd, b, 0)
	if err != nil {
		return 0, 0, err
	}
	return xxh3.Hash(b[:k]), int64(k), nil
}

// blocks hashes [off, end) of fd in blocks of bs bytes (the last one
// shorter), calling emit with each block's offset, hash and whether it
// lies wholly in a hole (hashed as zeros without reading). A block the
// file no longer covers (it shrank meanwhile) hashes what could be read.
func (h *hasher) blocks(fd int, off, end, bs int64, emit func(blockOff int64, sum uint64, hole bool)) error {
	if int64(cap(h.buf)) < bs {
		h.buf = make([]byte, bs)
	}
	var seg dataSegments
	seg.init(fd)
	for b := off; b < end; b += bs {
		e := min(b+bs, end)
		hole, err := seg.hole(b, e)
		if err != nil {
			return err
		}
		if hole {
			emit(b, zeroHash(e-b), true)
			continue
		}
		n, err := preadFull(fd, h.buf[:e-b], b)
		if err != nil {
			return fmt.Errorf("at offset %d: %w", b, err)
		}
		emit(b, xxh3.Hash(h.buf[:n]), false)
	}
	return nil
}

// dataSegments answers "is [a, b) wholly inside a hole?" for increasing
// ranges with SEEK_DATA/SEEK_HOLE.
type dataSegments struct {
	fd     int
	seek   func(fd int, off int64, whence int) (int64, error)
	ds, de int64 // the data segment at or after the last position asked
	valid  bool
	noSeek bool // filesystem without SEEK_DATA: all data
}

func (s *dataSegments) init(fd int) { *s = dataSegments{fd: fd, seek: unix.Seek} }

const inf = int64(1<<63 - 1)

func (s *dataSegments) hole(a, b int64) (bool, error) {
	if s.noSeek {
		return false, nil
	}
	if !s.valid || s.de <= a {
		ds, err := s.seek(s.fd, a, unix.SEEK_DATA)
		switch {
		case err == unix.ENXIO:
			s.ds, s.de = inf, inf // only a hole (or the end) from a on
		case err == unix.EINVAL || err == unix.EOPNOTSUPP:
			s.noSeek = true
			return false, nil
		case err != nil:
			return false, fmt.Errorf("seek data from %d: %w", a, err)
		default:
			de, err := s.seek(s.fd, ds, unix.SEEK_HOLE)
			if err == unix.ENXIO {
				// The file shrank below ds between the two seeks: read
				// from a on, which hashes what is still there.
				ds, de = a, inf
			} else if err != nil {
				return false, fmt.Errorf("seek hole from %d: %w", ds, err)
			}
			s.ds, s.de = ds, de
		}
		s.valid = true
	}
	return s.ds >= b, nil
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

// Answerer answers queries for a secondary during an online
// resynchronisation, including QuerySkipped: it keeps the paths of the ops
// the applier skipped as diverged (apply.Applier.SetLenient with
// Answerer.Skipped), until the primary asks for them.
type Answerer struct {
	root     int
	sums     *sumcache.Cache
	mu       sync.Mutex
	skipped  map[string]struct{}
	overflow bool
}

// maxSkipped bounds the paths remembered; past it the answer says
// "overflow" and the engine compares its whole scope again.
const maxSkipped = 100000

// NewAnswerer answers from the copy below rootFd, which the caller keeps
// open.
// sums, if not nil, keeps the hashes of the files a listing read, and
// spares the next listing the reads of those unchanged since.
func NewAnswerer(rootFd int, sums *sumcache.Cache) *Answerer {
	return &Answerer{root: rootFd, sums: sums, skipped: make(map[string]struct{})}
}

// Answer is the package function Answer, plus QuerySkipped, which hands
// over (and forgets) the paths recorded so far.
func (a *Answerer) Answer(q *op.Op) ([]byte, error) {
	if q.Kind == op.Query && q.Flags == op.QuerySkipped {
		return a.drain(), nil
	}
	return answer(a.root, a.sums, q)
}

// Skipped records the paths of an op the applier skipped (the signature
// of apply.Applier.SetLenient's report).
func (a *Answerer) Skipped(o *op.Op, _ error) {
	paths := []string{o.Path}
	if o.Kind == op.Rename || o.Kind == op.Link {
		paths = append(paths, o.Path2)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, p := range paths {
		if len(a.skipped) >= maxSkipped {
			a.overflow = true
			return
		}
		a.skipped[p] = struct{}{}
	}
}

// Pending says how many skipped paths the primary has not fetched yet
// (overflow counts as one more). Nonzero when the end-of-resync marker
// arrives means an op diverged after the engine's last check: the agent
// must not declare the copy up to date.
func (a *Answerer) Pending() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := len(a.skipped)
	if a.overflow {
		n++
	}
	return n
}

// Reset forgets every recorded path (a new resynchronisation begins).
func (a *Answerer) Reset() {
	a.mu.Lock()
	clear(a.skipped)
	a.overflow = false
	a.mu.Unlock()
}

func (a *Answerer) drain() []byte {
	a.mu.Lock()
	defer a.mu.Unlock()
	paths := make([]string, 0, len(a.skipped))
	size := 0
	for p := range a.skipped {
		if size >= maxSkippedBytes {
			break
		}
		paths = append(paths, p)
		size += len(p) + 2
	}
	for _, p := range paths {
		delete(a.skipped, p)
	}
	slices.Sort(paths)
	b := binary.AppendUvarint(make([]byte, 0, size+16), uint64(len(paths)))
	for _, p := range paths {
		b = appendString(b, p)
	}
	if a.overflow {
		a.overflow = false
		return append(b, 1)
	}
	return append(b, 0)
}
