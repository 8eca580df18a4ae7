package wire

import (
	"bufio"
	"context"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/tandem-ha/tandem/internal/replica/op"
)

// Defaults of SenderConfig.
const (
	DefaultTimeout = 3 * time.Second
	DefaultMaxLag  = 64 << 20
	DefaultLinger  = time.Millisecond
)

const (
	frameTarget = 1 << 20 // a batch is closed once it holds this much
	frameCap    = frameTarget + 64<<10
	maxReady    = 4            // closed batches waiting for the writer before Submit blocks
	keepFree    = maxReady + 2 // spare frame buffers kept for reuse
	directMax   = 64 << 10     // largest batch Submit sends itself
)

// ErrClosed is what Failed returns after Close.
var ErrClosed = errors.New("replication stream closed")

// ErrPeerTimeout is wrapped by the failure of a peer that made no progress
// within SenderConfig.Timeout.
var ErrPeerTimeout = errors.New("the secondary made no progress in time")

// SenderConfig configures the primary's end of a module's stream.
type SenderConfig struct {
	Cluster, Module, Node string // ours; the secondary checks cluster and module
	Key                   []byte // cluster key, at least 16 bytes
	Epoch                 uint64 // our module epoch; a secondary with a newer one refuses us
	Addr                  string // host:port of the secondary's listener
	// Dialer, when set, opens the connection instead of a plain TCP dial
	// to Addr (the agent routes several streams through one port).
	Dialer func(ctx context.Context) (net.Conn, error)
	// Timeout declares the peer failed when it acknowledges nothing new for
	// this long while ops are outstanding; it also bounds Dial's handshake,
	// Submit's back-pressure and Wait. Default DefaultTimeout.
	Timeout time.Duration
	// MaxLag is how many bytes of unacknowledged ops Submit accepts before
	// blocking. Default DefaultMaxLag. Timeout must cover sending MaxLag
	// over the link, or a slow link reads as a dead peer.
	MaxLag int
	// Linger is how long an op nobody waits for yet (a plain write, a
	// namespace op) may wait for more ops to share its frame. Fsync and
	// SyncAll ops, and every op a Wait needs, leave at once. Default
	// DefaultLinger; negative sends every op at once.
	Linger time.Duration
	// SyncEvery: ops not followed by a SyncAll get one (op.Background:
	// the secondary flushes it while applying the next ops) this long
	// after the last, so the point up to which everything is durable on
	// the secondary follows the stream (the primary's change records wait
	// for it). Fsync ops do not count: they make one file durable, not
	// the ops before them. 0: never.
	SyncEvery time.Duration
	Logger    *slog.Logger // nil: slog.Default()
	// OnAck, when set, is called by the goroutine reading the peer's
	// acknowledgements each time they advance, with the last applied seq
	// and the last flushed one, up to which every op is durable on the
	// secondary (keep it short: acks wait for it).
	OnAck func(applied, flushed uint64)
	// OnFailure is called once, in its own goroutine, when the peer is
	// declared failed: no progress within Timeout, a connection error, or
	// an op the secondary failed to apply. Not called after Close.
	OnFailure func(error)
}

