// Package membership sends and checks UDP heartbeats between the nodes of a
// cluster on every network they share, and keeps a view of which peers are
// alive, with an opaque payload each peer publishes (its module states).
//
// Every datagram is authenticated with HMAC-SHA256 under the cluster key and
// protected against replay by three checks:
//   - incarnation: a per-node counter bumped and fsync'd at every start; the
//     highest incarnation seen of each peer is persisted too, so datagrams of
//     a previous run of a peer are refused even after our own restart;
//   - sequence: per sender->destination, with a 64-entry sliding window
//     (as IPsec), shared by all networks: each copy takes its own number;
//   - echo: a datagram carries the destination's incarnation as last seen by
//     the sender, so datagrams recorded before the destination restarted do
//     not count (the window, kept in memory, forgot them). A restarted node
//     therefore sees a peer alive once the peer has heard it: the peer
//     answers a new incarnation at once, so that takes one round trip.
//
// A peer is alive while at least one network delivered a valid datagram
// within Timeout; a precise timer marks it down when the last one expires.
package membership

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"hash"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Network is one network of the cluster, seen from this node.
type Network struct {
	Name string // for logs and errors
	// Local is this node's address on the network; the socket binds to it.
	// The zero Addr means this node is not on that network (the list keeps
	// the cluster's order, so that network indexes agree between nodes).
	Local netip.Addr
}

// Peer is another node of the cluster.
type Peer struct {
	Name string
	// Addrs[i] is the peer's address on Networks[i]; the zero Addr means the
	// peer is not on that network.
	Addrs []netip.Addr
}

// Config configures a Membership. Every field but Logger is required.
type Config struct {
	Cluster  string    // cluster name; datagrams of other clusters are refused
	Self     string    // this node's name
	Networks []Network // at most maxNetworks
	Peers    []Peer    // every other node
	Port     int       // UDP port, the same on every node and network
	Key      []byte    // cluster key, at least MinKeyLen bytes
	Interval time.Duration
	Timeout  time.Duration // > Interval: silence on every network for this long = down
	StateDir string        // incarnations are kept in StateDir/membership
	Logger   *slog.Logger  // nil: slog.Default()
}

// PeerView is a snapshot of what we know of one peer.
type PeerView struct {
	Name  string
	Alive bool
	// Left: the peer said it was leaving (clean shutdown); Alive is false.
	// Cleared when a new incarnation of the peer is heard.
	Left bool
	// Networks[i]: a valid datagram arrived on network i within Timeout.
	Networks []bool
	// LastSeen: arrival time of the last valid datagram, any network
	// (zero if none since New).
	LastSeen time.Time
	// Payload: the last payload received; kept when the peer goes down.
	Payload []byte
	// Incarnation of the peer that sent the last valid datagram (0: none yet).
	Incarnation uint64
}

// Stats counts datagrams. Every rejected datagram is counted once, under the
// first check it failed, in this order: Malformed, WrongCluster, BadMAC,
// UnknownSender, Misdirected, Replayed, Stale.
type Stats struct {
	Sent       uint64 // datagrams sent
	SendErrors uint64 // sends that failed (network unreachable...)
	Received   uint64 // valid datagrams accepted
	Malformed  uint64 // bad length, magic or version
	// WrongCluster: another cluster name (two clusters on one port).
	WrongCluster uint64
	BadMAC       uint64 // wrong key, or altered in transit
	// UnknownSender: a sender absent from Peers, or claiming to be us.
	UnknownSender uint64
	// Misdirected: meant for another node, or for another network index
	// than the one it arrived on (cluster files list networks differently).
	Misdirected uint64
	Replayed    uint64 // old incarnation, or sequence already seen / too old
	// Stale: genuine and new, but sent before the sender heard our current
	// incarnation; normal for a moment after we start.
	Stale uint64
}

const (
	// MinKeyLen is the shortest accepted cluster key.
	MinKeyLen = 16
	// maxNetworks bounds Config.Networks (the network index is one byte, and
	// the test drop mask is 64 bits).
	maxNetworks = 64
	// maxNameLen keeps "peer-NAME" within a file name and the wire's 1-byte length.
	maxNameLen = 250
	// rejectLogEvery: at most one log line per source address this often.
	rejectLogEvery = 10 * time.Second
	readBufSize    = 1 << 16
	dscpCS6        = 0xc0 // TOS / traffic class byte
)

