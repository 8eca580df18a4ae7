package wire

import (
	"bufio"
	"context"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/tandem-ha/tandem/internal/replica/apply"
	"github.com/tandem-ha/tandem/internal/replica/op"
)

const (
	handshakeTimeout = 10 * time.Second
	ackEvery         = 2 * time.Millisecond // ack at least this often while applying
	finalAckTimeout  = 2 * time.Second
	rxQueue          = 4 // decrypted batches waiting to be applied
	// MaxConcurrentAnswers bounds the queries a receiver answers at once;
	// more wait (and hold the apply loop back).
	MaxConcurrentAnswers = 8
)

// ReceiverConfig configures the secondary's end of a module's stream.
type ReceiverConfig struct {
	Cluster, Module, Node string
	Key                   []byte        // cluster key, at least 16 bytes
	Epoch                 func() uint64 // this node's current epoch for the module
	Applier               *apply.Applier
	Logger                *slog.Logger // nil: slog.Default()
	// OnError is called (synchronously, from the session's goroutine) when
	// a session ends on an error: an op that failed to apply (disk full:
	// errors.Is(err, syscall.ENOSPC)), a frame that failed authentication,
	// a protocol violation. Not for refused handshakes (logged) nor for a
	// primary that disconnects.
	OnError func(error)

	// Answer answers a query op (op.Query) of the resynchronisation from
	// this node's copy. It runs in its own goroutine, up to
	// MaxConcurrentAnswers at once, while later ops go on being applied
	// (the primary's compare is correct with an answer from any moment
	// after the query). The op is a copy the function may keep. Nil: every
	// query is answered with an error.
	Answer func(q *op.Op) ([]byte, error)

	// Apply, when set, replaces Applier.Apply (the agent wraps it to see
	// the end-of-resync marker; tests use it to inject failures). The op
	// and its Data (which aliases the receive buffer) are valid only
	// during the call.
	Apply func(*op.Op) error

	runFlush func(*apply.Flush) error // tests: replaces Flush.Run
}