// Sender is the primary's end of a module's stream. Its methods are safe
// for concurrent use.
type Sender struct {
	cfg       SenderConfig
	log       *slog.Logger
	conn      net.Conn
	tx        sealer // writer goroutine only
	rx        opener // reader goroutine only
	peerNode  string
	peerEpoch uint64

	mu          sync.Mutex
	nextSeq     uint64      // seq of the next Submit
	queued      uint64      // last seq encoded for sending
	lastSync    uint64      // last Fsync or SyncAll op queued
	lastSyncAll uint64      // last SyncAll op queued
	syncAllAt   time.Time   // when lastSyncAll was queued
	autoSync    atomic.Bool // a SyncEvery SyncAll is being submitted
	cur         *frame      // batch being filled, nil if none
	linger      *time.Timer
	ready       []*frame
	sending     bool // a goroutine holds the token to seal and write a frame
	free        []*frame
	inflight    []frameRec // closed batches not yet acknowledged, oldest first
	inHead      int
	lagBytes    int
	applied     uint64
	durable     uint64    // last Fsync or SyncAll op done (in order)
	flushed     uint64    // last SyncAll op done: every op up to it is durable
	progress    time.Time // last progress, or when ops became outstanding
	failed      error
	closed      bool
	pending     map[uint64]chan Reply // queries waiting for their answer
	ackCh       chan struct{}         // closed on the next state change; nil when nobody waits
	wake        chan struct{}         // writer wake-up, capacity 1
	done        chan struct{}         // closed on failure or Close
	wg          sync.WaitGroup

	writerWakes atomic.Int64 // the writer's wake-ups (tests)
}

type frame struct {
	buf         []byte
	first, last uint64
	bytes       int
}

type frameRec struct {
	last  uint64
	bytes int
}