// Membership runs the heartbeats of one node. Create with New, then run Run
// in a goroutine; Close when done.
type Membership struct {
	cfg      Config
	log      *slog.Logger
	inc      uint64 // our incarnation
	dir      string // StateDir/membership
	conns    []*net.UDPConn
	peers    []*peerState
	byName   map[string]int
	selfB    []byte
	clusterB []byte

	changed chan struct{} // cap 1: some peer view changed
	kick    chan struct{} // cap 1: send now (see pendingAll / peerState.pending)
	rearm   chan struct{} // cap 1: a network came up, recompute the deadline
	closed  chan struct{}

	closeOnce sync.Once
	closeErr  error
	closing   atomic.Bool
	running   atomic.Bool

	mu         sync.Mutex // guards payload, pendingAll and peerState fields noted below
	payload    []byte     // ours; replaced, never modified in place
	pendingAll bool

	sendMu    sync.Mutex // serialises sends: sendBuf, sendMAC, echoes, sendTo, peerState.seq
	sendBuf   []byte
	sendMAC   hash.Hash
	echoes    []uint64
	sendTo    []bool
	sendLogAt []time.Time // per network: last send error log

	persistMu sync.Mutex // serialises peer-NAME writes

	stats struct {
		sent, sendErrors, received, malformed, wrongCluster, badMAC,
		unknownSender, misdirected, replayed, stale atomic.Uint64
	}
	rejects logLimiter

	// Test hooks.
	dropRecv atomic.Uint64              // bit i: ignore datagrams arriving on network i
	tap      func(netIdx int, b []byte) // sees every authenticated datagram; set before Run
}

type peerState struct {
	name  string
	nameB []byte
	path  string           // StateDir/membership/peer-NAME
	addrs []netip.AddrPort // per network; invalid = not on that network

	seq uint64 // our last sequence to this peer (sendMu)

	// Guarded by Membership.mu.
	win       replayWindow
	persisted uint64 // incarnation on disk
	viewInc   uint64 // incarnation of the last valid datagram
	lastSeen  []time.Time
	lastAny   time.Time
	netUp     []bool
	alive     bool
	left      bool
	leftInc   uint64
	payload   []byte // replaced, never modified in place
	pending   bool   // send to this peer now
}

// New checks cfg, bumps and persists our incarnation, loads the
// incarnations last seen of the peers and binds one UDP socket per network.
func New(cfg Config) (*Membership, error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	log = log.With("component", "membership")
	m := &Membership{
		cfg:       cfg,
		log:       log,
		dir:       filepath.Join(cfg.StateDir, stateSubdir),
		byName:    make(map[string]int, len(cfg.Peers)),
		selfB:     []byte(cfg.Self),
		clusterB:  []byte(cfg.Cluster),
		changed:   make(chan struct{}, 1),
		kick:      make(chan struct{}, 1),
		rearm:     make(chan struct{}, 1),
		closed:    make(chan struct{}),
		sendMAC:   newMAC(cfg.Key),
		echoes:    make([]uint64, len(cfg.Peers)),
		sendTo:    make([]bool, len(cfg.Peers)),
		sendLogAt: make([]time.Time, len(cfg.Networks)),
		rejects:   logLimiter{every: rejectLogEvery, max: 1024},
	}
	m.cfg.Key = bytes.Clone(cfg.Key)
	if err := os.MkdirAll(m.dir, 0o700); err != nil {
		return nil, fmt.Errorf("membership: create state directory %s: %w", m.dir, err)
	}
	inc, warn, err := nextIncarnation(filepath.Join(m.dir, "incarnation"), time.Now())
	if err != nil {
		return nil, fmt.Errorf("membership: persist incarnation: %w: check that the state directory is writable", err)
	}
	if warn != nil {
		log.Warn("incarnation counter unreadable, starting from the clock", "err", warn)
	}
	m.inc = inc
	for i, p := range cfg.Peers {
		ps := &peerState{
			name:     p.Name,
			nameB:    []byte(p.Name),
			path:     filepath.Join(m.dir, "peer-"+p.Name),
			addrs:    make([]netip.AddrPort, len(cfg.Networks)),
			lastSeen: make([]time.Time, len(cfg.Networks)),
			netUp:    make([]bool, len(cfg.Networks)),
		}
		for j, a := range p.Addrs {
			if a.IsValid() && cfg.Networks[j].Local.IsValid() {
				ps.addrs[j] = netip.AddrPortFrom(a.Unmap(), uint16(cfg.Port))
			}
		}
		v, _, err := readCounter(ps.path)
		if err != nil {
			// Only previous incarnations of this peer lose protection until
			// it is heard again; the echo check still covers replays.
			log.Warn("last incarnation of peer unreadable, ignoring it", "peer", p.Name, "err", err)
		}
		ps.win.inc, ps.persisted = v, v
		m.peers = append(m.peers, ps)
		m.byName[p.Name] = i
	}
	m.conns = make([]*net.UDPConn, len(cfg.Networks))
	for i, n := range cfg.Networks {
		if !n.Local.IsValid() {
			continue // not on this network: no socket
		}
		c, err := bind(n, cfg.Port)
		if err != nil {
			m.closeConns()
			return nil, err
		}
		m.conns[i] = c
	}
	log.Info("membership ready", "node", cfg.Self, "incarnation", inc,
		"networks", len(cfg.Networks), "peers", len(cfg.Peers))
	return m, nil
}

