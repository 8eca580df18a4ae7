package membership

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Nodes of a test cluster are distinct loopback addresses sharing one port:
// node k has 127.0.<network>.<k+1> (127.0.0.0/8 is all local on Linux).
type spec struct {
	name  string
	addrs []string // per network; "" = not on that network
}

type testCluster struct {
	port              int
	key               []byte
	interval, timeout time.Duration
	nodes             []spec
	dirs              map[string]string
	nets              int
}

func newTestCluster(t *testing.T, nets int, names ...string) *testCluster {
	t.Helper()
	c := &testCluster{
		port: freePort(t), key: testKey, interval: 20 * time.Millisecond, timeout: 200 * time.Millisecond,
		dirs: map[string]string{}, nets: nets,
	}
	for k, n := range names {
		s := spec{name: n}
		for i := 0; i < nets; i++ {
			s.addrs = append(s.addrs, netip.AddrFrom4([4]byte{127, 0, byte(i), byte(k + 1)}).String())
		}
		c.nodes = append(c.nodes, s)
		c.dirs[n] = t.TempDir()
	}
	return c
}

// freePort finds a UDP port free on 127.0.0.1; the test nodes then bind it
// on other loopback addresses too (collisions are unlikely and fail loudly).
func freePort(t *testing.T) int {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

func (c *testCluster) config(self string) Config {
	cfg := Config{
		Cluster: "test", Self: self, Port: c.port, Key: c.key,
		Interval: c.interval, Timeout: c.timeout, StateDir: c.dirs[self],
		Logger: slog.New(slog.DiscardHandler),
	}
	for _, s := range c.nodes {
		var addrs []netip.Addr
		for _, a := range s.addrs {
			var ad netip.Addr // zero: not on that network
			if a != "" {
				ad = netip.MustParseAddr(a)
			}
			addrs = append(addrs, ad)
		}
		if s.name == self {
			for i, a := range addrs {
				cfg.Networks = append(cfg.Networks, Network{Name: "net" + string(rune('0'+i)), Local: a})
			}
		} else {
			cfg.Peers = append(cfg.Peers, Peer{Name: s.name, Addrs: addrs})
		}
	}
	return cfg
}

type node struct {
	*Membership
	cancel context.CancelFunc
	done   chan error
}

// start creates and runs a node; cleanup stops Run and closes it.
func start(t *testing.T, cfg Config, setup ...func(*Membership)) *node {
	t.Helper()
	m, err := New(cfg)
	if err != nil {
		t.Fatalf("New(%s): %v", cfg.Self, err)
	}
	for _, f := range setup {
		f(m)
	}
	ctx, cancel := context.WithCancel(context.Background())
	n := &node{Membership: m, cancel: cancel, done: make(chan error, 1)}
	go func() { n.done <- m.Run(ctx) }()
	t.Cleanup(func() { n.stop(t); m.Close() })
	return n
}

// stop cancels Run and waits for it (bounded); the sockets stay open.
func (n *node) stop(t *testing.T) {
	t.Helper()
	n.cancel()
	select {
	case err, ok := <-n.done:
		if ok && err != nil {
			t.Errorf("Run: %v", err)
		}
		if ok {
			close(n.done)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Run did not return within 2s of cancel")
	}
}

func view(m *Membership, peer string) PeerView {
	for _, v := range m.Peers() {
		if v.Name == peer {
			return v
		}
	}
	return PeerView{}
}

// waitView waits (bounded) until cond holds for m's view of peer, and
// returns that view and when it was observed.
func waitView(t *testing.T, m *Membership, peer string, within time.Duration, what string, cond func(PeerView) bool) (PeerView, time.Time) {
	t.Helper()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	for {
		if v := view(m, peer); cond(v) {
			return v, time.Now()
		}
		select {
		case <-m.Changed():
		case <-time.After(50 * time.Millisecond): // belt and braces; Changed should suffice
		case <-deadline.C:
			t.Fatalf("%s: not within %v; view %+v; stats %+v", what, within, view(m, peer), m.Stats())
		}
	}
}

func alive(v PeerView) bool { return v.Alive }

func TestTwoNodesSeeEachOtherWithPayloads(t *testing.T) {
	c := newTestCluster(t, 1, "a", "b")
	a := start(t, c.config("a"), func(m *Membership) { m.SetPayload([]byte("from a")) })
	b := start(t, c.config("b"), func(m *Membership) { m.SetPayload([]byte("from b")) })
	va, _ := waitView(t, a.Membership, "b", 2*time.Second, "a sees b with payload", func(v PeerView) bool {
		return v.Alive && string(v.Payload) == "from b"
	})
	vb, _ := waitView(t, b.Membership, "a", 2*time.Second, "b sees a with payload", func(v PeerView) bool {
		return v.Alive && string(v.Payload) == "from a"
	})
	if va.Incarnation != b.Incarnation() || vb.Incarnation != a.Incarnation() {
		t.Errorf("incarnations: a sees %d (b has %d), b sees %d (a has %d)", va.Incarnation, b.Incarnation(), vb.Incarnation, a.Incarnation())
	}
	if len(va.Networks) != 1 || !va.Networks[0] || va.Left || va.LastSeen.IsZero() {
		t.Errorf("view of b: %+v", va)
	}
	// Let a few intervals run: the regular flow must not be refused.
	time.Sleep(5 * c.interval)
	for _, m := range []*Membership{a.Membership, b.Membership} {
		s := m.Stats()
		if s.Received == 0 || s.Sent == 0 || s.BadMAC+s.Replayed+s.Malformed+s.Misdirected+s.UnknownSender+s.WrongCluster != 0 {
			t.Errorf("stats %+v", s)
		}
	}
}

func TestPayloadChangePropagatesAtOnce(t *testing.T) {
	c := newTestCluster(t, 2, "a", "b")
	c.interval, c.timeout = time.Second, 3*time.Second // the tick cannot explain a fast update
	a := start(t, c.config("a"))
	b := start(t, c.config("b"))
	waitView(t, a.Membership, "b", 2*time.Second, "a sees b", alive)
	waitView(t, b.Membership, "a", 2*time.Second, "b sees a", alive)
	// Drain a pending signal so the next one is ours.
	select {
	case <-a.Changed():
	default:
	}
	t0 := time.Now()
	b.SetPayload([]byte("state 2"))
	_, at := waitView(t, a.Membership, "b", 500*time.Millisecond, "new payload", func(v PeerView) bool {
		return string(v.Payload) == "state 2"
	})
	if d := at.Sub(t0); d > 100*time.Millisecond {
		t.Errorf("payload took %v to propagate", d)
	}
	// Same content again: no change signal. (The signal of the change
	// above may follow the view by a moment: let it land, then drain.)
	time.Sleep(20 * time.Millisecond)
	select {
	case <-a.Changed():
	default:
	}
	b.SetPayload([]byte("state 2"))
	time.Sleep(50 * time.Millisecond)
	select {
	case <-a.Changed():
		t.Errorf("Changed signalled for an identical payload: %+v", view(a.Membership, "b"))
	default:
	}
}

func TestCloseMarksPeerLeftAtOnce(t *testing.T) {
	c := newTestCluster(t, 2, "a", "b")
	c.interval, c.timeout = time.Second, 3*time.Second
	a := start(t, c.config("a"))
	b := start(t, c.config("b"))
	waitView(t, a.Membership, "b", 2*time.Second, "a sees b", alive)
	waitView(t, b.Membership, "a", 2*time.Second, "b sees a", alive)
	t0 := time.Now()
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	v, at := waitView(t, a.Membership, "b", time.Second, "b left", func(v PeerView) bool { return v.Left })
	if v.Alive || v.Networks[0] || v.Networks[1] {
		t.Errorf("left peer still alive: %+v", v)
	}
	if d := at.Sub(t0); d > 100*time.Millisecond {
		t.Errorf("leave took %v", d)
	}
	select {
	case err := <-b.done:
		if err != nil {
			t.Errorf("Run after Close: %v", err)
		}
		close(b.done)
	case <-time.After(2 * time.Second):
		t.Fatal("Run did not return after Close")
	}
	if err := b.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	// b comes back: a new incarnation clears Left.
	b2 := start(t, c.config("b"))
	v, _ = waitView(t, a.Membership, "b", 2*time.Second, "b back", alive)
	if v.Left || v.Incarnation != b2.Incarnation() {
		t.Errorf("after restart: %+v, want incarnation %d", v, b2.Incarnation())
	}
}

func TestSilentPeerDownAfterTimeout(t *testing.T) {
	c := newTestCluster(t, 1, "a", "b")
	a := start(t, c.config("a"))
	b := start(t, c.config("b"))
	waitView(t, a.Membership, "b", 2*time.Second, "a sees b", alive)
	// Stays alive over many timeouts while heartbeats flow.
	deadline := time.Now().Add(3 * c.timeout)
	for time.Now().Before(deadline) {
		if !view(a.Membership, "b").Alive {
			t.Fatalf("b flapped down while alive; stats %+v", a.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
	select {
	case <-a.Changed():
	default:
	}
	t0 := time.Now()
	b.stop(t) // like a crash: no goodbye
	v, at := waitView(t, a.Membership, "b", 2*time.Second, "b down", func(v PeerView) bool { return !v.Alive })
	if v.Left {
		t.Error("a silent peer must not be Left")
	}
	silent := at.Sub(v.LastSeen)
	t.Logf("down %v after the last heartbeat, %v after the stop", silent, at.Sub(t0))
	if silent < c.timeout {
		t.Errorf("down after %v of silence, before the timeout %v", silent, c.timeout)
	}
	if silent > c.timeout+60*time.Millisecond {
		t.Errorf("down after %v of silence, timeout is %v: the timer is not precise", silent, c.timeout)
	}
	if d := at.Sub(t0); d < c.timeout-c.interval-5*time.Millisecond {
		t.Errorf("down %v after the stop: sooner than timeout - interval", d)
	}
}

func TestTwoNetworks(t *testing.T) {
	c := newTestCluster(t, 2, "a", "b")
	a := start(t, c.config("a"))
	start(t, c.config("b"))
	waitView(t, a.Membership, "b", 2*time.Second, "b up on both networks", func(v PeerView) bool {
		return v.Alive && v.Networks[0] && v.Networks[1]
	})
	a.dropRecv.Store(1 << 1) // network 1 goes silent
	waitView(t, a.Membership, "b", 2*time.Second, "network 1 down", func(v PeerView) bool { return !v.Networks[1] })
	deadline := time.Now().Add(3 * c.timeout)
	for time.Now().Before(deadline) {
		if v := view(a.Membership, "b"); !v.Alive || !v.Networks[0] || v.Networks[1] {
			t.Fatalf("one silent network: view %+v", v)
		}
		time.Sleep(10 * time.Millisecond)
	}
	t0 := time.Now()
	a.dropRecv.Store(1<<0 | 1<<1) // both silent
	v, at := waitView(t, a.Membership, "b", 2*time.Second, "b down", func(v PeerView) bool { return !v.Alive })
	if d := at.Sub(t0); d < c.timeout-c.interval-5*time.Millisecond || d > c.timeout+60*time.Millisecond {
		t.Errorf("down %v after both networks went silent, timeout %v", d, c.timeout)
	}
	if v.Networks[0] || v.Networks[1] {
		t.Errorf("down peer with a live network: %+v", v)
	}
	a.dropRecv.Store(1 << 0) // network 1 heals
	v, _ = waitView(t, a.Membership, "b", 2*time.Second, "b back on network 1", alive)
	if v.Networks[0] || !v.Networks[1] {
		t.Errorf("back on network 1 only: %+v", v)
	}
}

func TestPeerOnOneNetworkOnly(t *testing.T) {
	c := newTestCluster(t, 2, "a", "b", "c")
	c.nodes[2].addrs[0] = "" // c is only on network 1
	a := start(t, c.config("a"))
	start(t, c.config("b"))
	cc := start(t, c.config("c"))
	v, _ := waitView(t, a.Membership, "c", 2*time.Second, "a sees c", alive)
	if v.Networks[0] || !v.Networks[1] {
		t.Errorf("c on network 1 only: %+v", v)
	}
	waitView(t, cc.Membership, "a", 2*time.Second, "c sees a", alive)
	waitView(t, cc.Membership, "b", 2*time.Second, "c sees b", alive)
	waitView(t, a.Membership, "b", 2*time.Second, "a sees b", alive)
}

func TestWrongKeyRejected(t *testing.T) {
	c := newTestCluster(t, 1, "a", "b")
	a := start(t, c.config("a"))
	cfg := c.config("b")
	cfg.Key = []byte("not the cluster key at all")
	start(t, cfg)
	deadline := time.Now().Add(2 * time.Second)
	for a.Stats().BadMAC < 3 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if s := a.Stats(); s.BadMAC < 3 || s.Received != 0 {
		t.Fatalf("stats %+v: want BadMAC counted, nothing received", s)
	}
	if view(a.Membership, "b").Alive {
		t.Fatal("peer with the wrong key seen alive")
	}
}

// capture keeps the first n authenticated datagrams a node receives.
type capture struct {
	mu  sync.Mutex
	n   int
	got [][]byte
}

func (c *capture) tap(_ int, b []byte) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.got) < c.n {
		c.got = append(c.got, bytes.Clone(b))
	}
}

func (c *capture) first(t *testing.T) []byte {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.got) == 0 {
		t.Fatal("nothing captured")
	}
	return c.got[0]
}

// inject sends raw bytes to addr:port from a throwaway loopback address.
func inject(t *testing.T, to string, port int, pkts ...[]byte) {
	t.Helper()
	c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 9, 9)})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	dst := net.UDPAddrFromAddrPort(netip.AddrPortFrom(netip.MustParseAddr(to), uint16(port)))
	for _, p := range pkts {
		if _, err := c.WriteToUDP(p, dst); err != nil {
			t.Fatal(err)
		}
	}
}

