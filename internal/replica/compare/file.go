package compare

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"sync"

	"github.com/tandem-ha/tandem/internal/replica/op"
	"github.com/zeebo/xxh3"
	"golang.org/x/sys/unix"
)

// errStale stops a file's compare: its path changed meanwhile (renamed,
// removed, replaced). A rename or link into place queues a recheck; a
// removal or a new file needs nothing from us.
var errStale = errors.New("the file's path changed during its compare")

type fileState struct {
	t     *task
	path  string
	fd    int
	size  int64 // when the task began
	since uint64
	last  *Entry // the secondary's latest attributes
	sent  bool   // data ops sent
	end   int64  // fresh: end of the data sent
	fresh bool
	zones []Zone // zones mode: the recorded zones, aligned and merged
	escal bool   // zones mode: a block outside the zones differs
	buf   []byte
	h     hasher
	// The secondary's size at its latest answer (-1: unknown). While its
	// copy may be longer than ours, an extending write here leaves its
	// old bytes in the gap there: so it is cut to our size as soon as
	// seen (truncs counts those cuts), after which it is never longer
	// again (both apply the same ops), and the range is compared again
	// from rewind.
	sKnown int64
	truncs int
	rewind int64
	// overwrite: the first freeze cuts the secondary's copy to our size.
	truncFirst bool
	ended      bool // size and attributes sent (fileEnd has nothing to do)
}

// fileTask compares (or sends) a regular file's data, then its size and
// attributes.
func (r *run) fileTask(t *task) error {
	if t.rec != nil {
		r.lmu.Lock()
		t.rec.started = true
		r.lmu.Unlock()
	}
	done, err := r.fileData(t)
	if !done && err == nil {
		if t.rec != nil {
			r.linkLost(t.rec, t.path)
		}
		if t.scoped {
			// Its inode's recorded changes must reach whatever names it
			// has now.
			r.mu.Lock()
			r.lostKeys = append(r.lostKeys, t.pKey)
			r.mu.Unlock()
		}
		// Its name changed meanwhile (removed, replaced, renamed over,
		// or created again over itself): its entry is compared again.
		r.recheck(t.path)
	}
	return err
}

// linkLost: the data of a hard-linked inode was not compared through its
// first name, which moved or went meanwhile. The other names met compare
// it (one of them becomes the first).
func (r *run) linkLost(rec *linkRec, path string) {
	r.lmu.Lock()
	var again []string
	if rec.first == path {
		rec.first = ""
		for p := range rec.seen {
			if p != path {
				again = append(again, p)
			}
		}
	}
	r.lmu.Unlock()
	slices.Sort(again)
	for _, p := range again {
		r.recheck(p)
	}
}