// Dial connects to the secondary, authenticates both ends with the cluster
// key and returns a Sender whose first op has seq 1. The handshake is
// bounded by cfg.Timeout and ctx. A refusal is a *RefusedError.
func Dial(ctx context.Context, cfg SenderConfig) (*Sender, error) {
	if len(cfg.Key) < minKeyLen {
		return nil, fmt.Errorf("replica %s: cluster key of %d bytes, need at least %d", cfg.Module, len(cfg.Key), minKeyLen)
	}
	if cfg.Module == "" || cfg.Addr == "" {
		return nil, fmt.Errorf("replica: sender needs a module and a peer address (module %q, address %q)", cfg.Module, cfg.Addr)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.MaxLag <= 0 {
		cfg.MaxLag = DefaultMaxLag
	}
	if cfg.Linger == 0 {
		cfg.Linger = DefaultLinger
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("module", cfg.Module, "peer", cfg.Addr)
	wrap := func(err error) error {
		return fmt.Errorf("replica %s: connect to secondary %s: %w", cfg.Module, cfg.Addr, err)
	}
	var conn net.Conn
	var err error
	if cfg.Dialer != nil {
		dctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
		conn, err = cfg.Dialer(dctx)
		cancel()
	} else {
		d := net.Dialer{Timeout: cfg.Timeout}
		conn, err = d.DialContext(ctx, "tcp", cfg.Addr)
	}
	if err != nil {
		return nil, wrap(err)
	}
	deadline := time.Now().Add(cfg.Timeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	br := bufio.NewReaderSize(conn, 64<<10)
	h := hello{Cluster: cfg.Cluster, Module: cfg.Module, Node: cfg.Node, Epoch: cfg.Epoch, StartSeq: 1}
	acc, c2s, s2c, err := clientHandshake(conn, br, cfg.Key, &h, cfg.Addr)
	if !stop() && err != nil {
		err = ctx.Err()
	}
	if err != nil {
		conn.Close()
		return nil, wrap(err)
	}
	conn.SetDeadline(time.Time{})
	s := newSender(cfg, log, conn, br, c2s, s2c)
	s.peerNode, s.peerEpoch = acc.Node, acc.Epoch
	log.Info("replication stream connected", "peer_node", acc.Node, "epoch", cfg.Epoch, "peer_epoch", acc.Epoch)
	return s, nil
}

func newSender(cfg SenderConfig, log *slog.Logger, conn net.Conn, br *bufio.Reader, c2s, s2c cipher.AEAD) *Sender {
	s := &Sender{
		cfg: cfg, log: log, conn: conn,
		tx:      sealer{aead: c2s},
		rx:      opener{aead: s2c, r: br, max: maxS2C},
		nextSeq: 1,
		wake:    make(chan struct{}, 1),
		done:    make(chan struct{}),
	}
	s.wg.Add(3)
	go s.writer()
	go s.reader()
	go s.watchdog()
	return s
}

// Submit queues o for the secondary and returns its sequence number. o is
// copied (its Data too: the caller may reuse its buffers at once). A write
// larger than MaxOpData is split; the seq returned is its last part's.
// Submit blocks while more than MaxLag bytes are unacknowledged, at most
// Timeout: then the peer is failed. Once the peer failed or the Sender is
// closed, Submit drops the op and returns at once.
func (s *Sender) Submit(o *op.Op) uint64 { return s.submit(o, false, nil) }

// submit queues o; urgent sends it at once; reply, if not nil, receives
// the answer to a query op.
func (s *Sender) submit(o *op.Op, urgent bool, reply chan Reply) uint64 {
	if o.Kind == op.Write && len(o.Data) > MaxOpData {
		part := *o
		var seq uint64
		for data := o.Data; len(data) > 0; {
			n := min(len(data), MaxOpData)
			part.Data = data[:n]
			seq = s.submit(&part, urgent, nil)
			data, part.Off = data[n:], part.Off+int64(n)
		}
		return seq
	}
	size := o.Size()
	s.mu.Lock()
	if s.lagBytes > 0 && s.lagBytes+size > s.cfg.MaxLag && s.usable() {
		s.waitLagLocked(size)
	}
	for len(s.ready) >= maxReady && s.usable() {
		// The writer is behind: wait for it rather than allocate more
		// frames (a frame is reused as soon as TCP has taken it, so the
		// sender holds a few MiB however large max_lag is). A writer
		// stuck in a TCP write is ended by the watchdog.
		ch := s.waitChLocked()
		s.mu.Unlock()
		<-ch
		s.mu.Lock()
	}
	seq := s.nextSeq
	s.nextSeq++
	if !s.usable() {
		err := s.failedLocked()
		s.mu.Unlock()
		if reply != nil {
			reply <- Reply{Err: err}
		}
		return seq
	}
	if len(o.Data) > MaxOpData {
		s.mu.Unlock()
		s.fail(fmt.Errorf("%s: %d bytes of data, more than one op may carry (%d)", o, len(o.Data), MaxOpData))
		if reply != nil {
			reply <- Reply{Err: s.Failed()}
		}
		return seq
	}
	if reply != nil {
		if s.pending == nil {
			s.pending = make(map[uint64]chan Reply)
		}
		s.pending[seq] = reply
	}
	if s.applied == s.queued {
		s.progress = time.Now() // ops outstanding from now on: start the clock
	}
	f := s.cur
	if f != nil && len(f.buf)+size > frameTarget {
		s.closeCurLocked()
		f = nil
	}
	if f == nil {
		f = s.newFrameLocked(seq)
	}
	f.buf = AppendOp(f.buf, o)
	f.last, f.bytes = seq, f.bytes+size
	s.queued = seq
	if o.Kind == op.Fsync || o.Kind == op.SyncAll {
		s.lastSync = seq
	}
	if o.Kind == op.SyncAll {
		s.lastSyncAll, s.syncAllAt = seq, time.Now()
	}
	urgent = urgent || o.Kind == op.Fsync || o.Kind == op.SyncAll || s.cfg.Linger < 0
	s.lagBytes += size
	if len(f.buf) >= frameTarget {
		s.closeCurLocked()
	}
	if !urgent {
		// Nobody waits for this op yet: let the next ones join its frame
		// (one seal, one TCP write and one ack for many small writes). A
		// Wait that needs it, or the linger timer, sends it.
		if s.cur != nil && s.cur.first == seq {
			s.armLingerLocked()
		}
		wake := len(s.ready) > 0 && !s.sending
		s.mu.Unlock()
		if wake {
			s.wakeWriter()
		}
		return seq
	}
	s.flushLocked() // unlocks
	return seq
}

// flushLocked, s.mu held, sends everything queued: itself when nobody is
// sending and the batch is small (waking the writer costs tens of µs on
// an idle machine), else through the writer, which seals big batches while
// the next is being filled. It unlocks s.mu.
func (s *Sender) flushLocked() {
	var direct *frame
	if !s.sending && len(s.ready) == 0 && s.cur != nil && len(s.cur.buf) <= directMax {
		direct = s.takeFrameLocked()
	} else if s.cur != nil {
		s.closeCurLocked()
	}
	wake := direct == nil
	s.mu.Unlock()
	if direct != nil {
		// Only frames closed while we sent need the writer: waking it
		// for nothing costs a thread wake-up per synced write, and a
		// runnable goroutine in the way of the one the ack must wake.
		ok, more := s.sendFrame(direct)
		wake = ok && more
	}
	if wake {
		s.wakeWriter()
	}
}

func (s *Sender) wakeWriter() {
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// armLingerLocked starts the linger of a new partial batch.
func (s *Sender) armLingerLocked() {
	if s.linger == nil {
		s.linger = time.AfterFunc(s.cfg.Linger, s.lingerDone)
		return
	}
	s.linger.Reset(s.cfg.Linger)
}

// lingerDone sends the partial batch. A timer left over from an earlier
// batch only sends the current one a little early.
func (s *Sender) lingerDone() {
	s.mu.Lock()
	if s.cur == nil || !s.usable() {
		s.mu.Unlock()
		return
	}
	s.flushLocked()
}

// waitLagLocked blocks, s.mu held, until the lag leaves room for size more
// bytes, the Sender stops, or Timeout passes (the peer is then failed).
func (s *Sender) waitLagLocked(size int) {
	timer := time.NewTimer(s.cfg.Timeout)
	defer timer.Stop()
	for s.lagBytes > 0 && s.lagBytes+size > s.cfg.MaxLag && s.usable() {
		ch := s.waitChLocked()
		lag := s.lagBytes
		s.mu.Unlock()
		select {
		case <-ch:
		case <-timer.C:
			s.fail(fmt.Errorf("%w: over %d bytes unacknowledged (limit %d) for %s", ErrPeerTimeout, lag, s.cfg.MaxLag, s.cfg.Timeout))
		}
		s.mu.Lock()
	}
}

func (s *Sender) newFrameLocked(first uint64) *frame {
	var f *frame
	if n := len(s.free); n > 0 {
		f = s.free[n-1]
		s.free = s.free[:n-1]
		f.buf = f.buf[:0]
	} else {
		f = &frame{buf: make([]byte, 0, frameCap)}
	}
	f.buf = append(f.buf, 0, 0, 0, 0, frameBatch)
	f.buf = binary.BigEndian.AppendUint64(f.buf, first)
	f.first, f.bytes = first, 0
	s.cur = f
	return f
}

func (s *Sender) closeCurLocked() {
	f := s.cur
	s.cur = nil
	s.ready = append(s.ready, f)
	s.inflight = append(s.inflight, frameRec{last: f.last, bytes: f.bytes})
}

func (s *Sender) usable() bool { return s.failed == nil && !s.closed }

// waitChLocked returns a channel closed at the next state change.
func (s *Sender) waitChLocked() chan struct{} {
	if s.ackCh == nil {
		s.ackCh = make(chan struct{})
	}
	return s.ackCh
}

func (s *Sender) notifyLocked() {
	if s.ackCh != nil {
		close(s.ackCh)
		s.ackCh = nil
	}
}

// Wait blocks until the secondary applied op seq, and with durable until
// it also completed an Fsync or SyncAll op at or after seq: to make a
// file's data durable, submit its Fsync op and wait for that op's seq. If
// no such op was submitted after seq, Wait submits a SyncAll (syncfs on the
// secondary) and waits for it. Wait returns nil at once when the Sender has
// failed or is closed: the module then runs alone and must not be blocked.
// It never blocks longer than Timeout: then the peer is declared failed and
// Wait returns nil. An error means seq was never submitted.
func (s *Sender) Wait(seq uint64, durable bool) error {
	if durable {
		return s.wait(seq, waitSynced)
	}
	return s.wait(seq, waitApplied)
}

// WaitFlushed blocks until every op up to seq is durable on the
// secondary: a SyncAll at or after seq is done (Wait's durable also
// accepts an Fsync op, which flushes one file). It submits that SyncAll
// when none was, and otherwise behaves as Wait.
func (s *Sender) WaitFlushed(seq uint64) error { return s.wait(seq, waitFlushed) }

type waitFor int

const (
	waitApplied waitFor = iota
	waitSynced          // an Fsync or SyncAll op at or after seq done
	waitFlushed         // a SyncAll op at or after seq done
)

func (s *Sender) wait(seq uint64, what waitFor) error {
	if seq == 0 {
		return nil
	}
	var timer *time.Timer
	s.mu.Lock()
	if s.usable() && seq < s.nextSeq && ((what == waitSynced && s.lastSync < seq) || (what == waitFlushed && s.lastSyncAll < seq)) {
		s.mu.Unlock()
		seq = s.Submit(&op.Op{Kind: op.SyncAll})
		s.mu.Lock()
	}
	for {
		if !s.usable() {
			s.mu.Unlock()
			return nil
		}
		if seq >= s.nextSeq {
			n := s.nextSeq
			s.mu.Unlock()
			return fmt.Errorf("replica %s: wait for op %d, but only %d ops were submitted", s.cfg.Module, seq, n-1)
		}
		got := s.applied
		switch what {
		case waitSynced:
			got = max(s.durable, s.flushed)
		case waitFlushed:
			got = s.flushed
		}
		if got >= seq {
			s.mu.Unlock()
			return nil
		}
		if (s.cur != nil && s.cur.first <= seq) || (len(s.ready) > 0 && !s.sending) {
			s.flushLocked() // the op is still lingering: send it now
			s.mu.Lock()
			continue
		}
		ch := s.waitChLocked()
		s.mu.Unlock()
		if timer == nil {
			timer = time.NewTimer(s.cfg.Timeout)
			defer timer.Stop()
		}
		select {
		case <-ch:
		case <-timer.C:
			kind := "applied"
			if what != waitApplied {
				kind = "made durable"
			}
			s.fail(fmt.Errorf("%w: op %d not %s within %s", ErrPeerTimeout, seq, kind, s.cfg.Timeout))
		}
		s.mu.Lock()
	}
}

// Query submits q, an op the secondary answers instead of applying (a
// query of the resynchronisation), and returns its seq and a channel that
// receives the answer once. The op is sent at once, not lingering. When
// the Sender fails or is closed the channel receives an error.
func (s *Sender) Query(q *op.Op) (uint64, <-chan Reply) {
	ch := make(chan Reply, 1)
	return s.submit(q, true, ch), ch
}

func (s *Sender) failedLocked() error {
	if s.failed != nil {
		return s.failed
	}
	return ErrClosed
}

// Peer returns the secondary's node name and its epoch at the handshake.
func (s *Sender) Peer() (node string, epoch uint64) { return s.peerNode, s.peerEpoch }

// Lag returns the number and approximate size of ops not yet acknowledged.
func (s *Sender) Lag() (ops int, bytes int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return int(s.queued - s.applied), s.lagBytes
}

// Acked returns the last applied seq acknowledged and the last durable
// one: the last Fsync or SyncAll op done (Wait's durable point).
func (s *Sender) Acked() (applied, durable uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.applied, max(s.durable, s.flushed)
}

// Flushed returns the last SyncAll op acknowledged: every op up to it is
// durable on the secondary.
func (s *Sender) Flushed() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.flushed
}

// Failed returns why the peer was declared failed, ErrClosed after Close,
// or nil while the stream is healthy.
func (s *Sender) Failed() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failed != nil {
		return s.failed
	}
	if s.closed {
		return ErrClosed
	}
	return nil
}

// Done is closed when the Sender fails or is closed.
func (s *Sender) Done() <-chan struct{} { return s.done }

// Close stops the stream without draining it: queued ops are dropped and
// pending Waits return. OnFailure is not called.
func (s *Sender) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	if s.linger != nil {
		s.linger.Stop()
	}
	if s.failed == nil {
		close(s.done)
	}
	s.notifyLocked()
	s.releaseQueriesLocked(ErrClosed)
	s.mu.Unlock()
	err := s.conn.Close()
	s.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	return err
}

// fail declares the peer failed (once) and releases everyone waiting.
func (s *Sender) fail(err error) {
	s.mu.Lock()
	if !s.usable() {
		s.mu.Unlock()
		return
	}
	err = fmt.Errorf("replica %s: secondary %s failed: %w", s.cfg.Module, s.cfg.Addr, err)
	s.failed = err
	close(s.done)
	s.notifyLocked()
	s.releaseQueriesLocked(err)
	ops, bytes := int(s.queued-s.applied), s.lagBytes
	s.mu.Unlock()
	s.conn.Close()
	s.log.Warn("replication peer failed", "err", err, "unacked_ops", ops, "unacked_bytes", bytes)
	if s.cfg.OnFailure != nil {
		go s.cfg.OnFailure(err)
	}
}

// releaseQueriesLocked answers every pending query with err.
func (s *Sender) releaseQueriesLocked(err error) {
	for seq, ch := range s.pending {
		ch <- Reply{Err: err}
		delete(s.pending, seq)
	}
}

// writer sends queued frames whenever no Submit is sending one itself.
func (s *Sender) writer() {
	defer s.wg.Done()
	for {
		s.mu.Lock()
		for (s.sending || len(s.ready) == 0) && s.usable() {
			s.mu.Unlock()
			select {
			case <-s.wake:
				s.writerWakes.Add(1)
			case <-s.done:
			}
			s.mu.Lock()
		}
		if !s.usable() {
			s.mu.Unlock()
			return
		}
		f := s.takeFrameLocked()
		s.mu.Unlock()
		if ok, _ := s.sendFrame(f); !ok {
			return
		}
	}
}

// takeFrameLocked pops the next frame to send, closing the partial batch
// when nothing else is queued, and takes the sending token. Nil if there
// is nothing to send.
func (s *Sender) takeFrameLocked() *frame {
	if len(s.ready) == 0 {
		if s.cur == nil {
			return nil
		}
		s.closeCurLocked()
	}
	f := s.ready[0]
	copy(s.ready, s.ready[1:])
	s.ready[len(s.ready)-1] = nil
	s.ready = s.ready[:len(s.ready)-1]
	s.sending = true
	return f
}

// sendFrame seals and writes f, then gives the sending token back. Frames
// are sealed and written under the token, so in counter and seq order.
// more says whether closed frames wait to be sent.
func (s *Sender) sendFrame(f *frame) (ok, more bool) {
	out := s.tx.seal(f.buf)
	_, err := s.conn.Write(out)
	s.mu.Lock()
	s.sending = false
	if len(s.free) < keepFree && cap(out) <= 2*frameCap {
		f.buf = out[:0]
		s.free = append(s.free, f)
	}
	s.notifyLocked() // a Submit may wait for room in the ready queue
	more = len(s.ready) > 0
	s.mu.Unlock()
	if err != nil {
		// A secondary that failed to apply an op (a full disk) sends its
		// reason and closes: our next write may break first. The reader
		// gets a moment to report the peer's reason rather than ours.
		t := time.NewTimer(sendFailGrace)
		select {
		case <-s.done:
		case <-t.C:
		}
		t.Stop()
		s.fail(fmt.Errorf("send: %w", err))
		return false, false
	}
	return true, more
}

// sendFailGrace is how long a failed send waits for the reader to report
// why the peer closed the connection.
const sendFailGrace = 200 * time.Millisecond

func (s *Sender) reader() {
	defer s.wg.Done()
	buf := make([]byte, 0, 4096)
	for {
		plain, nb, err := s.rx.read(buf)
		buf = nb
		if err != nil {
			s.fail(fmt.Errorf("receive acks: %w", err))
			return
		}
		if len(plain) > 0 && plain[0] == frameReply {
			seq, r, err := parseReply(plain)
			if err != nil {
				s.fail(err)
				return
			}
			s.mu.Lock()
			ch, ok := s.pending[seq]
			delete(s.pending, seq)
			s.mu.Unlock()
			if !ok {
				s.fail(fmt.Errorf("answer to op %d, which is not a pending query", seq))
				return
			}
			ch <- r
			continue
		}
		a, err := parseAck(plain)
		if err != nil {
			s.fail(err)
			return
		}
		s.mu.Lock()
		if a.Applied > s.queued || a.Durable > a.Applied || a.Flushed > a.Applied {
			s.mu.Unlock()
			s.fail(fmt.Errorf("ack of op %d (durable %d, flushed %d) beyond the last op sent (%d)", a.Applied, a.Durable, a.Flushed, s.queued))
			return
		}
		if a.Applied > s.applied {
			s.applied = a.Applied
			s.progress = time.Now()
			for s.inHead < len(s.inflight) && s.inflight[s.inHead].last <= a.Applied {
				s.lagBytes -= s.inflight[s.inHead].bytes
				s.inHead++
			}
			if s.inHead == len(s.inflight) {
				s.inflight, s.inHead = s.inflight[:0], 0
			} else if s.inHead > 1024 && s.inHead > len(s.inflight)/2 {
				n := copy(s.inflight, s.inflight[s.inHead:])
				s.inflight, s.inHead = s.inflight[:n], 0
			}
			if s.applied == s.queued && s.cur == nil {
				s.lagBytes = 0 // guard against drift
			}
		}
		if a.Durable > s.durable {
			s.durable = a.Durable
		}
		if a.Flushed > s.flushed {
			s.flushed = a.Flushed
		}
		applied, flushed := s.applied, s.flushed
		s.notifyLocked()
		s.mu.Unlock()
		if s.cfg.OnAck != nil {
			s.cfg.OnAck(applied, flushed)
		}
		if a.ErrSeq != 0 {
			s.fail(&ApplyError{Seq: a.ErrSeq, Errno: errnoOf(a.Errno), Msg: a.Msg})
			return
		}
	}
}

// watchdog fails the peer when ops are outstanding and nothing was
// acknowledged for Timeout. It polls at a twentieth of Timeout, so the
// failure is declared within 1.05 Timeout.
func (s *Sender) watchdog() {
	defer s.wg.Done()
	tick := s.cfg.Timeout / 20
	if s.cfg.SyncEvery > 0 {
		tick = min(tick, s.cfg.SyncEvery/2)
	}
	t := time.NewTicker(max(tick, time.Millisecond))
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case now := <-t.C:
			s.mu.Lock()
			stuck := s.applied < s.queued && now.Sub(s.progress) > s.cfg.Timeout
			n := s.queued - s.applied
			needSync := s.cfg.SyncEvery > 0 && s.lastSyncAll < s.queued && now.Sub(s.syncAllAt) >= s.cfg.SyncEvery
			s.mu.Unlock()
			if stuck {
				s.fail(fmt.Errorf("%w: %d ops unacknowledged for %s", ErrPeerTimeout, n, s.cfg.Timeout))
			} else if needSync && s.autoSync.CompareAndSwap(false, true) {
				// Not from here: a Submit may wait for room, and only this
				// goroutine ends a stuck peer.
				go func() {
					defer s.autoSync.Store(false)
					s.Submit(&op.Op{Kind: op.SyncAll, Flags: op.Background})
				}()
			}
		}
	}
}