// waitStat waits (bounded) until f(stats) holds.
func waitStat(t *testing.T, m *Membership, what string, f func(Stats) bool) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for !f(m.Stats()) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: stats %+v", what, m.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestReplayedDatagramRejected(t *testing.T) {
	c := newTestCluster(t, 1, "a", "b")
	capt := &capture{n: 1}
	a := start(t, c.config("a"), func(m *Membership) { m.tap = capt.tap })
	start(t, c.config("b"))
	waitView(t, a.Membership, "b", 2*time.Second, "a sees b", alive)
	pkt := capt.first(t)
	before := a.Stats()
	inject(t, "127.0.0.1", c.port, pkt, pkt)
	waitStat(t, a.Membership, "replays counted", func(s Stats) bool { return s.Replayed >= before.Replayed+2 })
}

func TestOldIncarnationRejectedAfterRestart(t *testing.T) {
	c := newTestCluster(t, 1, "a", "b")
	// Run 1: capture a datagram of b's first incarnation.
	capt := &capture{n: 1}
	a1 := start(t, c.config("a"), func(m *Membership) { m.tap = capt.tap })
	b1 := start(t, c.config("b"))
	waitView(t, a1.Membership, "b", 2*time.Second, "run 1", alive)
	old := capt.first(t)
	b1.stop(t)
	b1.Close()
	a1.stop(t)
	a1.Close()

	// Run 2: a learns b's second incarnation (and persists it).
	a2 := start(t, c.config("a"))
	b2 := start(t, c.config("b"))
	waitView(t, a2.Membership, "b", 2*time.Second, "run 2", func(v PeerView) bool {
		return v.Alive && v.Incarnation == b2.Incarnation()
	})
	if b2.Incarnation() <= b1.Incarnation() {
		t.Fatalf("incarnation did not grow: %d then %d", b1.Incarnation(), b2.Incarnation())
	}
	waitStat(t, a2.Membership, "received", func(s Stats) bool { return s.Received > 0 })
	b2.stop(t)
	b2.Close()
	a2.stop(t)
	a2.Close()
	if v, ok, err := readCounter(filepath.Join(c.dirs["a"], "membership", "peer-b")); err != nil || !ok || v != b2.Incarnation() {
		t.Fatalf("peer-b on disk: %d %v %v, want %d", v, ok, err, b2.Incarnation())
	}

	// Run 3: b is down; its first-run datagram is refused by the persisted
	// incarnation alone (a's in-memory window is new).
	a3 := start(t, c.config("a"))
	inject(t, "127.0.0.1", c.port, old)
	waitStat(t, a3.Membership, "old incarnation refused", func(s Stats) bool { return s.Replayed == 1 })
	if s := a3.Stats(); s.Received != 0 || s.Stale != 0 || view(a3.Membership, "b").Alive {
		t.Fatalf("old incarnation accepted: %+v", s)
	}
}

