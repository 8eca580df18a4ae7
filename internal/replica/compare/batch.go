package compare

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/tandem-ha/tandem/internal/replica/op"
)

// HashBatch queries carry several HashBlocks queries (the probes of many
// files' first and last blocks, their attributes) in one op: one round
// trip and one wire reply for up to maxBatchItems files, whose reads the
// secondary makes in parallel.
//
//	HashBatch  params: count, then per item: path (string), off, len,
//	           HashBlocks params (string)
//	           answer: count, then per item: status byte (0: the item's
//	           HashBlocks answer follows as a string; 1: an error message)

const (
	maxBatchItems   = 256
	batchReadersPer = 16 // reads in flight on the secondary per batch answered
	maxBatchAnswer  = 2 << 20
	maxBatchItemLen = 64 << 10 // bytes of blocks one item may hash (probes: one block)
)

// HashBatchQuery builds a HashBatch query of HashBlocks queries qs.
func HashBatchQuery(qs []*op.Op) *op.Op {
	b := binary.AppendUvarint(nil, uint64(len(qs)))
	for _, q := range qs {
		b = appendString(b, q.Path)
		b = binary.AppendUvarint(b, uint64(q.Off))
		b = binary.AppendUvarint(b, uint64(q.Len))
		b = appendString(b, string(q.Data))
	}
	return &op.Op{Kind: op.Query, Flags: op.QueryHashBatch, Data: b}
}

func parseHashBatch(b []byte) ([]*op.Op, error) {
	r := reader{b: b}
	n := r.uvarint()
	if n > maxBatchItems {
		return nil, fmt.Errorf("hashbatch: %d items, more than %d", n, maxBatchItems)
	}
	qs := make([]*op.Op, 0, n)
	for i := uint64(0); i < n && r.err == nil; i++ {
		q := &op.Op{Kind: op.Query, Flags: op.QueryHashBlocks, Path: r.string()}
		off, ln := r.uvarint(), r.uvarint()
		q.Data = []byte(r.string())
		if off > 1<<62 || ln > maxBatchItemLen {
			return nil, fmt.Errorf("hashbatch: item %d: range %d@%d out of bounds", i, ln, off)
		}
		q.Off, q.Len = int64(off), int64(ln)
		if err := q.Validate(); err != nil {
			return nil, fmt.Errorf("hashbatch: item %d: %w", i, err)
		}
		qs = append(qs, q)
	}
	if r.err != nil || len(r.b) != 0 {
		return nil, errors.New("bad hashbatch parameters")
	}
	return qs, nil
}

// answerHashBatch answers each item as a HashBlocks query, read by the
// shared readers (with a cold cache each is a disk read or two).
func answerHashBatch(root int, q *op.Op) ([]byte, error) {
	qs, err := parseHashBatch(q.Data)
	if err != nil {
		return nil, err
	}
	ans := make([][]byte, len(qs))
	errs := make([]error, len(qs))
	var wg sync.WaitGroup
	wg.Add(len(qs))
	items := make([]batchItem, len(qs))
	for i := range qs {
		items[i] = batchItem{root: root, q: qs[i], ans: &ans[i], err: &errs[i], wg: &wg}
	}
	readers.add(items)
	wg.Wait()
	b := binary.AppendUvarint(nil, uint64(len(qs)))
	for i := range qs {
		if errs[i] != nil {
			b = append(b, 1)
			b = appendString(b, fmt.Sprintf("%s: %v", qs[i], errs[i]))
			continue
		}
		b = append(b, 0)
		b = appendString(b, string(ans[i]))
	}
	if len(b) > maxBatchAnswer {
		return nil, fmt.Errorf("hashbatch: answer of %d bytes, more than %d", len(b), maxBatchAnswer)
	}
	return b, nil
}

// readers read the items of every HashBatch being answered, in the order
// the batches came: the batches in flight (the probes of a whole scope
// are asked at once) are then answered one after the other, the first
// after its own reads rather than all of them at the end of everyone's.
var readers batchReaders

type batchItem struct {
	root int
	q    *op.Op
	ans  *[]byte
	err  *error
	wg   *sync.WaitGroup
}

type batchReaders struct {
	mu      sync.Mutex
	q       []batchItem
	running int
}

// answerItem answers one item (a variable for the tests).
var answerItem = answerHash

// maxReaders bounds the reads in flight for all batches (a cold read
// each: the disk's queue, not the CPU, is what they fill).
const maxReaders = 2 * batchReadersPer

func (b *batchReaders) add(items []batchItem) {
	b.mu.Lock()
	b.q = append(b.q, items...)
	n := min(maxReaders-b.running, len(items))
	b.running += max(n, 0)
	b.mu.Unlock()
	for range n {
		go b.read()
	}
}

// read answers queued items until none is left.
func (b *batchReaders) read() {
	for {
		b.mu.Lock()
		if len(b.q) == 0 {
			b.running--
			b.q = nil
			b.mu.Unlock()
			return
		}
		it := b.q[0]
		b.q[0] = batchItem{}
		b.q = b.q[1:]
		b.mu.Unlock()
		*it.ans, *it.err = answerItem(it.root, it.q)
		it.wg.Done()
	}
}

// parseHashBatchAnswer splits a HashBatch answer of n items into one
// Reply per item.
func parseHashBatchAnswer(b []byte, n int) ([]Reply, error) {
	r := reader{b: b}
	if got := r.uvarint(); r.err == nil && got != uint64(n) {
		return nil, fmt.Errorf("hashbatch answer: %d items for %d asked", got, n)
	}
	reps := make([]Reply, n)
	for i := 0; i < n && r.err == nil; i++ {
		st := r.byte()
		s := r.string()
		switch st {
		case 0:
			reps[i].Data = []byte(s)
		case 1:
			reps[i].Err = errors.New(s)
		default:
			return nil, fmt.Errorf("hashbatch answer: item %d: unknown status %d", i, st)
		}
	}
	if r.err != nil || len(r.b) != 0 {
		return nil, errors.New("hashbatch answer: truncated or trailing bytes")
	}
	return reps, nil
}

