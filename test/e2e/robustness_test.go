package e2e

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/api"
	"github.com/tandem-ha/tandem/internal/eventlog"
	"github.com/tandem-ha/tandem/internal/testbed/tcluster"
)

// pairWatch samples both nodes' status and the VIP holder and records
// every departure from a settled pair: alpha PRIM, beta SECOND, epoch
// unchanged, peer heard, VIP on alpha only.
type pairWatch struct {
	c              *tcluster.Cluster
	epochA, epochB uint64
	samples        int
	problems       []string
	count          int
}

func newPairWatch(t *testing.T, c *tcluster.Cluster) *pairWatch {
	t.Helper()
	a := c.WaitState("alpha", "PRIM", 5*time.Second)
	b := c.WaitState("beta", "SECOND", 5*time.Second)
	if a.Epoch != b.Epoch {
		t.Fatalf("settled pair with different epochs: alpha %d, beta %d", a.Epoch, b.Epoch)
	}
	return &pairWatch{c: c, epochA: a.Epoch, epochB: b.Epoch}
}

func (w *pairWatch) problem(format string, a ...any) {
	w.count++
	if len(w.problems) < 10 {
		w.problems = append(w.problems, time.Now().Format("15:04:05.000")+" "+fmt.Sprintf(format, a...))
	}
}

// sample checks the pair once.
func (w *pairWatch) sample() {
	w.samples++
	for _, n := range []struct {
		name, state string
		epoch       uint64
	}{{"alpha", "PRIM", w.epochA}, {"beta", "SECOND", w.epochB}} {
		st, err := w.c.Status(n.name)
		switch {
		case err != nil:
			w.problem("%s: status: %v", n.name, err)
		case st.State != n.state || st.Target != "":
			w.problem("%s: state %s target %q (reason %q), want %s", n.name, st.State, st.Target, st.Reason, n.state)
		case st.Epoch != n.epoch:
			w.problem("%s: epoch %d, was %d", n.name, st.Epoch, n.epoch)
		case !st.PeerAlive || st.PeerState == "DOWN":
			w.problem("%s: peer %s seen %s (alive %v)", n.name, st.Peer, st.PeerState, st.PeerAlive)
		}
	}
	if h := w.c.Holder(vip4); h != "alpha" {
		w.problem("VIP holder %q, want alpha", h)
	}
}

// run samples every period until d has passed.
func (w *pairWatch) run(d, period time.Duration) {
	end := time.Now().Add(d)
	tick := time.NewTicker(period)
	defer tick.Stop()
	for time.Now().Before(end) {
		w.sample()
		<-tick.C
	}
}

func (w *pairWatch) check(t *testing.T, what string) {
	t.Helper()
	t.Logf("%s: %d samples of both nodes", what, w.samples)
	if w.count > 0 {
		t.Errorf("%s: the pair changed in %d of %d samples; first ones:\n%s", what, w.count, w.samples, strings.Join(w.problems, "\n"))
	}
}

// noTransitions fails if a node's module log shows a state change or a
// lost peer since since.
func noTransitions(t *testing.T, c *tcluster.Cluster, since time.Time) {
	t.Helper()
	for _, n := range []string{"alpha", "beta"} {
		for _, e := range eventsSince(t, c, n, since) {
			if e.Kind == eventlog.KindState || (e.Kind == eventlog.KindPeer && strings.Contains(e.Msg, "down")) {
				t.Errorf("%s logged %s", n, eventlog.Format(e))
			}
		}
	}
}

// With every CPU saturated (busy loops in the root namespace and in both
// hosts), the settled pair never fails over, the peers never lose each
// other, and a kill -9 of the primary still moves the service in < 1.5 s.
func TestNoFalseFailoverUnderLoad(t *testing.T) {
	c := newCluster(t, tcluster.Options{})
	c.StartPair()
	c.WaitReach(vip4, "alpha", 5*time.Second)
	w := newPairWatch(t, c)

	d := 20 * time.Second
	if testing.Short() {
		d = 5 * time.Second
	}
	per := max(4, runtime.NumCPU())
	startHogs(t, per, nil, c.Node("alpha").Host, c.Node("beta").Host)
	time.Sleep(200 * time.Millisecond) // let the hogs spin up
	since := time.Now()
	busy0, total0 := cpuTimes(t)
	w.run(d, 50*time.Millisecond)
	busy1, total1 := cpuTimes(t)
	util := float64(busy1-busy0) / float64(max(total1-total0, 1))
	t.Logf("CPU load: %d busy loops on %d CPUs for %s, %.0f%% busy", 3*per, runtime.NumCPU(), d, 100*util)
	if util < 0.9 {
		t.Errorf("the CPUs were only %.0f%% busy: the load did not load", 100*util)
	}
	w.check(t, "under CPU load")
	noTransitions(t, c, since)

	// Still under load: a real failure is detected in time.
	start := time.Now()
	c.Kill9("alpha")
	c.WaitReach(vip4, "beta", 5*time.Second)
	took := time.Since(start)
	t.Logf("under CPU load: kill -9 -> client served by beta after %s", took.Round(time.Millisecond))
	if took > 1500*time.Millisecond {
		t.Errorf("failover under CPU load took %s, want < 1.5s", took.Round(time.Millisecond))
	}
	c.WaitState("beta", "ALONE", 3*time.Second)
}

