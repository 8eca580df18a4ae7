package compare

import (
	"context"

	"golang.org/x/sys/unix"
)

// Trusted zones (Options.TrustZones): the recorded zones are sent as the
// primary holds them, without asking the secondary for their hashes, and
// nothing else of the file is read: the records cover every byte that may
// differ (a file moved into place is recorded whole; a file created while
// the copies were apart has all its bytes recorded, its writes and the holes
// a write or fallocate past the end leaves; a shorter or longer copy there
// is cut or compared from the shorter end). What is still asked, when no
// listing gave them, is the secondary's attributes: that question is asked
// when the run begins (preProbes), so that a file costs no round trip of its
// own; the zones themselves are read ahead (many reads in flight; the
// next files' too, readAheadScope) and then sent, a batch of them under
// one freeze. Hashed zones (no TrustZones) also
// compare the file's first and last blocks: a difference there outside the
// zones means the file was replaced, and it is compared whole.

// prefetchAhead bounds the bytes of zones read ahead of the send.
const prefetchAhead = 8 << 20

// trustedZones sends fs.zones (aligned, merged), with the size and the
// attributes that differ.
func (r *run) trustedZones(fs *fileState) error {
	var pend []piece
	if pp := fs.t.probe; pp != nil && pp.path == fs.path && pp.size == fs.size {
		// Asked when the run began: an answer about this path from
		// before a rename must be seen stale, so the checks start there.
		pend, fs.since = pp.pend, min(fs.since, pp.since)
	} else if fs.last == nil {
		// Its attributes, for the end of the file's compare.
		pend = append(pend, r.askAttrs(fs.path))
	}
	// The zones are read while the answers come.
	ra := readAhead{fs: fs, zones: fs.zones}
	ra.advance(prefetchAhead)
	r.flush()
	for _, pc := range pend {
		if err := r.comparePiece(fs, pc); err != nil {
			return err
		}
	}
	// A longer copy there was cut to our size: compareZones compares the
	// tail again (the sizes differ).
	fs.rewind = -1
	// The size and attributes go with the last zones, unless the tail is
	// compared first.
	withEnd := fs.last != nil && fs.last.Size == fs.size
	return r.sendZones(fs, &ra, withEnd)
}

// askAttrs asks the secondary for a file's attributes (a hash query of no
// blocks).
func (r *run) askAttrs(path string) piece {
	return piece{ch: r.ask(HashBlocksQuery(path, 0, 0, r.e.opt.BlockSize, 0))}
}

// readAhead asks the kernel to read zones ahead of their send (many reads
// in flight, where the send reads them one by one).
type readAhead struct {
	fs    *fileState
	zones []Zone
	next  int   // zones[:next] were asked for
	bytes int64 // asked for and not yet sent
}

func (ra *readAhead) advance(limit int64) {
	for ; ra.next < len(ra.zones) && ra.bytes < limit; ra.next++ {
		z := ra.zones[ra.next]
		if n := min(z.Len, max(ra.fs.size-z.Off, 0)); n > 0 {
			// Advice only: a failure costs speed, not correctness.
			_ = unix.Fadvise(ra.fs.fd, z.Off, n, unix.FADV_WILLNEED)
			ra.bytes += n
		}
	}
}

func (ra *readAhead) sent(zones []Zone) {
	for _, z := range zones {
		ra.bytes -= min(z.Len, max(ra.fs.size-z.Off, 0))
	}
}

// sendZones sends the primary's current data over ra's zones (sorted,
// not overlapping), clipped to its size, up to sendChunk bytes under one
// freeze; withEnd, the last freeze also sends the size and attributes.
func (r *run) sendZones(fs *fileState, ra *readAhead, withEnd bool) error {
	zones := ra.zones
	var total int64
	for _, z := range zones {
		total += min(z.Len, max(fs.size-z.Off, 0))
	}
	r.e.prog.examined.Add(total)
	r.st.examined.Add(total)
	for i := 0; i < len(zones); {
		if err := r.ctx.Err(); err != nil {
			return context.Cause(r.ctx)
		}
		ra.advance(prefetchAhead)
		// A batch: whole zones up to sendChunk bytes (a longer zone alone,
		// sent a chunk per freeze).
		j, n := i, int64(0)
		for j < len(zones) && (j == i || n+zones[j].Len <= sendChunk) {
			n += zones[j].Len
			j++
		}
		if j == i+1 && zones[i].Len > sendChunk {
			if err := r.sendRange(fs, zones[i].Off, zones[i].Off+zones[i].Len); err != nil {
				return err
			}
		} else if err := r.sendBatch(fs, zones[i:j], n, withEnd && j == len(zones)); err != nil {
			return err
		}
		ra.sent(zones[i:j])
		i = j
	}
	return nil
}

// sendBatch sends zones (n bytes in all, at most sendChunk) under one
// freeze, as sendRange does one range.
func (r *run) sendBatch(fs *fileState, zones []Zone, n int64, end bool) error {
	if err := r.wait(n); err != nil {
		return err
	}
	// Read first outside the freeze, which serialises every worker: the
	// reads under it then find the data in the page cache.
	buf := getBuf()
	for _, z := range zones {
		if k := min(z.Len, fs.size-z.Off, int64(len(buf))); k > 0 {
			_, _ = preadFull(fs.fd, buf[:k], z.Off)
		}
	}
	putBuf(buf)
	var err error
	r.frozenFile(fs, func() {
		var size int64
		if size, err = r.frozenSize(fs); err != nil {
			return
		}
		var seg dataSeg // the file's map cannot change while frozen
		for _, z := range zones {
			e := min(z.Off+z.Len, size)
			if z.Off >= e {
				continue
			}
			if err = r.sendSegments(fs, z.Off, e, &seg); err != nil {
				return
			}
		}
		if end {
			err = r.endOps(fs)
			fs.ended = err == nil
		}
	})
	return err
}

// preProbe is a trusted scope file's question for the secondary's
// attributes, asked when the run began, before any fix: its answer comes
// back without waiting behind data queued for the secondary's applier, and
// the questions of all files share a few batches.
type preProbe struct {
	path  string
	size  int64  // the primary's size then
	since uint64 // namespace generation before the question
	pend  []piece
}

// firstPreBatch is the size of the first batch of questions.
const firstPreBatch = 32

// maxPreProbes bounds the files asked about when the run begins (their
// answers are kept until their task runs); further files ask when they
// start.
const maxPreProbes = 8192

// preProbes asks, before anything else goes into the stream, the
// attributes of the scope's trusted files of one name, in the order the
// workers take them (scopeOrder).
func (r *run) preProbes(ts []*task, sizes map[*task]int64, singles map[*task]bool) {
	if !r.e.opt.TrustZones {
		return
	}
	since := r.e.ns.now()
	n := 0
	// The first batches are small, so that the first tasks need not wait
	// for a whole batch's answers; the others go as those come back (see
	// maxInFlight), each answered while the tasks before it run.
	r.batch.mu.Lock()
	r.batch.limit = firstPreBatch
	r.batch.mu.Unlock()
	for _, t := range ts {
		size := sizes[t]
		if n >= maxPreProbes || t.how != howZones || !singles[t] || size <= 0 {
			continue
		}
		t.probe = &preProbe{path: t.path, size: size, since: since, pend: []piece{r.askAttrs(t.path)}}
		n++
	}
	for r.queuedQueries() > 0 && r.inFlight() < maxInFlight {
		r.send()
	}
}

func probeZones(size, bs int64) []Zone {
	if size <= 0 {
		return nil
	}
	return alignZones([]Zone{{0, 1}, {size - 1, 1}}, bs)
}