// batcher gathers HashBlocks queries into HashBatch queries. A task
// about to wait for an answer flushes the queue; the batch goes out at
// once unless maxInFlight batches are being answered already, in which
// case it goes when one of them comes back, with whatever was asked
// meanwhile (up to maxBatchItems; the rest goes next): the questions of
// many files then share one query, one reply and the secondary's
// parallel reads.
type batcher struct {
	mu       sync.Mutex
	qs       []*op.Op
	chs      []chan Reply
	inFlight int
	old      bool // the secondary does not know HashBatch: one query each
	limit    int  // >0: items of the next batch, doubled at each (preProbes)
	once     sync.Once
}

// maxInFlight bounds the batches being answered at once. The secondary
// answers a few queries at once (wire.MaxConcurrentAnswers, 8) and holds
// its stream back while more wait: the listings need room too.
const maxInFlight = 4

// ask queues HashBlocks query q; its reply arrives on the channel once
// the batch holding it was sent (see flush) and answered.
func (r *run) ask(q *op.Op) <-chan Reply {
	b := &r.batch
	ch := make(chan Reply, 1)
	b.mu.Lock()
	if b.old {
		b.mu.Unlock()
		r.st.queries.Add(1)
		return r.e.st.Query(q)
	}
	b.qs, b.chs = append(b.qs, q), append(b.chs, ch)
	full := len(b.qs) >= maxBatchItems
	b.mu.Unlock()
	if full {
		r.send()
	}
	return ch
}

// queuedQueries is how many queries wait for the next batch.
func (r *run) queuedQueries() int {
	r.batch.mu.Lock()
	defer r.batch.mu.Unlock()
	return len(r.batch.qs)
}

func (r *run) inFlight() int {
	r.batch.mu.Lock()
	defer r.batch.mu.Unlock()
	return r.batch.inFlight
}

// flush sends the queued queries, now or when a batch in flight is
// answered.
func (r *run) flush() { r.send() }

// send sends the queued queries as one batch if fewer than maxInFlight
// are being answered.
func (r *run) send() {
	b := &r.batch
	b.mu.Lock()
	if len(b.qs) == 0 || b.inFlight >= maxInFlight {
		b.mu.Unlock()
		return
	}
	// At most one batch's worth (the probes asked when the run began
	// wait here for their turn).
	n := min(len(b.qs), maxBatchItems)
	if b.old {
		n = len(b.qs)
	} else if b.limit > 0 {
		n = min(n, b.limit)
		b.limit = min(2*b.limit, maxBatchItems)
	}
	qs, chs, old := b.qs[:n:n], b.chs[:n:n], b.old
	b.qs, b.chs = b.qs[n:], b.chs[n:]
	if len(b.qs) == 0 {
		b.qs, b.chs = nil, nil
	}
	if !old {
		b.inFlight++
	}
	b.mu.Unlock()
	if err := r.ctx.Err(); err != nil {
		// The run ended: nobody reads the answers.
		for _, ch := range chs {
			ch <- Reply{Err: context.Cause(r.ctx)}
		}
		if !old {
			b.mu.Lock()
			b.inFlight--
			b.mu.Unlock()
		}
		return
	}
	if old {
		for i, q := range qs {
			r.st.queries.Add(1)
			forward(r.e.st.Query(q), chs[i])
		}
		return
	}
	r.st.queries.Add(1)
	var rch <-chan Reply
	if len(qs) == 1 {
		rch = r.e.st.Query(qs[0])
	} else {
		rch = r.e.st.Query(HashBatchQuery(qs))
	}
	go func() {
		var rep Reply
		select {
		case rep = <-rch:
		case <-r.ctx.Done():
			rep.Err = context.Cause(r.ctx)
		}
		r.answered(qs, chs, rep)
		b.mu.Lock()
		b.inFlight--
		b.mu.Unlock()
		// What was asked meanwhile goes now.
		r.send()
	}()
}

// answered hands a batch's answer (or a single query's) to each asker.
func (r *run) answered(qs []*op.Op, chs []chan Reply, rep Reply) {
	b := &r.batch
	if len(qs) == 1 {
		chs[0] <- rep
		return
	}
	var reps []Reply
	err := rep.Err
	if err == nil {
		reps, err = parseHashBatchAnswer(rep.Data, len(qs))
	}
	if err == nil {
		r.st.answerBytes.Add(int64(len(rep.Data)))
		for i, ch := range chs {
			ch <- reps[i]
		}
		return
	}
	if rep.Err != nil && r.ctx.Err() == nil {
		// An older secondary: ask each on its own from now on (placed
		// later in the stream, which an answer tolerates: it only has to
		// come after the task asked).
		b.once.Do(func() {
			r.e.log.Info("resync compare: the secondary does not answer batched hash queries; asking one by one", "err", rep.Err)
		})
		b.mu.Lock()
		b.old = true
		b.mu.Unlock()
		for i, q := range qs {
			r.st.queries.Add(1)
			forward(r.e.st.Query(q), chs[i])
		}
		return
	}
	for _, ch := range chs {
		ch <- Reply{Err: err}
	}
}

func forward(from <-chan Reply, to chan Reply) {
	go func() { to <- <-from }()
}