// wireDatagram encodes a heartbeat in the documented wire format
// (internal/membership/wire.go) with an HMAC under key.
func wireDatagram(key []byte, flags, netIdx byte, sender, cluster, dest string, inc, seq, echo uint64, payload []byte) []byte {
	b := []byte("TDM1")
	b = append(b, 1, flags, netIdx, byte(len(sender)), byte(len(cluster)), byte(len(dest)))
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
	b = binary.BigEndian.AppendUint64(b, inc)
	b = binary.BigEndian.AppendUint64(b, seq)
	b = binary.BigEndian.AppendUint64(b, echo)
	b = binary.BigEndian.AppendUint64(b, uint64(time.Now().UnixNano()))
	b = append(b, sender...)
	b = append(b, cluster...)
	b = append(b, dest...)
	b = append(b, payload...)
	m := hmac.New(sha256.New, key)
	m.Write(b)
	return m.Sum(b)
}

// badInput makes hostile datagrams: well-formed ones signed with another
// key, random bytes, truncations, bit flips, lying headers, huge ones.
type badInput struct {
	rng      *mrand.Rand
	key      []byte
	seq      uint64
	counts   map[string]int
	countsMu sync.Mutex
}

func (g *badInput) wrongKey(dest string, netIdx byte) []byte {
	g.seq++
	sender := map[string]string{"alpha": "beta", "beta": "alpha"}[dest]
	// A payload that would make the receiver give up its role if accepted.
	payload := []byte(`{"cd":"0000000000000000","m":{"web":{"s":"PRIM","e":99,"u":true,"d":"x"}}}`)
	return wireDatagram(g.key, 0, netIdx, sender, "e2e", dest, 1<<40+g.rng.Uint64N(1<<20), g.seq, 0, payload)
}

func (g *badInput) next(dest string, netIdx byte) []byte {
	kinds := []string{"wrong key", "leaving, wrong key", "random", "empty", "truncated", "bit flips", "lying header", "huge"}
	kind := kinds[g.rng.IntN(len(kinds))]
	g.countsMu.Lock()
	g.counts[kind]++
	g.countsMu.Unlock()
	switch kind {
	case "wrong key":
		return g.wrongKey(dest, netIdx)
	case "leaving, wrong key":
		b := g.wrongKey(dest, netIdx)
		b[5] = 1 // the "sender is leaving" flag: must not mark the peer gone
		return b
	case "random":
		b := make([]byte, g.rng.IntN(1500))
		rand.Read(b)
		return b
	case "empty":
		return nil
	case "truncated":
		b := g.wrongKey(dest, netIdx)
		return b[:g.rng.IntN(len(b))]
	case "bit flips":
		b := g.wrongKey(dest, netIdx)
		for range 1 + g.rng.IntN(8) {
			b[g.rng.IntN(len(b))] ^= 1 << g.rng.IntN(8)
		}
		return b
	case "lying header":
		b := g.wrongKey(dest, netIdx)
		switch g.rng.IntN(5) {
		case 0:
			b[4] = 2 // version
		case 1:
			b[7], b[8], b[9] = 0, 0, 0 // empty names
		case 2:
			binary.BigEndian.PutUint32(b[10:14], 0xffffffff) // payload length
		case 3:
			b[7], b[8], b[9] = 255, 255, 255 // names longer than the datagram
		case 4:
			b[6] = 200 // network index
		}
		return b
	default: // huge: the largest UDP datagram over IPv4
		b := make([]byte, 65507)
		rand.Read(b)
		if g.rng.IntN(2) == 0 {
			copy(b, g.wrongKey(dest, netIdx)[:46])
		}
		return b
	}
}