// fakePeer plays node "b" by hand, to send crafted datagrams.
type fakePeer struct {
	conn *net.UDPConn
	to   netip.AddrPort
	mac  []byte
	seq  uint64
}

func newFakePeer(t *testing.T, c *testCluster) *fakePeer {
	conn, err := net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.MustParseAddrPort(c.nodes[1].addrs[0]+":"+strconv.Itoa(c.port))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return &fakePeer{conn: conn, to: netip.MustParseAddrPort(c.nodes[0].addrs[0] + ":" + strconv.Itoa(c.port)), mac: c.key}
}

func (f *fakePeer) send(t *testing.T, edit func(d *datagram)) {
	t.Helper()
	f.seq++
	d := datagram{
		Incarnation: 1, Seq: f.seq, Timestamp: time.Now().UnixNano(),
		Sender: []byte("b"), Cluster: []byte("test"), Dest: []byte("a"), Payload: []byte("p"),
	}
	if edit != nil {
		edit(&d)
	}
	b := appendDatagram(nil, &d, newMAC(f.mac))
	if _, err := f.conn.WriteToUDPAddrPort(b, f.to); err != nil {
		t.Fatal(err)
	}
}

func TestRejectsForeignDatagrams(t *testing.T) {
	c := newTestCluster(t, 2, "a", "b")
	c.timeout = 2 * time.Second
	var logs syncBuffer
	cfg := c.config("a")
	cfg.Logger = slog.New(slog.NewTextHandler(&logs, nil))
	a := start(t, cfg)
	f := newFakePeer(t, c)
	echo := a.Incarnation()

	f.send(t, func(d *datagram) { d.Cluster = []byte("other") })
	f.send(t, func(d *datagram) { d.Sender = []byte("mallory"); d.Echo = echo })
	f.send(t, func(d *datagram) { d.Sender = []byte("a"); d.Echo = echo })
	f.send(t, func(d *datagram) { d.Dest = []byte("c"); d.Echo = echo })
	f.send(t, func(d *datagram) { d.NetIndex = 1; d.Echo = echo })
	f.send(t, func(d *datagram) { d.Echo = echo - 1 }) // from before a's restart
	waitStat(t, a.Membership, "rejects", func(s Stats) bool {
		return s.WrongCluster == 1 && s.UnknownSender == 2 && s.Misdirected == 2 && s.Stale == 1
	})
	if v := view(a.Membership, "b"); v.Alive || v.Payload != nil {
		t.Fatalf("rejected datagrams changed the view: %+v", v)
	}
	// Only the stale one entered the window: the same sequence is a replay.
	f.seq--
	f.send(t, func(d *datagram) { d.Echo = echo })
	waitStat(t, a.Membership, "replay", func(s Stats) bool { return s.Replayed == 1 })

	f.send(t, func(d *datagram) { d.Echo = echo; d.Payload = []byte("hello") })
	v, _ := waitView(t, a.Membership, "b", time.Second, "crafted b accepted", alive)
	if string(v.Payload) != "hello" || v.Incarnation != 1 {
		t.Fatalf("view %+v", v)
	}

	// Garbage from one address: counted each time, logged once.
	for i := 0; i < 20; i++ {
		inject(t, "127.0.0.1", c.port, []byte("TDM1 this is not a heartbeat at all, not even close......................................"))
	}
	waitStat(t, a.Membership, "malformed", func(s Stats) bool { return s.Malformed == 20 })
	if n := strings.Count(logs.String(), "malformed heartbeat"); n != 1 {
		t.Errorf("%d log lines about malformed datagrams from one address, want 1:\n%s", n, logs.String())
	}
	if s := a.Stats(); s.BadMAC != 0 || s.Received != 1 {
		t.Errorf("stats %+v", s)
	}
}