// Serve accepts replication streams for one module on ln until ctx is done
// (then it returns nil) or ln fails. It runs one session at a time: a new
// authenticated stream whose epoch is at least the current session's and
// this node's replaces the current session, after that session's op in
// progress completes. Ops are applied strictly in sequence order; the
// applied seq is acknowledged after each batch and at least every 2 ms
// while applying, the durable seq after each Fsync/SyncAll op, the
// flushed seq after each SyncAll (a background one, op.Background, once
// its flush is done: it runs beside the ops after it). The first op that
// fails to apply, or flush, is reported in an ack and ends the session.
// The Applier is not closed.
func Serve(ctx context.Context, ln net.Listener, cfg ReceiverConfig) error {
	if len(cfg.Key) < minKeyLen {
		return fmt.Errorf("replica %s: cluster key of %d bytes, need at least %d", cfg.Module, len(cfg.Key), minKeyLen)
	}
	if cfg.Epoch == nil || (cfg.Applier == nil && cfg.Apply == nil) || cfg.Module == "" {
		return fmt.Errorf("replica %q: receiver needs a module, an epoch source and an applier", cfg.Module)
	}
	srv := &server{cfg: cfg, apply: cfg.Apply, conns: make(map[net.Conn]struct{})}
	if srv.apply == nil {
		srv.apply = cfg.Applier.Apply
	}
	srv.log = cfg.Logger
	if srv.log == nil {
		srv.log = slog.Default()
	}
	srv.log = srv.log.With("module", cfg.Module)
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	var err error
	for {
		conn, aerr := ln.Accept()
		if aerr != nil {
			var ne net.Error
			if ctx.Err() == nil && errors.As(aerr, &ne) && ne.Timeout() {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			if ctx.Err() == nil {
				err = fmt.Errorf("replica %s: accept replication streams on %s: %w", cfg.Module, ln.Addr(), aerr)
			}
			break
		}
		if !srv.track(conn) {
			conn.Close()
			break
		}
		wg.Go(func() {
			defer srv.untrack(conn)
			srv.handle(conn)
		})
	}
	srv.shutdown()
	wg.Wait()
	return err
}

type server struct {
	cfg         ReceiverConfig
	log         *slog.Logger
	apply       func(*op.Op) error
	lastApplied atomic.Uint64

	mu       sync.Mutex
	cur      *session
	conns    map[net.Conn]struct{}
	stopping bool
}

func (srv *server) track(c net.Conn) bool {
	srv.mu.Lock()
	defer srv.mu.Unlock()
	if srv.stopping {
		return false
	}
	srv.conns[c] = struct{}{}
	return true
}

func (srv *server) untrack(c net.Conn) {
	srv.mu.Lock()
	delete(srv.conns, c)
	srv.mu.Unlock()
	c.Close()
}

func (srv *server) shutdown() {
	srv.mu.Lock()
	srv.stopping = true
	for c := range srv.conns {
		c.Close()
	}
	cur := srv.cur
	srv.mu.Unlock()
	if cur != nil {
		cur.stop()
	}
}

type session struct {
	srv     *server
	conn    net.Conn
	node    string
	epoch   uint64
	stopped atomic.Bool
	stopCh  chan struct{}
	once    sync.Once
	done    chan struct{} // closed when the session no longer uses the Applier
	poke    chan struct{}
	applied atomic.Uint64
	synced  atomic.Uint64 // last Fsync or SyncAll op applied and flushed in order
	flushed atomic.Uint64 // last SyncAll op made durable: every op up to it is

	// Background SyncAll ops (op.Background) flush while later ops apply.
	flushes    chan pendingFlush
	flushing   sync.WaitGroup // flushes queued and not yet done
	flushFail  chan *sessionError
	flusherEnd chan struct{}

	ackMu   sync.Mutex
	tx      sealer
	ackBuf  []byte
	lastAck ack

	answering chan struct{} // semaphore of the Answer goroutines
	answers   sync.WaitGroup
}

func (s *session) stop() {
	s.once.Do(func() {
		s.stopped.Store(true)
		close(s.stopCh)
		s.conn.Close()
	})
}

// sendAck sends the current applied, durable and flushed seqs if they
// changed, or final's error.
func (s *session) sendAck(final *sessionError) error {
	s.ackMu.Lock()
	defer s.ackMu.Unlock()
	// Each is stored after applied: loaded before it, neither passes it.
	a := ack{Durable: s.synced.Load(), Flushed: s.flushed.Load()}
	a.Applied = s.applied.Load()
	if final != nil {
		a.ErrSeq, a.Errno, a.Msg = final.seq, uint32(final.errno), final.err.Error()
	}
	if a == s.lastAck {
		return nil
	}
	s.ackBuf = appendAck(append(s.ackBuf[:0], 0, 0, 0, 0), &a)
	out := s.tx.seal(s.ackBuf)
	_, err := s.conn.Write(out)
	s.ackBuf = out[:0]
	s.lastAck = a
	return err
}

// sendReply sends the answer to query seq.
func (s *session) sendReply(seq uint64, data []byte, err error) error {
	if err == nil && len(data) > MaxReply {
		err = fmt.Errorf("answer of %d bytes, more than %d", len(data), MaxReply)
	}
	s.ackMu.Lock()
	defer s.ackMu.Unlock()
	buf := appendReply([]byte{0, 0, 0, 0}, seq, data, err)
	_, werr := s.conn.Write(s.tx.seal(buf))
	return werr
}

// answer runs the Answer hook for query q (seq) in a goroutine, waiting
// for a free slot first. False when the session stopped meanwhile.
func (s *session) answer(seq uint64, o *op.Op) bool {
	select {
	case s.answering <- struct{}{}:
	case <-s.stopCh:
		return false
	}
	q := *o
	q.Data = append([]byte(nil), o.Data...)
	s.answers.Add(1)
	go func() {
		defer s.answers.Done()
		defer func() { <-s.answering }()
		var data []byte
		err := errors.New("this node does not answer resynchronisation queries")
		if h := s.srv.cfg.Answer; h != nil {
			data, err = h(&q)
		}
		if s.stopped.Load() {
			return
		}
		if werr := s.sendReply(seq, data, err); werr != nil {
			s.stop()
		}
	}()
	return true
}

func (s *session) pokeAck() {
	select {
	case s.poke <- struct{}{}:
	default:
	}
}

type refusal struct {
	code   RefuseCode
	reason string
}

// handle runs the handshake and, if it succeeds, the session.
func (srv *server) handle(conn net.Conn) {
	remote := conn.RemoteAddr().String()
	key := srv.cfg.Key
	conn.SetDeadline(time.Now().Add(handshakeTimeout))
	br := bufio.NewReaderSize(conn, 256<<10)
	serverNonce := randomNonce()
	challenge := challengeBody(&serverNonce)
	if err := writeMsg(conn, challenge); err != nil {
		srv.log.Debug("replication handshake failed", "from", remote, "err", err)
		return
	}
	msg, err := readMsg(br)
	if err != nil {
		srv.log.Debug("replication handshake failed", "from", remote, "err", err)
		return
	}
	h, v, macOK, perr := parseHello(msg, key, challenge)
	var ref *refusal
	switch {
	case !macOK:
		ref = &refusal{RefusedAuth, "the hello failed authentication: the nodes do not have the same cluster key"}
	case v != version:
		ref = &refusal{RefusedVersion, fmt.Sprintf("this node speaks replication protocol version %d, the sender %d: upgrade both nodes to the same release", version, v)}
	case perr != nil:
		ref = &refusal{RefusedOther, perr.Error()}
	case h.Cluster != srv.cfg.Cluster:
		ref = &refusal{RefusedCluster, fmt.Sprintf("this node belongs to cluster %q, not %q", srv.cfg.Cluster, h.Cluster)}
	case h.Module != srv.cfg.Module:
		ref = &refusal{RefusedModule, fmt.Sprintf("this listener receives module %q, not %q", srv.cfg.Module, h.Module)}
	default:
		if e := srv.cfg.Epoch(); h.Epoch < e {
			ref = &refusal{RefusedStaleEpoch, fmt.Sprintf("the sender's epoch %d is older than this node's %d: it is not the current primary", h.Epoch, e)}
		}
	}
	var sess *session
	if ref == nil {
		sess, ref = srv.install(conn, &h)
	}
	if ref != nil {
		srv.log.Warn("replication stream refused", "from", remote, "node", h.Node, "epoch", h.Epoch, "reason", ref.code.String(), "detail", ref.reason)
		_ = writeMsg(conn, responseMAC(key, challenge, msg, refuseBody(ref.code, ref.reason)))
		return
	}
	defer srv.finish(sess)
	acc := accept{Epoch: srv.cfg.Epoch(), LastApplied: srv.lastApplied.Load(), Node: srv.cfg.Node}
	if err := writeMsg(conn, responseMAC(key, challenge, msg, acceptBody(&acc))); err != nil {
		srv.log.Warn("replication handshake failed", "from", remote, "node", h.Node, "err", err)
		return
	}
	c2s, s2c, err := sessionKeys(key, &h.Nonce, &serverNonce)
	if err != nil {
		srv.log.Error("replication session keys", "err", err)
		return
	}
	conn.SetDeadline(time.Time{})
	srv.log.Info("replication stream accepted", "from", remote, "node", h.Node, "epoch", h.Epoch, "last_applied", acc.LastApplied)
	sess.run(br, c2s, s2c, h.StartSeq)
}

// install makes a new session current, after stopping the previous one and
// waiting until it no longer applies ops.
func (srv *server) install(conn net.Conn, h *hello) (*session, *refusal) {
	srv.mu.Lock()
	if srv.stopping {
		srv.mu.Unlock()
		return nil, &refusal{RefusedOther, "the receiver is shutting down"}
	}
	old := srv.cur
	if old != nil && old.epoch > h.Epoch {
		srv.mu.Unlock()
		return nil, &refusal{RefusedStaleEpoch, fmt.Sprintf("the sender's epoch %d is older than the current stream's %d (from %s)", h.Epoch, old.epoch, old.node)}
	}
	s := &session{srv: srv, conn: conn, node: h.Node, epoch: h.Epoch,
		stopCh: make(chan struct{}), done: make(chan struct{}), poke: make(chan struct{}, 1),
		answering: make(chan struct{}, MaxConcurrentAnswers),
		flushes:   make(chan pendingFlush, maxPendingFlushes), flushFail: make(chan *sessionError, 1),
		flusherEnd: make(chan struct{})}
	srv.cur = s
	srv.mu.Unlock()
	if old != nil {
		srv.log.Info("replication stream replaced", "old_node", old.node, "old_epoch", old.epoch, "node", h.Node, "epoch", h.Epoch)
		old.stop()
		<-old.done
	}
	return s, nil
}

func (srv *server) finish(s *session) {
	s.stop()
	srv.mu.Lock()
	if srv.cur == s {
		srv.cur = nil
	}
	srv.mu.Unlock()
	close(s.done)
}

type rxFrame struct {
	plain, buf []byte
}

// sessionError is why a session ended, and what to tell the sender.
type sessionError struct {
	seq   uint64 // the op concerned (the next one for stream errors)
	errno syscall.Errno
	err   error
}

func (s *session) run(br *bufio.Reader, c2s, s2c cipher.AEAD, startSeq uint64) {
	log := s.srv.log.With("node", s.node, "epoch", s.epoch)
	frames := make(chan rxFrame, rxQueue)
	pool := make(chan []byte, rxQueue+2)
	var readErr error
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		defer close(frames)
		rx := opener{aead: c2s, r: br, max: maxC2S}
		for {
			var buf []byte
			select {
			case buf = <-pool:
			default:
			}
			plain, nb, err := rx.read(buf)
			if err != nil {
				readErr = err
				return
			}
			select {
			case frames <- rxFrame{plain, nb}:
			case <-s.stopCh:
				return
			}
		}
	}()

	s.tx = sealer{aead: s2c}
	ackStop := make(chan struct{})
	ackDone := make(chan struct{})
	go func() { // acks while busy; when idle, applyLoop sends them itself
		defer close(ackDone)
		for {
			select {
			case <-s.poke:
				if err := s.sendAck(nil); err != nil {
					s.stop()
					return
				}
			case <-ackStop:
				return
			}
		}
	}()

	go s.flusher()
	serr := s.applyLoop(frames, pool, startSeq)
	close(s.flushes)
	<-s.flusherEnd // the final ack says how far the copy is durable
	if serr == nil && !s.stopped.Load() {
		select {
		case serr = <-s.flushFail:
		default:
		}
	}
	wasStopped := s.stopped.Load()
	if serr == nil && !wasStopped {
		<-readDone // frames closed: the reader said why
		serr = s.readFailure(readErr, startSeq)
	}
	close(ackStop)
	<-ackDone
	if serr != nil && s.srv.cfg.OnError != nil {
		// Before the primary hears of the failure (and may go on alone,
		// acknowledging writes this copy lacks), this node must have
		// recorded that its copy is no longer up to date.
		s.srv.cfg.OnError(serr.err)
	}
	s.conn.SetWriteDeadline(time.Now().Add(finalAckTimeout))
	_ = s.sendAck(serr)
	s.stop()
	<-readDone
	s.answers.Wait() // none may use the copy once the session is done
	switch {
	case serr != nil:
		log.Error("replication stream failed", "err", serr.err, "applied", s.applied.Load())
	case wasStopped:
		log.Info("replication stream stopped", "applied", s.applied.Load())
	default:
		log.Info("replication stream closed by the primary", "applied", s.applied.Load(), "err", readErr)
	}
}