// Hostile datagrams on the heartbeat port of both agents on every network
// (garbage, truncations, forged heartbeats signed with another key) change
// nothing: both agents stay up, the pair stays as it was, the VIP stays
// put, and the agents' logs are not flooded.
func TestBadHeartbeatInput(t *testing.T) {
	c := newCluster(t, tcluster.Options{})
	c.StartPair()
	c.WaitReach(vip4, "alpha", 5*time.Second)
	w := newPairWatch(t, c)

	logLines := map[string]int{}
	for _, n := range []string{"alpha", "beta"} {
		l, err := c.Node(n).Proc().Log()
		must(t, err)
		logLines[n] = strings.Count(l, "\n")
	}

	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	key := make([]byte, 32)
	rand.Read(key)
	g := &badInput{rng: mrand.New(mrand.NewPCG(uint64(seed), 1)), key: key, counts: map[string]int{}}

	conn, err := c.Client.ListenPacket("udp4", ":0")
	must(t, err)
	defer conn.Close()
	type target struct {
		node   string
		netIdx byte
		addr   *net.UDPAddr
	}
	var targets []target
	for _, n := range []string{"alpha", "beta"} {
		for i, nw := range []string{"lan", "backup"} {
			ap := netip.AddrPortFrom(c.Node(n).Host.Addr(nw), 7400)
			targets = append(targets, target{n, byte(i), net.UDPAddrFromAddrPort(ap)})
		}
	}
	// Forged heartbeats first: the receiver logs the first rejection per
	// source address, so its log proves they reached the MAC check.
	for _, tg := range targets {
		if _, err := conn.WriteTo(g.wrongKey(tg.node, tg.netIdx), tg.addr); err != nil {
			t.Fatalf("send to %v: %v", tg.addr, err)
		}
	}

	d := 4 * time.Second
	if testing.Short() {
		d = 2 * time.Second
	}
	since := time.Now()
	var sent, sendErrs atomic.Int64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			tg := targets[i%len(targets)]
			if _, err := conn.WriteTo(g.next(tg.node, tg.netIdx), tg.addr); err != nil {
				sendErrs.Add(1)
			} else {
				sent.Add(1)
			}
			if i%4 == 3 {
				time.Sleep(time.Millisecond) // ~4000 datagrams/s, not a CPU flood
			}
		}
	}()
	w.run(d, 50*time.Millisecond)
	close(stop)
	<-done
	g.countsMu.Lock()
	t.Logf("sent %d hostile datagrams (%d send errors): %v", sent.Load(), sendErrs.Load(), g.counts)
	g.countsMu.Unlock()
	if sent.Load() < 1000 {
		t.Errorf("only %d datagrams sent", sent.Load())
	}
	w.sample() // after the last datagram too
	w.check(t, "under hostile datagrams")
	noTransitions(t, c, since)

	for _, n := range []string{"alpha", "beta"} {
		select {
		case <-c.Node(n).Proc().Done():
			t.Errorf("agent %s exited during the hostile datagrams", n)
		default:
		}
		l, err := c.Node(n).Proc().Log()
		must(t, err)
		if !strings.Contains(l, "bad MAC") {
			t.Errorf("agent %s did not log the forged heartbeats as bad MAC: the test's encoder or the agent's check is wrong", n)
		}
		if !strings.Contains(l, "malformed heartbeat") {
			t.Logf("agent %s logged no malformed heartbeat (rate-limited per source address)", n)
		}
		if added := strings.Count(l, "\n") - logLines[n]; added > 40 {
			t.Errorf("agent %s wrote %d log lines during the hostile datagrams: rejections are not rate-limited", n, added)
		}
	}
	// The pair still works: a swap goes through.
	if _, err := c.Command("beta", "swap", api.CommandOptions{}); err != nil {
		t.Fatalf("swap after the hostile datagrams: %v", err)
	}
	c.WaitState("beta", "PRIM", 10*time.Second)
	c.WaitState("alpha", "SECOND", 10*time.Second)
	c.WaitReach(vip4, "beta", 3*time.Second)
}