func TestLeaveThenLateCopiesDoNotRevive(t *testing.T) {
	c := newTestCluster(t, 1, "a", "b")
	c.timeout = 2 * time.Second
	a := start(t, c.config("a"))
	f := newFakePeer(t, c)
	echo := a.Incarnation()
	f.send(t, func(d *datagram) { d.Echo = echo; d.Seq = 10 })
	waitView(t, a.Membership, "b", time.Second, "b alive", alive)
	f.send(t, func(d *datagram) { d.Echo = echo; d.Seq = 12; d.Flags = flagLeaving })
	waitView(t, a.Membership, "b", time.Second, "b left", func(v PeerView) bool { return v.Left && !v.Alive })
	f.send(t, func(d *datagram) { d.Echo = echo; d.Seq = 11 }) // a copy overtaken by the goodbye
	waitStat(t, a.Membership, "late copy", func(s Stats) bool { return s.Received == 3 })
	if v := view(a.Membership, "b"); v.Alive || !v.Left {
		t.Fatalf("late copy revived a departed peer: %+v", v)
	}
	f.send(t, func(d *datagram) { d.Echo = echo; d.Incarnation = 2; d.Seq = 1 })
	waitView(t, a.Membership, "b", time.Second, "b back", func(v PeerView) bool { return v.Alive && !v.Left && v.Incarnation == 2 })
}