// readFailure classifies why the reader stopped: a closed connection is
// the primary's business; anything else is an error of the stream.
func (s *session) readFailure(err error, startSeq uint64) *sessionError {
	if err == nil || s.stopped.Load() || errors.Is(err, io.EOF) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.ErrUnexpectedEOF) {
		return nil
	}
	next := max(s.applied.Load()+1, startSeq)
	return &sessionError{seq: next, err: fmt.Errorf("replica %s: stream from %s: %w", s.srv.cfg.Module, s.node, err)}
}

// pendingFlush is a background SyncAll (seq) being made durable.
type pendingFlush struct {
	seq   uint64
	flush *apply.Flush
}

// maxPendingFlushes bounds the background SyncAlls queued at once; more
// wait (and hold the apply loop back).
const maxPendingFlushes = 2

// flusher runs the background flushes in order; each one done advances
// the flushed seq and is acknowledged at once. A stopped session still
// runs them: the Applier no longer tracks what they hold, so the next
// session's SyncAll would not flush it. After a failure it only releases
// the rest: the apply loop ends the session, and the copy is outdated.
func (s *session) flusher() {
	defer close(s.flusherEnd)
	failed := false
	for pf := range s.flushes {
		run := (*apply.Flush).Run
		if h := s.srv.cfg.runFlush; h != nil {
			run = h
		}
		if failed {
			pf.flush.Release()
		} else if err := run(pf.flush); err != nil {
			failed = true
			var errno syscall.Errno
			errors.As(err, &errno)
			s.flushFail <- &sessionError{seq: pf.seq, errno: errno,
				err: fmt.Errorf("replica %s: op %d: flush %s: %w", s.srv.cfg.Module, pf.seq, op.SyncAll, err)}
		} else {
			s.flushed.Store(pf.seq)
			if !s.stopped.Load() {
				if err := s.sendAck(nil); err != nil {
					s.stop()
				}
			}
		}
		s.flushing.Done()
	}
}