func (c *Config) validate() error {
	var errs []string
	add := func(f string, a ...any) { errs = append(errs, fmt.Sprintf(f, a...)) }
	if err := checkName(c.Cluster); err != nil {
		add("cluster name %q: %v", c.Cluster, err)
	}
	if err := checkName(c.Self); err != nil {
		add("node name %q: %v", c.Self, err)
	}
	if len(c.Networks) == 0 {
		add("no network: list at least one")
	}
	if len(c.Networks) > maxNetworks {
		add("%d networks: at most %d", len(c.Networks), maxNetworks)
	}
	local := 0
	for _, n := range c.Networks {
		if n.Local.IsValid() {
			local++
		}
	}
	if len(c.Networks) > 0 && local == 0 {
		add("this node has no local address on any network")
	}
	if c.Port < 1 || c.Port > 65535 {
		add("port %d: want 1..65535", c.Port)
	}
	if len(c.Key) < MinKeyLen {
		add("cluster key is %d bytes: want at least %d", len(c.Key), MinKeyLen)
	}
	if c.Interval <= 0 {
		add("interval %v: want > 0", c.Interval)
	}
	if c.Timeout <= c.Interval {
		add("timeout %v: want more than the interval %v (a few intervals, so that one lost datagram is not a failure)", c.Timeout, c.Interval)
	}
	if c.StateDir == "" {
		add("no state directory: incarnations must persist for replay protection")
	}
	seen := map[string]bool{c.Self: true}
	owner := map[netip.AddrPort]string{}
	for i, n := range c.Networks {
		if n.Local.IsValid() {
			owner[netip.AddrPortFrom(n.Local.Unmap(), uint16(i))] = c.Self
		}
	}
	for _, p := range c.Peers {
		if err := checkName(p.Name); err != nil {
			add("peer name %q: %v", p.Name, err)
			continue
		}
		if seen[p.Name] {
			add("peer %q listed twice or named like this node", p.Name)
			continue
		}
		seen[p.Name] = true
		if len(p.Addrs) != len(c.Networks) {
			add("peer %q has %d addresses for %d networks", p.Name, len(p.Addrs), len(c.Networks))
			continue
		}
		shared := false
		for i, a := range p.Addrs {
			if !a.IsValid() || !c.Networks[i].Local.IsValid() {
				continue
			}
			shared = true
			a = a.Unmap()
			if a.Is4() != c.Networks[i].Local.Unmap().Is4() {
				add("peer %q: address %v on network %q is not of the family of ours (%v)", p.Name, a, c.Networks[i].Name, c.Networks[i].Local)
			}
			// Keyed by network index: the same address on two networks is odd but works.
			k := netip.AddrPortFrom(a, uint16(i))
			if o, dup := owner[k]; dup {
				add("peer %q: address %v on network %q is also %q's", p.Name, a, c.Networks[i].Name, o)
			}
			owner[k] = p.Name
		}
		if !shared {
			add("peer %q has no address on any network this node is on", p.Name)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("membership: invalid configuration: %s", strings.Join(errs, "; "))
	}
	return nil
}

func checkName(s string) error {
	switch {
	case s == "":
		return errors.New("empty")
	case len(s) > maxNameLen:
		return fmt.Errorf("%d bytes, at most %d", len(s), maxNameLen)
	case strings.ContainsAny(s, "/\x00"):
		return errors.New("contains '/' or NUL")
	}
	return nil
}

// bindError names the address that could not be bound and what to check.
type bindError struct {
	addr netip.AddrPort
	hint string
	err  error
}

func (e *bindError) Error() string { return fmt.Sprintf("membership: bind %v: %s", e.addr, e.hint) }
func (e *bindError) Unwrap() error { return e.err }

func bind(n Network, port int) (*net.UDPConn, error) {
	ap := netip.AddrPortFrom(n.Local.Unmap(), uint16(port))
	proto := "udp6"
	if ap.Addr().Is4() {
		proto = "udp4"
	}
	c, err := net.ListenUDP(proto, net.UDPAddrFromAddrPort(ap))
	if err != nil {
		var hint string
		switch {
		case errors.Is(err, syscall.EADDRNOTAVAIL):
			hint = fmt.Sprintf("address not available: is this node's address on network %q configured?", n.Name)
		case errors.Is(err, syscall.EADDRINUSE):
			hint = fmt.Sprintf("address already in use: is another tandem agent running, or another program using UDP port %d?", port)
		case errors.Is(err, syscall.EACCES):
			hint = "permission denied: ports below 1024 need root or CAP_NET_BIND_SERVICE"
		default:
			hint = err.Error()
		}
		return nil, &bindError{addr: ap, hint: hint, err: err}
	}
	// Best effort: room for bursts of large payloads on a busy machine, and
	// DSCP CS6 (network control) so that switches and qdiscs that honour it
	// keep heartbeats ahead of bulk replication traffic.
	_ = c.SetReadBuffer(1 << 20)
	if rc, err := c.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) {
			if ap.Addr().Is4() {
				_ = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, syscall.IP_TOS, dscpCS6)
			} else {
				_ = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IPV6, syscall.IPV6_TCLASS, dscpCS6)
			}
		})
	}
	return c, nil
}