func TestIncarnationPersisted(t *testing.T) {
	dir := t.TempDir()
	c := newTestCluster(t, 1, "a", "b")
	c.dirs["a"] = dir
	var last uint64
	for i := 0; i < 3; i++ {
		m, err := New(c.config("a"))
		if err != nil {
			t.Fatal(err)
		}
		if m.Incarnation() <= last {
			t.Fatalf("run %d: incarnation %d after %d", i, m.Incarnation(), last)
		}
		last = m.Incarnation()
		if v, _, _ := readCounter(filepath.Join(dir, "membership", "incarnation")); v != last {
			t.Fatalf("on disk %d, in use %d", v, last)
		}
		m.Close()
	}
	// A damaged counter does not keep the node down.
	if err := os.WriteFile(filepath.Join(dir, "membership", "incarnation"), []byte("garbage"), 0o600); err != nil {
		t.Fatal(err)
	}
	m, err := New(c.config("a"))
	if err != nil {
		t.Fatalf("damaged counter: %v", err)
	}
	defer m.Close()
	if m.Incarnation() < uint64(time.Now().Unix())-5 {
		t.Fatalf("incarnation %d after a damaged counter", m.Incarnation())
	}
}

func TestConfigErrors(t *testing.T) {
	c := newTestCluster(t, 2, "a", "b")
	cases := map[string]struct {
		edit func(*Config)
		want string
	}{
		"no cluster":    {func(c *Config) { c.Cluster = "" }, "cluster name"},
		"slash":         {func(c *Config) { c.Self = "a/b" }, "node name"},
		"no networks":   {func(c *Config) { c.Networks = nil; c.Peers = nil }, "no network"},
		"port":          {func(c *Config) { c.Port = 0 }, "port 0"},
		"short key":     {func(c *Config) { c.Key = []byte("short") }, "cluster key is 5 bytes"},
		"timeout":       {func(c *Config) { c.Timeout = c.Interval }, "timeout"},
		"no state dir":  {func(c *Config) { c.StateDir = "" }, "state directory"},
		"addr count":    {func(c *Config) { c.Peers[0].Addrs = c.Peers[0].Addrs[:1] }, "1 addresses for 2 networks"},
		"dup peer":      {func(c *Config) { c.Peers = append(c.Peers, c.Peers[0]) }, "listed twice"},
		"peer is self":  {func(c *Config) { c.Peers[0].Name = "a" }, "listed twice or named like this node"},
		"family":        {func(c *Config) { c.Peers[0].Addrs[1] = netip.MustParseAddr("::1") }, "family"},
		"our address":   {func(c *Config) { c.Peers[0].Addrs[0] = c.Networks[0].Local }, `also "a"'s`},
		"no addr":       {func(c *Config) { c.Peers[0].Addrs = make([]netip.Addr, 2) }, "no address"},
		"no local":      {func(c *Config) { c.Networks[0].Local, c.Networks[1].Local = netip.Addr{}, netip.Addr{} }, "no local address"},
		"no shared net": {func(c *Config) { c.Networks[1].Local = netip.Addr{}; c.Peers[0].Addrs[0] = netip.Addr{} }, "no address on any network this node is on"},
	}
	for name, tc := range cases {
		cfg := c.config("a")
		tc.edit(&cfg)
		_, err := New(cfg)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want it to mention %q", name, err, tc.want)
		}
	}
}