// fileData does a file task; done is false when the file's path changed
// meanwhile and nothing was concluded.
func (r *run) fileData(t *task) (done bool, err error) {
	fd, err := openNoatime(r.root, t.path, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK)
	if vanished(err) || err == unix.ENXIO {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("compare: open %s on the primary: %w", show(t.path), err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return false, fmt.Errorf("compare: stat %s on the primary: %w", show(t.path), err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || t.pKey != (inoKey{}) && t.pKey != (inoKey{st.Dev, st.Ino}) {
		return false, nil // replaced on the primary: the live ops and rechecks cover it
	}
	fs := &fileState{t: t, path: t.path, fd: fd, size: st.Size, since: t.since, last: t.s, fresh: t.how == howFresh,
		sKnown: -1, rewind: -1, truncFirst: t.how == howOverwrite}
	if t.s != nil {
		fs.sKnown = t.s.Size
	}
	if t.how == howWhole || t.how == howZones {
		fs.since = r.e.ns.now()
	}
	r.st.files.Add(1)
	r.e.prog.files.Add(1)
	if !r.scope.Full && t.how != howZones {
		r.e.prog.total.Add(st.Size)
	}
	switch t.how {
	case howFresh, howOverwrite:
		err = r.sendRange(fs, 0, inf)
	case howWhole:
		err = r.compareRanges(fs, []Zone{{0, inf}})
	case howZones:
		err = r.compareZones(fs)
	}
	if err == nil {
		err = r.fileEnd(fs)
	}
	r.e.log.Debug("resync compare: file", "path", t.path, "how", t.how, "sent", fs.sent, "err", err)
	if err == errStale {
		return false, nil
	}
	return err == nil, err
}

// fileStale reports whether a namespace change reached the file's path
// since the last check. It runs with mutations frozen (no live op comes
// in, and the engine's own ops are sent under freezes too), so the check
// moves on: a long compare looks only at the changes since its last
// chunk, and never outlives the log.
func (r *run) fileStale(fs *fileState) bool {
	now := r.e.ns.now()
	if r.e.ns.touchedPath(fs.since, noOwner, fs.path) {
		return true
	}
	fs.since = now
	return false
}

// frozenSize, with mutations frozen, is the primary file's current size,
// or errStale when its path changed since the compare last looked.
func (r *run) frozenSize(fs *fileState) (int64, error) {
	if r.fileStale(fs) {
		return 0, errStale
	}
	var st unix.Stat_t
	if err := unix.Fstat(fs.fd, &st); err != nil {
		return 0, fmt.Errorf("compare: stat %s on the primary: %w", show(fs.path), err)
	}
	return st.Size, nil
}

// wait takes bandwidth tokens for n bytes.
func (r *run) wait(n int64) error { return r.e.lim.wait(r.ctx, n) }

// sendRange sends the primary's current data over [from, to) (clipped to
// its size when sent), a chunk per freeze.
func (r *run) sendRange(fs *fileState, from, to int64) error {
	// Each chunk is read under the file's freeze, which one worker holds
	// at a time: the kernel reads ahead here, outside it, and the worker
	// waits here until the chunk is cached, so that the freeze does not
	// wait for the disk, and the workers' files are read in parallel.
	advised := from
	for pos := from; ; {
		if err := r.ctx.Err(); err != nil {
			return context.Cause(r.ctx)
		}
		if end := min(to, fs.size, pos+prefetchAhead); advised < end && advised-pos < prefetchAhead/2 {
			// Advice only: a failure costs speed, not correctness.
			_ = unix.Fadvise(fs.fd, advised, end-advised, unix.FADV_WILLNEED)
			advised = end
		}
		if err := r.wait(min(sendChunk, max(fs.size-pos, 0))); err != nil {
			return err
		}
		awaitCached(fs.fd, pos, min(to, fs.size, pos+sendChunk)-pos)
		var done bool
		var err error
		r.frozenFile(fs, func() {
			var size int64
			if size, err = r.frozenSize(fs); err != nil {
				return
			}
			if fs.truncFirst {
				// Its copy may be longer: cut first, so that no later
				// extending write leaves its old bytes in a gap.
				r.submit(&op.Op{Kind: op.Truncate, Path: fs.path, Off: size}, fs.t.id)
				fs.truncFirst, fs.sent = false, true
			}
			end := min(to, size)
			if pos >= end {
				done = true
				return
			}
			stop := min(pos+sendChunk, end)
			err = r.sendSegments(fs, pos, stop, nil)
			pos = stop
		})
		if err != nil || done {
			return err
		}
	}
}

// dataSeg is the data segment of a file found last by SEEK_DATA and
// SEEK_HOLE. Valid while mutations stay frozen: the many small zones of
// one batch then need no seek of their own (two lseeks cost ~9 µs here,
// a third of the time zones spent frozen).
type dataSeg struct {
	start, end int64
	ok         bool
}

// sendSegments sends [a, b) of the primary's file, which covers it: data
// regions as writes, holes (unless the secondary's file is new and so
// empty there) as punched holes. It runs with mutations frozen; seg, if
// not nil, carries the data segment found between calls of one freeze.
func (r *run) sendSegments(fs *fileState, a, b int64, seg *dataSeg) error {
	if fs.buf == nil {
		fs.buf = getBuf()
		defer func() { putBuf(fs.buf); fs.buf = nil }()
	}
	for x := a; x < b; {
		var ds, de int64
		var err error
		if seg != nil && seg.ok && x >= seg.start && x < seg.end {
			ds, de = x, seg.end // inside the data segment found last
		} else {
			ds, err = unix.Seek(fs.fd, x, unix.SEEK_DATA)
			de = b
			switch {
			case err == unix.ENXIO:
				ds = b
			case err == unix.EINVAL || err == unix.EOPNOTSUPP:
				ds = x
			case err != nil:
				return fmt.Errorf("compare: find data in %s on the primary from %d: %w", show(fs.path), x, err)
			default:
				if de, err = unix.Seek(fs.fd, ds, unix.SEEK_HOLE); err != nil {
					return fmt.Errorf("compare: find a hole in %s on the primary from %d: %w", show(fs.path), ds, err)
				}
				if seg != nil {
					*seg = dataSeg{start: ds, end: de, ok: true}
				}
			}
		}
		ds, de = min(ds, b), min(max(de, ds), b)
		if ds > x && !fs.fresh {
			r.submit(&op.Op{Kind: op.Fallocate, Path: fs.path, Flags: unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE, Off: x, Len: ds - x}, fs.t.id)
			r.st.holes.Add(ds - x)
			fs.sent = true
		}
		for ds < de {
			n, err := preadFull(fs.fd, fs.buf[:min(de-ds, int64(len(fs.buf)))], ds)
			if err != nil {
				return fmt.Errorf("compare: read %s on the primary at %d: %w", show(fs.path), ds, err)
			}
			if n == 0 {
				return nil // shorter than its size said: nothing is frozen then, stop
			}
			r.submit(&op.Op{Kind: op.Write, Path: fs.path, Off: ds, Data: fs.buf[:n]}, fs.t.id)
			r.st.sent.Add(int64(n))
			r.e.prog.sent.Add(int64(n))
			if fs.fresh || fs.t.how == howOverwrite {
				r.st.examined.Add(int64(n))
				r.e.prog.examined.Add(int64(n))
			}
			fs.sent = true
			ds += int64(n)
			fs.end = max(fs.end, ds)
		}
		x = max(de, x+1)
		if ds >= b {
			break
		}
	}
	return nil
}

// bufs are the send buffers (sendChunk bytes), shared by the workers.
var bufs = sync.Pool{New: func() any { b := make([]byte, sendChunk); return &b }}

func getBuf() []byte  { return *bufs.Get().(*[]byte) }
func putBuf(b []byte) { bufs.Put(&b) }

type piece struct {
	off, n int64
	ch     <-chan Reply
	truncs int // fs.truncs when asked
}

// compareRanges compares the file over each range (Len inf: to the end)
// block by block: the secondary hashes its blocks, then the primary
// hashes its own (after the answer came, so an equal block is equal when
// the fixes are sent) and sends the blocks that differ.
func (r *run) compareRanges(fs *fileState, ranges []Zone) error {
	bs := r.e.opt.BlockSize
	for _, z := range ranges {
		pos := z.Off / bs * bs
		zEnd := inf
		if z.Len != inf {
			zEnd = z.Off + z.Len
		}
		var pend []piece
		asked := false
		for {
			for len(pend) < pipeline {
				var st unix.Stat_t
				if err := unix.Fstat(fs.fd, &st); err != nil {
					return fmt.Errorf("compare: stat %s on the primary: %w", show(fs.path), err)
				}
				// Up to the longer copy: a tail of the secondary's beyond
				// our end must be seen (and cut).
				limit := min(zEnd, max(st.Size, fs.sKnown))
				if pos >= limit && (asked || zEnd != inf || fs.sKnown >= 0) {
					break
				}
				n := (max(min(pieceBytes, limit-pos), 1) + bs - 1) / bs * bs
				r.st.queries.Add(1)
				pend = append(pend, piece{off: pos, n: n, truncs: fs.truncs, ch: r.e.st.Query(HashBlocksQuery(fs.path, pos, n, bs, st.Size))})
				pos += n
				asked = true
			}
			if len(pend) == 0 {
				break
			}
			pc := pend[0]
			pend = pend[1:]
			if err := r.comparePiece(fs, pc); err != nil {
				return err
			}
			if fs.rewind >= 0 {
				pos = min(pos, fs.rewind)
				fs.rewind = -1
			}
		}
	}
	return nil
}

func (r *run) comparePiece(fs *fileState, pc piece) error {
	var rep Reply
	select {
	case rep = <-pc.ch:
	case <-r.ctx.Done():
		return context.Cause(r.ctx)
	}
	if rep.Err != nil {
		return fmt.Errorf("compare: hash %s on the secondary: %w", show(fs.path), rep.Err)
	}
	r.st.answerBytes.Add(int64(len(rep.Data)))
	ans, err := ParseHashAnswer(rep.Data)
	if err != nil {
		return fmt.Errorf("compare: hash %s: %w", show(fs.path), err)
	}
	if ans.Status != statusOK {
		// Missing or of another type there: compared again as an entry
		// of its directory, which replaces it.
		r.recheck(fs.path)
		return errStale
	}
	fs.last = &ans.File
	bs := r.e.opt.BlockSize
	var st unix.Stat_t
	if err := unix.Fstat(fs.fd, &st); err != nil {
		return fmt.Errorf("compare: stat %s on the primary: %w", show(fs.path), err)
	}
	if ans.File.Nlink > st.Nlink {
		// The secondary's inode has names ours lacks (a link broken
		// while the copies were apart): writing to it would change
		// them too. The entry is recreated there instead.
		r.mu.Lock()
		r.recreate[fs.path] = inoKey{st.Dev, st.Ino}
		r.mu.Unlock()
		return errStale
	}
	end := min(pc.off+pc.n, st.Size)
	var runs []Zone
	add := func(off, n int64) {
		if k := len(runs) - 1; k >= 0 && runs[k].Off+runs[k].Len == off && runs[k].Len+n <= sendChunk {
			runs[k].Len += n
			return
		}
		runs = append(runs, Zone{off, n})
	}
	// The secondary's copy ends inside this block: if its bytes equal our
	// first ones, only the rest is sent (an appended file).
	sEnd := ans.File.Size
	var herr error
	if end > pc.off {
		err := fs.h.blocks(fs.fd, pc.off, end, bs, func(off int64, sum uint64, hole bool) {
			if herr != nil {
				return
			}
			i := (off - pc.off) / bs
			// Past the hashes: nothing there if its copy ended before the
			// block (then a hole of ours comes with the size); if it was
			// only cut at our size, its bytes there are unknown.
			differs := i < int64(len(ans.Hashes)) && sum != ans.Hashes[i] ||
				i >= int64(len(ans.Hashes)) && (!hole || sEnd > off)
			if !differs {
				return
			}
			from := off
			if i < int64(len(ans.Hashes)) && sEnd > off && sEnd < min(off+bs, end) {
				var same bool
				if same, herr = fs.samePrefix(off, sEnd, ans.Hashes[i]); same {
					from = sEnd
				}
			}
			add(from, min(off+bs, end)-from)
			if fs.zones != nil && !inZones(fs.zones, off, bs) {
				fs.escal = true
			}
		})
		if err == nil {
			err = herr
		}
		if err != nil {
			return fmt.Errorf("compare: hash %s on the primary: %w", show(fs.path), err)
		}
		r.st.examined.Add(end - pc.off)
		r.e.prog.examined.Add(end - pc.off)
	}
	for _, run := range runs {
		if err := r.sendRange(fs, run.Off, run.Off+run.Len); err != nil {
			return err
		}
	}
	fs.sKnown = ans.File.Size
	if ans.File.Size > st.Size && pc.truncs == fs.truncs {
		// Its copy is longer than ours: cut it now (see sKnown), then
		// compare again from our end as it was.
		var err error
		r.frozenFile(fs, func() {
			var size int64
			if size, err = r.frozenSize(fs); err != nil {
				return
			}
			r.submit(&op.Op{Kind: op.Truncate, Path: fs.path, Off: size}, fs.t.id)
			fs.sent = true
			fs.sKnown = size
		})
		if err != nil {
			return err
		}
		fs.truncs++
		fs.rewind = st.Size / bs * bs
	}
	return nil
}

// samePrefix: do our bytes [a, b) hash to sum?
func (fs *fileState) samePrefix(a, b int64, sum uint64) (bool, error) {
	buf := make([]byte, b-a)
	n, err := preadFull(fs.fd, buf, a)
	if err != nil {
		return false, err
	}
	return n == len(buf) && xxh3.Hash(buf) == sum, nil
}

func inZones(zones []Zone, off, n int64) bool {
	for _, z := range zones {
		if off < z.Off+z.Len && z.Off < off+n {
			return true
		}
	}
	return false
}

// alignZones rounds zones out to blocks and merges them, sorted.
func alignZones(zones []Zone, bs int64) []Zone {
	var out []Zone
	for _, z := range zones {
		if z.Len <= 0 || z.Off < 0 {
			continue
		}
		a := z.Off / bs * bs
		b := z.Off + z.Len
		if b < z.Off { // overflow: to the end
			b = inf
		} else {
			b = (b + bs - 1) / bs * bs
		}
		out = append(out, Zone{a, b - a})
	}
	slices.SortFunc(out, func(x, y Zone) int { return int(min(max(x.Off-y.Off, -1), 1)) })
	merged := out[:0]
	for _, z := range out {
		if k := len(merged) - 1; k >= 0 && z.Off <= merged[k].Off+merged[k].Len {
			merged[k].Len = max(merged[k].Len, z.Off+z.Len-merged[k].Off)
			continue
		}
		merged = append(merged, z)
	}
	return merged
}

// compareZones compares (or sends) a file's recorded zones. Its first and
// last blocks are compared too: a difference there outside the zones
// means the file was replaced, and it is compared whole. So is the tail
// when the sizes differ.
func (r *run) compareZones(fs *fileState) error {
	bs := r.e.opt.BlockSize
	fs.zones = alignZones(fs.t.zones, bs)
	if fs.zones == nil {
		fs.zones = []Zone{}
	}
	if r.e.opt.TrustZones {
		// Sent without hashing (zones.go).
		if err := r.trustedZones(fs); err != nil {
			return err
		}
	} else {
		if err := r.compareRanges(fs, alignZones(append(slices.Clone(fs.zones), probeZones(fs.size, bs)...), bs)); err != nil {
			return err
		}
		if fs.escal {
			return r.compareRanges(fs, []Zone{{0, inf}})
		}
	}
	if fs.last != nil && fs.last.Size != fs.size {
		from := min(fs.last.Size, fs.size) / bs * bs
		return r.compareRanges(fs, []Zone{{from, inf}})
	}
	return nil
}

// fileEnd sends the size and the attributes that differ, then the times
// if anything was sent.
func (r *run) fileEnd(fs *fileState) error {
	if fs.ended {
		return nil // sent with the last zones (trustedZones)
	}
	if fs.last == nil && !fs.fresh {
		// Nothing asked yet (an empty file, or zones sent unhashed): the
		// secondary's attributes.
		b, err := r.query(r.ctx, HashBlocksQuery(fs.path, 0, 0, r.e.opt.BlockSize, 0))
		if err != nil {
			return err
		}
		ans, err := ParseHashAnswer(b)
		if err != nil {
			return fmt.Errorf("compare: attributes of %s: %w", show(fs.path), err)
		}
		if ans.Status != statusOK {
			r.recheck(fs.path)
			return errStale
		}
		fs.last = &ans.File
		var st unix.Stat_t
		if err := unix.Fstat(fs.fd, &st); err != nil {
			return fmt.Errorf("compare: stat %s on the primary: %w", show(fs.path), err)
		}
		if fs.last.Size > st.Size {
			// Its copy is longer: compare (and cut) the tail first.
			fs.sKnown = fs.last.Size
			if err := r.compareRanges(fs, []Zone{{st.Size / r.e.opt.BlockSize * r.e.opt.BlockSize, inf}}); err != nil {
				return err
			}
		}
	}
	if !fs.sent && !fs.fresh {
		var st unix.Stat_t
		if err := unix.Fstat(fs.fd, &st); err != nil {
			return fmt.Errorf("compare: stat %s on the primary: %w", show(fs.path), err)
		}
		p := &pEntry{st: st}
		var err error
		if p.xdig, err = xattrDigest(fs.fd, ""); err != nil {
			return fmt.Errorf("compare: read the attributes of %s on the primary: %w", show(fs.path), err)
		}
		if st.Size == fs.last.Size && !metaDiffers(p, fs.last) {
			return nil
		}
	}
	var err error
	r.frozenFile(fs, func() {
		if r.fileStale(fs) {
			err = errStale
			return
		}
		err = r.endOps(fs)
	})
	return err
}

// endOps sends the size and attributes of fileEnd; it runs with mutations
// frozen, the file's path checked.
func (r *run) endOps(fs *fileState) error {
	var st unix.Stat_t
	if err := unix.Fstat(fs.fd, &st); err != nil {
		return fmt.Errorf("compare: stat %s on the primary: %w", show(fs.path), err)
	}
	s := fs.last
	if fs.fresh {
		if st.Size != fs.end {
			r.submit(&op.Op{Kind: op.Truncate, Path: fs.path, Off: st.Size}, fs.t.id)
		}
		// Created by us with its owner, mode and attributes.
		dig, _ := xattrDigest(fs.fd, "")
		s = &Entry{Mode: st.Mode, Uid: st.Uid, Gid: st.Gid, Xattrs: dig}
	} else if fs.sent || st.Size != s.Size {
		r.submit(&op.Op{Kind: op.Truncate, Path: fs.path, Off: st.Size}, fs.t.id)
		fs.sent = true
	}
	return r.metaOps(fs.t, fs.path, &st, s, fs.fd, "", fs.sent || fs.fresh)
}

// findNames searches the primary's tree for the names of the inodes
// keys and compares each found entry again (whole). True if any.
func (r *run) findNames(keys []inoKey) bool {
	want := make(map[inoKey]map[string]bool, len(keys))
	for _, k := range keys {
		want[k] = map[string]bool{}
	}
	found := r.scanTree(want, func(dir, name string) { r.recheck(join(dir, name)) })
	return found > 0
}

// scanTree walks the primary's tree (names and stats only) and calls fn
// for each non-directory entry whose inode is in want, unless its path is
// in want's set already.
func (r *run) scanTree(want map[inoKey]map[string]bool, fn func(dir, name string)) int {
	found := 0
	var walk func(fd int, dir string)
	walk = func(fd int, dir string) {
		f := os.NewFile(uintptr(fd), dir)
		defer f.Close()
		names, err := f.Readdirnames(-1)
		if err != nil {
			return
		}
		slices.Sort(names)
		for _, n := range names {
			if r.ctx.Err() != nil {
				return
			}
			var st unix.Stat_t
			if unix.Fstatat(fd, n, &st, unix.AT_SYMLINK_NOFOLLOW) != nil {
				continue
			}
			p := join(dir, n)
			if st.Mode&unix.S_IFMT == unix.S_IFDIR {
				if cfd, err := openatNoatime(fd, n, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW); err == nil {
					walk(cfd, p)
				}
				continue
			}
			if seen, ok := want[inoKey{st.Dev, st.Ino}]; ok && !seen[p] {
				fn(dir, n)
				found++
			}
		}
	}
	if fd, err := openatNoatime(r.root, ".", unix.O_RDONLY|unix.O_DIRECTORY); err == nil {
		walk(fd, "")
	}
	return found
}

// linkScan finds the primary's other names of the
// hard-linked inodes met in the listed directories, and queues their
// entries: the link groups are then checked as a full compare does.
func (r *run) linkScan() bool {
	type cand struct {
		key  inoKey
		rec  *linkRec
		seen []string
	}
	var cands []cand
	r.lmu.Lock()
	for k, rec := range r.links {
		if !rec.scan {
			rec.scan = true
			cands = append(cands, cand{k, rec, slices.Collect(maps.Keys(rec.seen))})
		}
	}
	r.lmu.Unlock()
	// An inode whose known names (those that still name it) are fewer
	// than its links has names the compare did not meet: an incremental
	// scope lists only some directories, and a live link may add a name
	// to an inode met as a single file.
	want := map[inoKey]map[string]bool{}
	for _, c := range cands {
		valid := map[string]bool{}
		var nlink uint64
		for _, p := range c.seen {
			var st unix.Stat_t
			if unix.Fstatat(r.root, p, &st, unix.AT_SYMLINK_NOFOLLOW) == nil && (inoKey{st.Dev, st.Ino}) == c.key {
				valid[p] = true
				nlink = st.Nlink
			}
		}
		if nlink > uint64(len(valid)) || len(valid) == 0 {
			want[c.key] = valid // no known name left: searched for too
		}
	}
	if len(want) == 0 {
		return false
	}
	r.e.log.Debug("resync compare: searching other names of hard-linked inodes", "inodes", len(want))
	return r.scanTree(want, func(dir, name string) {
		r.push(&task{dir: true, path: dir, only: name, late: true})
	}) > 0
}
