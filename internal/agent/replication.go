package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tandem-ha/tandem/internal/config"
	"github.com/tandem-ha/tandem/internal/module"
	"github.com/tandem-ha/tandem/internal/mountinfo"
	"github.com/tandem-ha/tandem/internal/replica/apply"
	"github.com/tandem-ha/tandem/internal/replica/changelog"
	"github.com/tandem-ha/tandem/internal/replica/compare"
	rfs "github.com/tandem-ha/tandem/internal/replica/fs"
	"github.com/tandem-ha/tandem/internal/replica/op"
	"github.com/tandem-ha/tandem/internal/replica/sumcache"
	"github.com/tandem-ha/tandem/internal/replica/wire"
)

// Replication of a module's directories, one stream per directory:
//   - serving (PRIM/ALONE): each directory is intercepted by a FUSE mount
//     whose Replicator forwards to a wire.Sender while the peer is a SECOND;
//   - SECOND: a wire receiver applies the stream below a directory fd opened
//     before the directory is bind-mounted read-only over itself.
// All streams of a node share one TCP port: the dialer sends a one-line
// preamble naming its stream, and the listener routes the connection.

const preamblePrefix = "TANDEM-STREAM "

// durableEvery is how often the primary asks the secondary to make the
// whole stream durable (a background SyncAll, wire.SenderConfig.SyncEvery).
const durableEvery = 500 * time.Millisecond

func streamName(module string, idx int) string { return module + "/" + strconv.Itoa(idx) }

// replMux routes incoming replication connections to their stream.
type replMux struct {
	log    *slog.Logger
	mu     sync.Mutex
	routes map[string]*chanListener
}

func newReplMux(log *slog.Logger) *replMux {
	return &replMux{log: log, routes: map[string]*chanListener{}}
}

func (x *replMux) serve(ctx context.Context, ln net.Listener) {
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(50 * time.Millisecond)
				continue
			}
			x.log.Error("replication listener failed", "err", err)
			return
		}
		go x.dispatch(conn)
	}
}

// dispatch reads the preamble byte by byte (the dialer sends nothing more
// until the receiver speaks) and hands the connection to its stream.
func (x *replMux) dispatch(conn net.Conn) {
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	var line []byte
	b := make([]byte, 1)
	for len(line) < 160 {
		if _, err := conn.Read(b); err != nil {
			conn.Close()
			return
		}
		if b[0] == '\n' {
			break
		}
		line = append(line, b[0])
	}
	conn.SetReadDeadline(time.Time{})
	name, ok := strings.CutPrefix(string(line), preamblePrefix)
	x.mu.Lock()
	l := x.routes[name]
	x.mu.Unlock()
	if !ok || l == nil || !l.push(conn) {
		x.log.Warn("replication connection for no receiving stream refused", "from", conn.RemoteAddr(), "stream", name)
		conn.Close()
	}
}

func (x *replMux) route(name string) *chanListener {
	l := &chanListener{ch: make(chan net.Conn, 4), done: make(chan struct{})}
	x.mu.Lock()
	if old := x.routes[name]; old != nil {
		old.Close()
	}
	x.routes[name] = l
	x.mu.Unlock()
	return l
}

func (x *replMux) unroute(name string, l *chanListener) {
	x.mu.Lock()
	if x.routes[name] == l {
		delete(x.routes, name)
	}
	x.mu.Unlock()
	l.Close()
}