func TestBindErrorNamesAddress(t *testing.T) {
	c := newTestCluster(t, 1, "a", "b")
	cfg := c.config("a")
	cfg.Networks[0].Local = netip.MustParseAddr("192.0.2.11") // not configured here
	cfg.Peers[0].Addrs[0] = netip.MustParseAddr("192.0.2.12")
	_, err := New(cfg)
	if err == nil {
		t.Fatal("bind to an unconfigured address succeeded")
	}
	want := "bind 192.0.2.11:" + strconv.Itoa(c.port) + ": address not available"
	if !strings.Contains(err.Error(), want) || !errors.Is(err, syscall.EADDRNOTAVAIL) {
		t.Fatalf("error %q, want it to contain %q and wrap EADDRNOTAVAIL", err, want)
	}
	// Port taken: a second node on the same address.
	m, err := New(c.config("a"))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := New(c.config("a")); err == nil || !strings.Contains(err.Error(), "already in use") {
		t.Fatalf("second bind: %v", err)
	}
}

func TestRunStopsWithoutLeaks(t *testing.T) {
	c := newTestCluster(t, 2, "a", "b")
	before := runtime.NumGoroutine()
	for i := 0; i < 3; i++ {
		a, err := New(c.config("a"))
		if err != nil {
			t.Fatal(err)
		}
		b, err := New(c.config("b"))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 2)
		go func() { done <- a.Run(ctx) }()
		go func() { done <- b.Run(ctx) }()
		time.Sleep(3 * c.interval)
		if i%2 == 0 {
			cancel() // Run returns, then Close says goodbye
		} else {
			a.Close() // Close ends Run
			b.Close()
		}
		for j := 0; j < 2; j++ {
			select {
			case err := <-done:
				if err != nil {
					t.Fatalf("Run: %v", err)
				}
			case <-time.After(2 * time.Second):
				t.Fatal("Run did not return")
			}
		}
		cancel()
		a.Close()
		b.Close()
		if err := a.Run(context.Background()); err == nil {
			t.Fatal("second Run accepted")
		}
	}
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<16)
		t.Fatalf("%d goroutines, %d before:\n%s", n, before, buf[:runtime.Stack(buf, true)])
	}
}