// Incarnation returns this node's incarnation for this run.
func (m *Membership) Incarnation() uint64 { return m.inc }

// Changed is signalled (non-blocking, capacity 1) whenever a peer view
// changes: aliveness, leaving, per-network liveness, incarnation or payload
// content. Signals coalesce; call Peers after receiving one to get the
// latest state, which is never lost.
func (m *Membership) Changed() <-chan struct{} { return m.changed }

// SetPayload replaces the payload sent to every peer and sends it at once on
// every network. A payload larger than MaxPayload is refused (logged) and
// the previous one kept.
func (m *Membership) SetPayload(p []byte) {
	if len(p) > MaxPayload {
		m.log.Error("payload too large, keeping the previous one", "bytes", len(p), "max", MaxPayload)
		return
	}
	m.mu.Lock()
	m.payload = bytes.Clone(p)
	m.pendingAll = true
	m.mu.Unlock()
	poke(m.kick)
}

// Peers returns a snapshot of every peer, in Config.Peers order.
func (m *Membership) Peers() []PeerView {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]PeerView, len(m.peers))
	for i, p := range m.peers {
		out[i] = PeerView{
			Name:        p.name,
			Alive:       p.alive,
			Left:        p.left,
			Networks:    append([]bool(nil), p.netUp...),
			LastSeen:    p.lastAny,
			Payload:     bytes.Clone(p.payload),
			Incarnation: p.viewInc,
		}
	}
	return out
}

// Stats returns the datagram counters.
func (m *Membership) Stats() Stats {
	s := &m.stats
	return Stats{
		Sent: s.sent.Load(), SendErrors: s.sendErrors.Load(), Received: s.received.Load(),
		Malformed: s.malformed.Load(), WrongCluster: s.wrongCluster.Load(), BadMAC: s.badMAC.Load(),
		UnknownSender: s.unknownSender.Load(), Misdirected: s.misdirected.Load(),
		Replayed: s.replayed.Load(), Stale: s.stale.Load(),
	}
}

// Close sends a best-effort "leaving" datagram to every peer on every
// network, so they mark us down at once, then closes the sockets; Run
// returns. Safe to call more than once and without Run.
func (m *Membership) Close() error {
	m.closeOnce.Do(func() {
		m.closing.Store(true)
		m.send(flagLeaving, true)
		close(m.closed)
		m.closeErr = m.closeConns()
	})
	return m.closeErr
}