// syncOp applies Fsync or SyncAll op o (seq), or for a background SyncAll
// hands its flush to the flusher. A SyncAll that someone waits for first
// waits for the background flushes before it: its ack says every op up
// to it is durable.
func (s *session) syncOp(o *op.Op, seq uint64) error {
	background := o.Kind == op.SyncAll && o.Flags&op.Background != 0
	if background && s.srv.cfg.Applier != nil {
		f, err := s.srv.cfg.Applier.StartFlush()
		if err != nil {
			return fmt.Errorf("apply %s: %w", o, err)
		}
		// Applied before the flusher can say it is durable.
		s.applied.Store(seq)
		s.srv.lastApplied.Store(seq)
		s.flushing.Add(1)
		select {
		case s.flushes <- pendingFlush{seq, f}:
			return nil
		case <-s.stopCh:
			s.flushing.Done()
			return f.Run() // as the flusher would: nobody else flushes it
		}
	}
	if o.Kind == op.SyncAll {
		s.flushing.Wait()
	}
	if err := s.srv.apply(o); err != nil {
		return err
	}
	s.applied.Store(seq) // first: an ack never says durable beyond applied
	s.srv.lastApplied.Store(seq)
	if o.Kind == op.SyncAll {
		s.flushed.Store(seq)
	}
	s.synced.Store(seq)
	return nil
}