func TestOversizePayloadRefused(t *testing.T) {
	c := newTestCluster(t, 1, "a", "b")
	a, err := New(c.config("a"))
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	a.SetPayload([]byte("ok"))
	a.SetPayload(make([]byte, MaxPayload+1))
	a.mu.Lock()
	defer a.mu.Unlock()
	if string(a.payload) != "ok" {
		t.Fatalf("payload %d bytes, want the previous one kept", len(a.payload))
	}
}

func TestLargePayload(t *testing.T) {
	c := newTestCluster(t, 1, "a", "b")
	big := bytes.Repeat([]byte("0123456789"), 800) // 8 KB: fragmented over Ethernet, fine
	a := start(t, c.config("a"))
	start(t, c.config("b"), func(m *Membership) { m.SetPayload(big) })
	waitView(t, a.Membership, "b", 2*time.Second, "big payload", func(v PeerView) bool { return bytes.Equal(v.Payload, big) })
}

func TestLogLimiter(t *testing.T) {
	l := logLimiter{every: 10 * time.Second, max: 2}
	t0 := time.Unix(1000, 0)
	a, b, c := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"), netip.MustParseAddr("192.0.2.3")
	if _, ok := l.allow(a, t0); !ok {
		t.Fatal("first line refused")
	}
	for i := 0; i < 5; i++ {
		if _, ok := l.allow(a, t0.Add(time.Second)); ok {
			t.Fatal("second line within 10s allowed")
		}
	}
	if _, ok := l.allow(b, t0); !ok {
		t.Fatal("another address refused")
	}
	if _, ok := l.allow(c, t0.Add(time.Second)); ok {
		t.Fatal("table full of recent entries: should refuse")
	}
	if n, ok := l.allow(a, t0.Add(10*time.Second)); !ok || n != 5 {
		t.Fatalf("after 10s: ok=%v suppressed=%d, want true 5", ok, n)
	}
	if _, ok := l.allow(c, t0.Add(11*time.Second)); !ok {
		t.Fatal("old entries should be pruned for a new address")
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var _ io.Writer = (*syncBuffer)(nil)

func TestSocketsMarkedCS6(t *testing.T) {
	c := newTestCluster(t, 1, "a", "b")
	m, err := New(c.config("a"))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	rc, err := m.conns[0].SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var tos int
	var gerr error
	if err := rc.Control(func(fd uintptr) { tos, gerr = syscall.GetsockoptInt(int(fd), syscall.IPPROTO_IP, syscall.IP_TOS) }); err != nil || gerr != nil {
		t.Fatal(err, gerr)
	}
	if tos != dscpCS6 {
		t.Fatalf("IP_TOS %#x, want %#x", tos, dscpCS6)
	}
}