func (m *Membership) closeConns() error {
	var errs []error
	for _, c := range m.conns {
		if c == nil {
			continue
		}
		if err := c.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("membership: close: %w", errors.Join(errs...))
	}
	return nil
}

// Run sends heartbeats, receives and checks the peers' and expires silent
// ones until ctx is cancelled or Close is called. It returns nil then; it
// may be called only once. Sockets stay open after a cancel (Close closes
// them), so Close can still say goodbye.
func (m *Membership) Run(ctx context.Context) error {
	if !m.running.CompareAndSwap(false, true) {
		return errors.New("membership: Run called twice")
	}
	select {
	case <-m.closed:
		return nil
	default:
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i, c := range m.conns {
		if c == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			m.readLoop(i, c, stop)
		}()
	}
	defer func() {
		close(stop)
		for _, c := range m.conns {
			if c != nil {
				_ = c.SetReadDeadline(time.Now()) // wakes the readers; fails harmlessly once closed
			}
		}
		wg.Wait()
	}()

	tick := time.NewTicker(m.cfg.Interval)
	defer tick.Stop()
	deadline := time.NewTimer(time.Hour)
	deadline.Stop()
	defer deadline.Stop()
	var due time.Time // when the deadline timer was meant to fire
	expire := func() {
		now := time.Now()
		if !due.IsZero() && now.Sub(due) > m.cfg.Interval {
			// We were stalled (SIGSTOP, a VM pause): datagrams that arrived
			// meanwhile still sit in the socket buffers. Let the readers
			// drain them before declaring anyone down.
			due = now.Add(2 * m.cfg.Interval)
			deadline.Reset(2 * m.cfg.Interval)
			return
		}
		if next := m.expire(now); !next.IsZero() {
			due = next
			deadline.Reset(next.Sub(now))
		} else {
			due = time.Time{}
			deadline.Stop()
		}
	}

	m.send(0, true)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-m.closed:
			return nil
		case <-tick.C:
			m.send(0, true)
		case <-m.kick:
			m.send(0, false)
		case <-m.rearm:
			expire()
		case <-deadline.C:
			expire()
		}
	}
}