// chanListener is a net.Listener fed by the mux.
type chanListener struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func (l *chanListener) push(c net.Conn) bool {
	select {
	case l.ch <- c:
		return true
	case <-l.done:
		return false
	case <-time.After(5 * time.Second):
		return false
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.ch:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

func (l *chanListener) Addr() net.Addr { return &net.TCPAddr{} }

// replicator is the FUSE layer's Replicator: it forwards to the current
// sender, or records nothing while the module runs without a peer.
// Sequence numbers carry the sender's generation in their high bits, so a
// Wait on an op of a closed sender is never mistaken for one of the next.
type replicator struct {
	mu      sync.RWMutex
	gen     uint64
	sender  *wire.Sender
	senders map[uint64]*wire.Sender
	// demoting: this node is leaving the serving role; a durable call whose
	// data the peer did not acknowledge must fail (EIO), since the peer and
	// not this node will serve the data next.
	demoting atomic.Bool
	lastSeq  atomic.Uint64
	// observer sees every op submitted, in the FUSE layer's critical
	// section (a running compare engine learns of namespace changes, and
	// of the hard-linked inodes ops change).
	observer atomic.Pointer[compare.Engine]
}

// observe sets (nil: clears) the engine that sees every submitted op.
func (x *replicator) observe(e *compare.Engine) { x.observer.Store(e) }

const genShift = 40

func newReplicator() *replicator { return &replicator{senders: map[uint64]*wire.Sender{}} }

func (x *replicator) Submit(o *op.Op) uint64 {
	x.mu.RLock()
	s, gen := x.sender, x.gen
	x.mu.RUnlock()
	if s == nil {
		return 0
	}
	e := x.observer.Load()
	if e != nil {
		e.Touch(o)
	}
	seq := gen<<genShift | s.Submit(o)
	x.lastSeq.Store(seq)
	if e != nil {
		e.Observe(o)
	}
	return seq
}

func (x *replicator) Wait(seq uint64, durable bool) error { return x.wait(seq, durable, false) }

// waitFlushed waits until every op up to seq is durable on the peer, not
// only the file an Fsync op at seq names.
func (x *replicator) waitFlushed(seq uint64) error { return x.wait(seq, true, true) }

func (x *replicator) wait(seq uint64, durable, all bool) error {
	if seq == 0 {
		return x.released()
	}
	x.mu.RLock()
	s := x.senders[seq>>genShift]
	x.mu.RUnlock()
	if s == nil {
		return x.released()
	}
	n := seq & (1<<genShift - 1)
	if all {
		if err := s.WaitFlushed(n); err != nil {
			return err
		}
		if s.Flushed() >= n {
			return nil
		}
		return x.released()
	}
	if err := s.Wait(n, durable); err != nil {
		return err
	}
	applied, synced := s.Acked()
	if (durable && synced >= n) || (!durable && applied >= n) {
		return nil
	}
	return x.released()
}

// released answers a wait the peer did not acknowledge.
func (x *replicator) released() error {
	if x.demoting.Load() {
		return syscall.EIO
	}
	return nil
}

// attach makes s the current sender (under the caller's freeze) and
// returns its generation (the high bits of its ops' seqs).
func (x *replicator) attach(s *wire.Sender) uint64 {
	x.mu.Lock()
	defer x.mu.Unlock()
	x.gen++
	x.sender = s
	x.senders[x.gen] = s
	return x.gen
}

// detach closes every sender; pending waits are released.
func (x *replicator) detach() {
	x.mu.Lock()
	old := x.senders
	x.sender, x.senders = nil, map[uint64]*wire.Sender{}
	x.mu.Unlock()
	for _, s := range old {
		s.Close()
	}
}

func (x *replicator) current() *wire.Sender {
	x.mu.RLock()
	defer x.mu.RUnlock()
	return x.sender
}

// replDir is one replicated directory of a module on this node.
type replDir struct {
	idx   int
	path  string
	name  string
	rep   *replicator
	mount *rfs.Mounted

	applier    *apply.Applier
	listener   *chanListener
	recvCancel context.CancelFunc
	recvDone   chan struct{}
	readOnly   bool
	resynced   atomic.Bool
	rootFd     int // the real directory, opened before the read-only bind

	// changes records what changes while this node serves (and, on a
	// SECOND that served before, what it may have changed without the
	// new primary, until the resynchronisation took it back).
	changes *changelog.Log
	ackGen  atomic.Uint64 // generation of the attached sender (OnAck)
	baseMu  sync.Mutex
	base    *resyncBase // a SECOND's answer to queryResyncBase, computed once
	// answerer answers the compare engine's queries on a SECOND and keeps
	// the live ops its copy could not apply while it differed.
	answerer *compare.Answerer
	cpStop   chan struct{} // ends the checkpoint loop of changes

	sumsMu    sync.Mutex
	sumsCache *sumcache.Cache // replica.sums
	sumHits0  int64           // its SumHits when the receiver started or the last resync ended
	sumsSave  sync.Mutex      // one save of sumsCache at a time
	sumsSaved atomic.Int64    // the cache's Misses+Resets at the last save
}

// replica is the replication state of one module.
type replica struct {
	r    *modRunner
	dirs []*replDir

	mu         sync.Mutex
	connecting bool
	delay      time.Duration
	retryAt    time.Time
	fbSince    time.Time // failback: since when it is due
	fbLast     time.Time // failback: last attempt

	running atomic.Pointer[resyncRun] // the resynchronisation under way
}

func newReplica(r *modRunner) *replica {
	x := &replica{r: r}
	for i, p := range r.cfg.Directories {
		x.dirs = append(x.dirs, &replDir{idx: i, path: p, name: streamName(r.cfg.Name, i), rep: newReplicator()})
	}
	return x
}

func (x *replica) syncMode() rfs.SyncMode {
	if x.r.cfg.Sync == config.SyncWrite {
		return rfs.SyncWrite
	}
	return rfs.SyncFsync
}

// mount intercepts every directory (entering PRIM/ALONE). When the peer is
// already a SECOND (a swap hands the module over), the streams are attached
// before start_prim runs: no write may be acknowledged unreplicated.
func (x *replica) mount(m module.Machine) error {
	if err := x.mountAll(); err != nil {
		return err
	}
	p := m.Peer
	if p.Alive && p.Known && p.Incompatible == "" && p.State == module.Second && p.Target == "" && !m.ReplBroken {
		x.mu.Lock()
		x.connecting = true
		x.mu.Unlock()
		x.connect(m.Epoch, !p.UpToDate)
	}
	return nil
}

func (x *replica) mountAll() error {
	x.stopReceiver()
	for _, d := range x.dirs {
		if d.mount != nil {
			continue
		}
		if err := rfs.CleanupStale(d.path); err != nil {
			return fmt.Errorf("directory %s: %w", d.path, err)
		}
		d.rep.demoting.Store(false)
		if d.changes == nil {
			l, err := x.openChanges(d)
			if err != nil {
				return err
			}
			d.changes = l
		}
		// Serving: this copy changes otherwise than through a primary's
		// stream, so no full compare of it can resume.
		x.dropToken(d)
		// Serving: what this node may have changed unacknowledged before a
		// crash is now for the peer to receive.
		if err := d.changes.ReleaseInFlight(true); err != nil {
			return fmt.Errorf("change records of %s: %w", d.path, err)
		}
		if err := d.changes.SetAlone(true); err != nil { // until a stream is attached
			return fmt.Errorf("change records of %s: %w", d.path, err)
		}
		m, err := rfs.Mount(d.path, rfs.Options{Replicator: d.rep, Changes: d.changes, Sync: x.syncMode(),
			Logger: x.r.a.log.With("module", x.r.cfg.Name, "dir", d.path)})
		if err != nil {
			return fmt.Errorf("intercept %s: %w", d.path, err)
		}
		d.mount = m
		d.cpStop = make(chan struct{})
		go x.checkpointLoop(d.changes, d.cpStop)
		x.r.log.Add("info", "replicated directory "+d.path+" intercepted", "dir", d.path)
	}
	return nil
}

// unmount ends the interception (leaving PRIM/ALONE) after a final sync:
// everything the application wrote is on the secondary before the peer can
// take over (a swap loses no acknowledged write).
func (x *replica) unmount() {
	for _, d := range x.dirs {
		if s := d.rep.current(); s != nil {
			if seq := d.rep.lastSeq.Load(); seq != 0 {
				if err := d.rep.waitFlushed(seq); err != nil {
					x.r.log.Add("error", "final sync of "+d.path+" failed: "+err.Error())
				}
			}
		}
		d.rep.demoting.Store(true)
		d.rep.detach()
		if d.mount != nil {
			if err := d.mount.Unmount(); err != nil {
				x.r.log.Add("warn", "unmount "+d.path+": "+err.Error())
			}
			d.mount = nil
		}
		x.closeChanges(d)
	}
}

// fence cuts every stream at once (the node is isolated and leaves the
// service): pending and later durable calls fail with EIO instead of
// waiting replication.timeout for a peer that cannot answer, so the
// application can exit and stop_prim end before the peer takes over.
// What the peer did not acknowledge goes to the change records.
func (x *replica) fence() {
	for _, d := range x.dirs {
		d.rep.demoting.Store(true)
		had := d.rep.current() != nil
		d.rep.detach()
		if had {
			x.goAlone(d)
			x.r.log.Add("warn", "replication of "+d.path+" to "+x.r.peer+" cut: this node is isolated; durable calls "+x.r.peer+" did not acknowledge fail with EIO", "dir", d.path)
		}
	}
}

// closeChanges closes a directory's change records (a clean close: nothing
// is left in flight).
func (x *replica) closeChanges(d *replDir) {
	if d.cpStop != nil {
		close(d.cpStop)
		d.cpStop = nil
	}
	if d.changes == nil {
		return
	}
	if err := d.changes.Close(); err != nil {
		x.r.log.Add("warn", "change records of "+d.path+": "+err.Error())
	}
	d.changes = nil
	d.baseMu.Lock()
	d.base = nil
	d.baseMu.Unlock()
}

// startReceiver prepares every directory to receive (entering SECOND).
func (x *replica) startReceiver(m module.Machine) error {
	for _, d := range x.dirs {
		if d.listener != nil {
			continue
		}
		if err := rfs.CleanupStale(d.path); err != nil {
			return fmt.Errorf("directory %s: %w", d.path, err)
		}
		unmountReadOnly(d.path) // a stale one from a crash
		fd, err := unix.Open(d.path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open replicated directory %s: %w (does it exist on %s?)", d.path, err, x.r.a.node)
		}
		// The remembered hashes load (a file read) while the records open.
		sums := make(chan *sumcache.Cache, 1)
		go func() { sums <- x.loadSums(d, fd) }()
		// Its own full compare as a primary cannot resume: the peer
		// serves, and this copy will follow the peer's.
		x.dropResume(d)
		// The copy stays as it is: the primary compares it with its own
		// and sends what differs (a swap hands over copies in sync).
		d.resynced.Store(m.Handover)
		if d.changes == nil {
			// What this node changed without its peer (as a crashed or
			// lone primary) is taken back from the new primary.
			l, err := x.openChanges(d)
			if err != nil {
				<-sums
				unix.Close(fd)
				return err
			}
			d.changes = l
		}
		ap, err := apply.NewFromFd(fd)
		if err != nil {
			<-sums
			unix.Close(fd)
			return fmt.Errorf("replicated directory %s: %w", d.path, err)
		}
		d.applier = ap
		d.answerer = compare.NewAnswerer(fd, <-sums)
		d.sumHits0 = x.sums(d).Stats().SumHits
		if !m.Handover {
			// Until the compare reached every entry, a live op may find
			// the copy different: skipped and reported, not an error.
			ap.SetLenient(d.answerer.Skipped)
		}
		d.rootFd = fd // kept (the path turns read-only) for a later wipe
		if err := bindReadOnly(d.path); err != nil {
			x.r.log.Add("warn", "could not make "+d.path+" read-only on the secondary: "+err.Error())
		} else {
			d.readOnly = true
		}
		d.listener = x.r.a.mux.route(d.name)
		ctx, cancel := context.WithCancel(context.Background())
		d.recvCancel, d.recvDone = cancel, make(chan struct{})
		go x.receive(ctx, d)
	}
	return nil
}

func (x *replica) receive(ctx context.Context, d *replDir) {
	defer close(d.recvDone)
	a := x.r.a
	cfg := wire.ReceiverConfig{
		Cluster: a.cluster.Name, Module: d.name, Node: a.node, Key: a.key,
		Epoch:   func() uint64 { return x.r.machine().Epoch },
		Applier: d.applier,
		Logger:  a.log.With("module", x.r.cfg.Name, "dir", d.path),
		OnError: func(err error) {
			x.r.log.Add("error", "replication of "+d.path+" stopped: "+err.Error())
			// Synchronous: persisted before the receiver acks the failure.
			if cerr := x.r.command(module.Event{Kind: module.ReplicationFailed, Reason: err.Error()}); cerr != nil {
				x.r.log.Add("error", "could not mark the copy outdated: "+cerr.Error())
			}
		},
		Answer: func(q *op.Op) ([]byte, error) {
			if q.Flags == queryResyncBase {
				// A resynchronisation begins: this copy may differ.
				d.resynced.Store(false)
				d.applier.SetLenient(d.answerer.Skipped)
				return x.answerBase(d, q)
			}
			if q.Flags == queryResumeMark {
				return x.answerMark(d, q)
			}
			return d.answerer.Answer(q)
		},
		Apply: func(o *op.Op) error {
			if err := d.applier.Apply(o); err != nil {
				return err
			}
			if o.Kind == op.SyncAll && o.Flags&op.ResyncDone != 0 {
				if n := d.answerer.Pending(); n > 0 {
					// A live op diverged after the compare's last check:
					// the copy is not the primary's; the stream ends and
					// the primary compares again.
					return fmt.Errorf("resynchronisation of %s ended with %d live ops not applied: compare again", d.path, n)
				}
				d.applier.SetLenient(nil)
				d.answerer.Reset()
				x.dropToken(d)
				// Durable (a SyncAll): this copy is now the primary's.
				if err := x.finishSecondRecords(d); err != nil {
					x.r.log.Add("warn", "change records of "+d.path+": "+err.Error())
				}
				d.resynced.Store(true)
				// Files this node did not read for the primary's listings:
				// their hashes were remembered.
				hits := x.sums(d).Stats().SumHits
				reused := hits - d.sumHits0
				d.sumHits0 = hits
				x.r.log.Add("info", fmt.Sprintf("resynchronisation of %s complete (%d files' hashes remembered here)", d.path, reused),
					"dir", d.path, "hashes_reused", reused)
				x.saveSumsAfterResync(d, d.rootFd)
				if x.allResynced() {
					os.Remove(x.fullRequestPath()) // a second --full is done
					if err := x.setSyncedEpoch(x.r.machine().Epoch); err != nil {
						x.r.log.Add("warn", "could not record the synced epoch: "+err.Error())
					}
					go x.r.post(module.Event{Kind: module.SyncDone})
				}
			}
			return nil
		},
	}
	if err := wire.Serve(ctx, d.listener, cfg); err != nil && ctx.Err() == nil {
		x.r.log.Add("error", "replication receiver for "+d.path+": "+err.Error())
	}
}

func (x *replica) allResynced() bool {
	for _, d := range x.dirs {
		if !d.resynced.Load() {
			return false
		}
	}
	return true
}

func (x *replica) stopReceiver() {
	for _, d := range x.dirs {
		if d.listener == nil {
			continue
		}
		x.r.a.mux.unroute(d.name, d.listener)
		d.recvCancel()
		select {
		case <-d.recvDone:
		case <-time.After(10 * time.Second):
			x.r.log.Add("warn", "replication receiver of "+d.path+" did not stop within 10s")
		}
		d.listener = nil
		if d.applier != nil {
			d.applier.Close()
			d.applier = nil
			unix.Close(d.rootFd)
		}
		x.closeChanges(d)
		if d.readOnly {
			unmountReadOnly(d.path)
			d.readOnly = false
		}
	}
}

// reconcile connects the senders when this node serves and the peer is a
// settled SECOND, and drops them when the peer is gone.
func (x *replica) reconcile(m module.Machine) {
	x.checkFailback(m)
	if len(x.dirs) == 0 {
		return
	}
	p := m.Peer
	if !m.State.Serving() || (m.Target != "" && !m.Target.Serving()) {
		return // unmount handles the senders
	}
	want := p.Alive && p.Known && p.Incompatible == "" && p.State == module.Second && p.Target == "" && !m.ReplBroken
	if !want {
		if !p.Alive || !p.Known || p.State != module.Second {
			for _, d := range x.dirs {
				if d.rep.current() != nil {
					d.rep.detach()
					x.goAlone(d)
					x.r.log.Add("info", "replication of "+d.path+" to "+x.r.peer+" stopped (peer "+peerWord(p)+")")
				}
			}
		}
		return
	}
	if s := x.dirs[0].rep.current(); s != nil && s.Failed() != nil {
		for _, d := range x.dirs {
			d.rep.detach() // a failed stream is replaced, not kept
			x.goAlone(d)
		}
	}
	x.mu.Lock()
	if x.connecting || x.dirs[0].rep.current() != nil || time.Now().Before(x.retryAt) {
		x.mu.Unlock()
		return
	}
	x.connecting = true
	x.mu.Unlock()
	go x.connect(m.Epoch, !p.UpToDate || p.Epoch != m.Epoch) // an older epoch missed a generation
}

// backoff delays the next attempt after a failed one (1s doubling to 30s)
// so a peer with a full disk is not resynchronised in a tight loop.
func (x *replica) backoff(failed bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	if !failed {
		x.delay, x.retryAt = 0, time.Time{}
		return
	}
	x.delay = min(max(2*x.delay, time.Second), 30*time.Second)
	x.retryAt = time.Now().Add(x.delay)
}

func peerWord(p module.Peer) string {
	if !p.Alive {
		return "down"
	}
	return string(p.State)
}

// connect dials one stream per directory and attaches it; a peer that is
// not up to date is then resynchronised (resyncDir) while the application
// keeps writing: its live writes are streamed from the attach on.
func (x *replica) connect(epoch uint64, need bool) {
	defer func() {
		x.mu.Lock()
		x.connecting = false
		x.mu.Unlock()
	}()
	a, cfg := x.r.a, x.r.cfg
	peer, _ := a.cluster.Node(x.r.peer)
	addr := netip.AddrPortFrom(peer.Addresses[a.cluster.Replication.Network], uint16(a.cluster.Replication.Port)).String()
	var opened []*wire.Sender
	fail := func(err error) {
		for _, s := range opened {
			s.Close()
		}
		for _, d := range x.dirs {
			d.rep.detach()
			x.goAlone(d)
		}
		x.backoff(true)
		x.r.log.Add("error", "replication to "+x.r.peer+" failed: "+err.Error())
		x.r.post(module.Event{Kind: module.ReplicationFailed, Reason: err.Error()})
	}
	for _, d := range x.dirs {
		if d.mount == nil {
			fail(fmt.Errorf("%s is not intercepted", d.path))
			return
		}
		name := d.name
		ctx, cancel := context.WithTimeout(context.Background(), cfg.Replication.Timeout+5*time.Second)
		s, err := wire.Dial(ctx, wire.SenderConfig{
			Cluster: a.cluster.Name, Module: name, Node: a.node, Key: a.key, Epoch: epoch, Addr: addr,
			Timeout: cfg.Replication.Timeout, MaxLag: int(cfg.Replication.MaxLag),
			// The flushed point follows the stream: the change records
			// keep each zone until the peer made it durable.
			SyncEvery: durableEvery,
			Logger:    a.log.With("module", cfg.Name, "dir", d.path),
			// Only a SyncAll makes every op before it durable on the
			// peer; an Fsync op flushes its own file. Were the records
			// to forget a zone of another file at an Fsync's ack, a
			// power cut of the peer could leave its copy without it, and
			// no resynchronisation would send it again.
			OnAck: func(_, flushed uint64) {
				if gen, l := d.ackGen.Load(), d.changes; gen != 0 && l != nil {
					l.Acked(gen<<genShift | flushed)
				}
			},
			OnFailure: func(err error) {
				x.goAlone(d) // what the peer did not acknowledge goes to the records
				x.r.post(module.Event{Kind: module.ReplicationFailed, Reason: err.Error()})
			},
			Dialer: func(ctx context.Context) (net.Conn, error) {
				var nd net.Dialer
				c, err := nd.DialContext(ctx, "tcp", addr)
				if err != nil {
					return nil, err
				}
				if _, err := c.Write([]byte(preamblePrefix + name + "\n")); err != nil {
					c.Close()
					return nil, err
				}
				return c, nil
			},
		})
		cancel()
		if err != nil {
			fail(err)
			return
		}
		opened = append(opened, s)
	}
	for i, d := range x.dirs {
		thaw := d.mount.Freeze()
		d.ackGen.Store(d.rep.attach(opened[i]))
		thaw()
		if need {
			// The records stay alone until the resynchronisation
			// completes (resyncDir): the peer may skip ops until then,
			// and an interrupted run resumes from the records.
			continue
		}
		// From here every change is streamed; what changed alone is in
		// the records (SetAlone waits for changes still under way).
		if err := d.changes.SetAlone(false); err != nil {
			fail(fmt.Errorf("change records of %s: %w", d.path, err))
			return
		}
	}
	x.backoff(false)
	x.r.log.Add("info", "replicating to "+x.r.peer+" ("+addr+")")
	if !need {
		return
	}
	for i, d := range x.dirs {
		if err := x.resyncDir(d, opened[i]); err != nil {
			fail(fmt.Errorf("resynchronisation of %s: %w", d.path, err))
			return
		}
	}
	if err := x.setSyncedEpoch(epoch); err != nil {
		x.r.log.Add("warn", "could not record the synced epoch: "+err.Error())
	}
}

// goAlone tells a directory's records that nothing more will be
// acknowledged (the stream failed or was dropped).
func (x *replica) goAlone(d *replDir) {
	d.ackGen.Store(0)
	if l := d.changes; l != nil {
		if err := l.SetAlone(true); err != nil && !errors.Is(err, changelog.ErrClosed) {
			x.r.log.Add("error", "change records of "+d.path+": "+err.Error())
		}
	}
}

// lag sums the unacknowledged ops and bytes of every stream.
func (x *replica) lag() (ops, bytes int) {
	for _, d := range x.dirs {
		if s := d.rep.current(); s != nil {
			o, b := s.Lag()
			ops, bytes = ops+o, bytes+b
		}
	}
	return ops, bytes
}

// bindReadOnly makes dir read-only for everything but the fds opened before.
func bindReadOnly(dir string) error {
	if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("bind %s: %w", dir, err)
	}
	if err := unix.Mount("", dir, "", unix.MS_BIND|unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		unix.Unmount(dir, unix.MNT_DETACH)
		return fmt.Errorf("remount %s read-only: %w", dir, err)
	}
	return nil
}

// unmountReadOnly removes our read-only bind mount of dir, if the top mount
// there is one (a stale one after a crash, or ours when leaving SECOND).
func unmountReadOnly(dir string) {
	mounts, err := mountinfo.Read()
	if err != nil {
		return
	}
	if top, ok := mountinfo.Top(mounts, dir); ok && top.ReadOnly() && !strings.HasPrefix(top.FSType, "fuse") {
		unix.Unmount(dir, unix.MNT_DETACH)
	}
}