// Nodes whose cluster files differ (here heartbeat.timeout) refuse to pair
// and say which field differs; the running primary keeps serving, the other
// node waits. With the same file again they pair.
func TestClusterFilesDiffer(t *testing.T) {
	c := newCluster(t, tcluster.Options{})
	c.StartPair()
	c.WaitReach(vip4, "alpha", 5*time.Second)

	orig := c.ConfigPath()
	b, err := os.ReadFile(orig)
	must(t, err)
	if !strings.Contains(string(b), "timeout: 600ms") {
		t.Fatalf("cluster file has no heartbeat timeout of 600ms:\n%s", b)
	}
	other := filepath.Join(c.Dir(), "cluster-beta.yaml")
	must(t, os.WriteFile(other, []byte(strings.Replace(string(b), "timeout: 600ms", "timeout: 700ms", 1)), 0o644))

	beta := c.Node("beta")
	c.Sigterm("beta")
	beta.SetConfig(other)
	c.Start("beta")
	c.WaitAgent("beta")

	a := c.WaitReason("alpha", "ALONE", "heartbeat.timeout", 5*time.Second)
	bs := c.WaitReason("beta", "WAIT", "heartbeat.timeout", 5*time.Second)
	t.Logf("alpha: %s (%s)", a.State, a.Reason)
	t.Logf("beta: %s (%s)", bs.State, bs.Reason)
	for _, st := range []api.ModuleStatus{a, bs} {
		if !strings.Contains(st.Reason, "600ms") || !strings.Contains(st.Reason, "700ms") {
			t.Errorf("%s: reason %q does not show both values (600ms, 700ms)", st.Node, st.Reason)
		}
	}
	for _, n := range []string{"alpha", "beta"} {
		waitEvent(t, c, []string{n}, 3*time.Second, "naming heartbeat.timeout", func(e eventlog.Event) bool {
			return e.Kind == eventlog.KindPeer && strings.Contains(e.Msg, "heartbeat.timeout")
		})
	}
	// It stays that way: alpha serves, beta does not take over.
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		sa, errA := c.Status("alpha")
		sb, errB := c.Status("beta")
		if errA != nil || errB != nil || sa.State != "ALONE" || sb.State != "WAIT" {
			t.Fatalf("with differing cluster files: alpha %s (%v), beta %s (%q, %v)", sa.State, errA, sb.State, sb.Reason, errB)
		}
		if h := c.Holder(vip4); h != "alpha" {
			t.Fatalf("VIP holder %q, want alpha", h)
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.WaitReach(vip4, "alpha", 2*time.Second)

	// Same file again: they pair.
	c.Sigterm("beta")
	beta.SetConfig(orig)
	c.Start("beta")
	c.WaitState("beta", "SECOND", 10*time.Second)
	c.WaitState("alpha", "PRIM", 5*time.Second)
}

// A VIP present on both nodes at once (here added by hand on the
// secondary) is reported as an error in the module log.
func TestDuplicateVIPDetected(t *testing.T) {
	c := newCluster(t, tcluster.Options{})
	c.StartPair()
	c.WaitReach(vip4, "alpha", 5*time.Second)
	beta := c.Node("beta").Host
	dev := beta.Ifaces["lan"]

	since := time.Now()
	c.PauseSampler()
	removed := false
	remove := func() {
		if removed {
			return
		}
		removed = true
		if _, err := beta.Run("ip", "addr", "del", "192.0.2.100/24", "dev", dev); err != nil {
			t.Errorf("remove the duplicate VIP from beta: %v", err)
		}
		c.ResumeSampler()
	}
	t.Cleanup(remove)
	if _, err := beta.Run("ip", "addr", "add", "192.0.2.100/24", "dev", dev); err != nil {
		t.Fatal(err)
	}
	node, e := waitEvent(t, c, []string{"alpha", "beta"}, 3*time.Second, `of kind "error" naming the VIP on both nodes`, func(e eventlog.Event) bool {
		return e.Kind == eventlog.KindError && !e.Time.Before(since) &&
			strings.Contains(e.Msg, "192.0.2.100") && strings.Contains(e.Msg, "alpha") && strings.Contains(e.Msg, "beta")
	})
	t.Logf("%s reported after %s: %s", node, e.Time.Sub(since).Round(time.Millisecond), eventlog.Format(e))
	remove()
	if h := c.Holder(vip4); h != "alpha" {
		t.Errorf("VIP holder after the duplicate was removed: %q, want alpha", h)
	}
	// The pair is undisturbed.
	c.WaitState("alpha", "PRIM", time.Second)
	c.WaitState("beta", "SECOND", time.Second)
	c.WaitReach(vip4, "alpha", 3*time.Second)
}