func (m *Membership) readLoop(idx int, c *net.UDPConn, stop <-chan struct{}) {
	buf := make([]byte, readBufSize)
	mac := newMAC(m.cfg.Key)
	sum := make([]byte, 0, macLen)
	for {
		n, from, err := c.ReadFromUDPAddrPort(buf)
		if err != nil {
			select {
			case <-stop:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			m.log.Warn("receive failed", "network", m.cfg.Networks[idx].Name, "err", err)
			select {
			case <-stop:
				return
			case <-time.After(10 * time.Millisecond): // no busy loop on a persistent error
			}
			continue
		}
		m.receive(idx, from, buf[:n], mac, sum)
	}
}

// receive checks one datagram that arrived on network idx and updates the
// sender's view. mac and sum belong to the calling reader.
func (m *Membership) receive(idx int, from netip.AddrPort, b []byte, mac hash.Hash, sum []byte) {
	if m.dropRecv.Load()&(1<<uint(idx)) != 0 {
		return
	}
	s := &m.stats
	d, err := decodeDatagram(b)
	if err != nil {
		s.malformed.Add(1)
		m.reject(from, idx, "malformed heartbeat", "err", err)
		return
	}
	if string(d.Cluster) != m.cfg.Cluster {
		s.wrongCluster.Add(1)
		m.reject(from, idx, "heartbeat of another cluster on this port: give each cluster its own port",
			"cluster", string(d.Cluster))
		return
	}
	if !verifyMAC(b, mac, sum) {
		s.badMAC.Add(1)
		m.reject(from, idx, "heartbeat with a bad MAC: the sender's cluster key differs from ours, or the datagram was altered",
			"sender", string(d.Sender))
		return
	}
	pi, known := m.byName[string(d.Sender)]
	if !known || string(d.Sender) == m.cfg.Self {
		s.unknownSender.Add(1)
		m.reject(from, idx, "heartbeat from a node that is not a peer in our cluster file (or uses our name): do the cluster files differ?",
			"sender", string(d.Sender))
		return
	}
	if string(d.Dest) != m.cfg.Self {
		s.misdirected.Add(1)
		m.reject(from, idx, "heartbeat meant for another node: does the sender's cluster file give that node our address?",
			"sender", string(d.Sender), "dest", string(d.Dest))
		return
	}
	if int(d.NetIndex) != idx {
		s.misdirected.Add(1)
		m.reject(from, idx, "heartbeat for another network arrived on this one: do the cluster files list the networks in the same order?",
			"sender", string(d.Sender), "their_network", d.NetIndex)
		return
	}
	if m.tap != nil {
		m.tap(idx, b)
	}

	now := time.Now()
	p := m.peers[pi]
	var changed, rearm bool
	m.mu.Lock()
	if !p.win.check(d.Incarnation, d.Seq) {
		win := p.win
		m.mu.Unlock()
		s.replayed.Add(1)
		msg := "replayed heartbeat refused: sequence already seen or too old"
		if d.Incarnation < win.inc {
			msg = "heartbeat of an older run of the peer refused: a replay, or the peer lost its state directory " +
				"(then delete " + p.path + " here to forget its last incarnation)"
		}
		m.reject(from, idx, msg, "sender", p.name,
			"incarnation", d.Incarnation, "seq", d.Seq, "known_incarnation", win.inc, "known_seq", win.top)
		return
	}
	// Only the newest datagram may set the payload: an older copy arriving
	// late on another network must not roll the peer's state back.
	newest := d.Incarnation > p.win.inc || d.Seq > p.win.top
	newInc := p.win.accept(d.Incarnation, d.Seq)
	persist := newInc && p.win.inc > p.persisted
	if newInc {
		// A new run of the peer: answer at once so it learns our incarnation
		// (its echo) without waiting for our next tick.
		p.pending = true
	}
	stale := d.Echo != m.inc
	switch {
	case stale:
	case p.left && p.leftInc == d.Incarnation:
		// Late copies from a run that said goodbye do not revive it.
	case d.leaving():
		changed = p.alive || !p.left
		p.alive, p.left, p.leftInc, p.viewInc = false, true, d.Incarnation, d.Incarnation
		clear(p.netUp)
		m.log.Info("peer left", "peer", p.name, "incarnation", d.Incarnation, "network", m.cfg.Networks[idx].Name)
	default:
		p.lastSeen[idx], p.lastAny = now, now
		if p.viewInc != d.Incarnation {
			if p.viewInc != 0 {
				m.log.Info("peer restarted", "peer", p.name, "incarnation", d.Incarnation, "previous", p.viewInc)
			}
			p.viewInc, p.left, changed = d.Incarnation, false, true
		}
		if !p.netUp[idx] {
			p.netUp[idx], changed, rearm = true, true, true
			if p.alive {
				m.log.Info("peer network up", "peer", p.name, "network", m.cfg.Networks[idx].Name)
			}
		}
		if !p.alive {
			p.alive = true
			m.log.Info("peer up", "peer", p.name, "incarnation", d.Incarnation, "network", m.cfg.Networks[idx].Name)
		}
		if newest && !bytes.Equal(p.payload, d.Payload) {
			p.payload, changed = bytes.Clone(d.Payload), true
		}
	}
	m.mu.Unlock()

	if stale {
		s.stale.Add(1)
	} else {
		s.received.Add(1)
	}
	if changed {
		poke(m.changed)
	}
	if rearm {
		poke(m.rearm)
	}
	if newInc {
		poke(m.kick)
	}
	if persist {
		m.persistPeer(p)
	}
}

// expire marks down the networks, then the peers, silent for Timeout, and
// returns the next instant one may expire (zero: none is up).
func (m *Membership) expire(now time.Time) (next time.Time) {
	changed := false
	m.mu.Lock()
	for _, p := range m.peers {
		up := false
		for i, on := range p.netUp {
			if !on {
				continue
			}
			dl := p.lastSeen[i].Add(m.cfg.Timeout)
			if !now.Before(dl) {
				p.netUp[i], changed = false, true
				if p.alive {
					m.log.Info("peer network down", "peer", p.name, "network", m.cfg.Networks[i].Name,
						"silent", now.Sub(p.lastSeen[i]).Round(time.Millisecond))
				}
				continue
			}
			up = true
			if next.IsZero() || dl.Before(next) {
				next = dl
			}
		}
		if p.alive && !up {
			p.alive, changed = false, true
			m.log.Warn("peer down: every network silent", "peer", p.name,
				"silent", now.Sub(p.lastAny).Round(time.Millisecond), "timeout", m.cfg.Timeout)
		}
	}
	m.mu.Unlock()
	if changed {
		poke(m.changed)
	}
	return next
}

// send sends one datagram to each peer on each of its networks: to every
// peer when all is set, else to those that asked (pending). Each copy takes
// the next sequence number of its peer.
func (m *Membership) send(flags uint8, all bool) {
	m.sendMu.Lock()
	defer m.sendMu.Unlock()
	if flags == 0 && m.closing.Load() {
		return // nothing after the goodbye
	}
	m.mu.Lock()
	payload := m.payload
	if m.pendingAll {
		all, m.pendingAll = true, false
	}
	for i, p := range m.peers {
		m.echoes[i], m.sendTo[i], p.pending = p.win.inc, all || p.pending, false
	}
	m.mu.Unlock()

	now := time.Now()
	for i, p := range m.peers {
		if !m.sendTo[i] {
			continue
		}
		for ni, ap := range p.addrs {
			if !ap.IsValid() {
				continue
			}
			p.seq++
			d := datagram{
				Flags: flags, NetIndex: uint8(ni),
				Incarnation: m.inc, Seq: p.seq, Echo: m.echoes[i], Timestamp: now.UnixNano(),
				Sender: m.selfB, Cluster: m.clusterB, Dest: p.nameB, Payload: payload,
			}
			m.sendBuf = appendDatagram(m.sendBuf[:0], &d, m.sendMAC)
			if _, err := m.conns[ni].WriteToUDPAddrPort(m.sendBuf, ap); err != nil {
				m.stats.sendErrors.Add(1)
				if !errors.Is(err, net.ErrClosed) && now.Sub(m.sendLogAt[ni]) >= rejectLogEvery {
					m.sendLogAt[ni] = now
					m.log.Warn("heartbeat send failed", "peer", p.name, "network", m.cfg.Networks[ni].Name,
						"to", ap, "err", err)
				}
				continue
			}
			m.stats.sent.Add(1)
		}
	}
}

// persistPeer writes the peer's highest incarnation if it is not on disk yet.
func (m *Membership) persistPeer(p *peerState) {
	m.persistMu.Lock()
	defer m.persistMu.Unlock()
	m.mu.Lock()
	inc, done := p.win.inc, p.win.inc <= p.persisted
	m.mu.Unlock()
	if done {
		return
	}
	if err := writeCounter(p.path, inc); err != nil {
		m.log.Error("cannot persist peer incarnation: replays of its previous runs would be accepted after our restart",
			"peer", p.name, "err", err)
		return
	}
	m.mu.Lock()
	if inc > p.persisted {
		p.persisted = inc
	}
	m.mu.Unlock()
}

func (m *Membership) reject(from netip.AddrPort, idx int, msg string, args ...any) {
	suppressed, ok := m.rejects.allow(from.Addr(), time.Now())
	if !ok {
		return
	}
	args = append(args, "from", from, "network", m.cfg.Networks[idx].Name)
	if suppressed > 0 {
		args = append(args, "suppressed", suppressed)
	}
	m.log.Warn(msg, args...)
}

func poke(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// logLimiter allows one log line per address per period; it remembers at
// most max addresses so a flood of spoofed sources cannot grow it.
type logLimiter struct {
	mu    sync.Mutex
	every time.Duration
	max   int
	addrs map[netip.Addr]*limitEntry
}

type limitEntry struct {
	last       time.Time
	suppressed uint64
}

// allow reports whether a line about a may be logged now, and how many were
// suppressed since the last one.
func (l *logLimiter) allow(a netip.Addr, now time.Time) (suppressed uint64, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.addrs == nil {
		l.addrs = make(map[netip.Addr]*limitEntry)
	}
	e := l.addrs[a]
	if e != nil {
		if now.Sub(e.last) < l.every {
			e.suppressed++
			return 0, false
		}
		suppressed, e.suppressed, e.last = e.suppressed, 0, now
		return suppressed, true
	}
	if len(l.addrs) >= l.max {
		for k, v := range l.addrs {
			if now.Sub(v.last) >= l.every {
				delete(l.addrs, k)
			}
		}
		if len(l.addrs) >= l.max {
			return 0, false
		}
	}
	l.addrs[a] = &limitEntry{last: now}
	return 0, true
}