func (s *session) applyLoop(frames <-chan rxFrame, pool chan<- []byte, next uint64) *sessionError {
	mod := s.srv.cfg.Module
	var o op.Op
	lastAck := time.Now()
	for {
		var fr rxFrame
		var ok bool
		select {
		case fr, ok = <-frames:
		case serr := <-s.flushFail:
			return serr
		}
		if !ok {
			return nil
		}
		p := fr.plain
		if len(p) < 9 || p[0] != frameBatch {
			return &sessionError{seq: next, err: fmt.Errorf("replica %s: stream from %s: unexpected frame type %q", mod, s.node, p[:min(1, len(p))])}
		}
		if first := binary.BigEndian.Uint64(p[1:]); first != next {
			return &sessionError{seq: next, err: fmt.Errorf("replica %s: stream from %s: batch starts at op %d, expected %d", mod, s.node, first, next)}
		}
		for p = p[9:]; len(p) > 0; {
			if s.stopped.Load() {
				return nil
			}
			n, err := DecodeOp(p, &o)
			if err != nil {
				return &sessionError{seq: next, err: fmt.Errorf("replica %s: stream from %s: op %d: %w", mod, s.node, next, err)}
			}
			p = p[n:]
			switch {
			case o.Kind == op.Query:
				if !s.answer(next, &o) {
					return nil
				}
			case o.Kind == op.Fsync || o.Kind == op.SyncAll:
				err = s.syncOp(&o, next)
			default:
				err = s.srv.apply(&o)
			}
			if err != nil {
				var errno syscall.Errno
				errors.As(err, &errno)
				return &sessionError{seq: next, errno: errno, err: fmt.Errorf("replica %s: op %d: %w", mod, next, err)}
			}
			s.applied.Store(next)
			s.srv.lastApplied.Store(next)
			if s.synced.Load() == next {
				// Someone waits for this: answer now, not via the acker.
				if err := s.sendAck(nil); err != nil {
					s.stop()
				}
				lastAck = time.Now()
			} else if now := time.Now(); now.Sub(lastAck) >= ackEvery {
				s.pokeAck()
				lastAck = now
			}
			next++
		}
		select {
		case pool <- fr.buf:
		default:
		}
		if len(frames) == 0 {
			if err := s.sendAck(nil); err != nil { // idle: answer at once
				s.stop()
			}
		} else {
			s.pokeAck()
		}
		lastAck = time.Now()
	}
}

func errnoOf(e uint32) syscall.Errno { return syscall.Errno(e) }
