package netvip

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ndp"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// testNet is two namespaces joined by a veth pair: vA in nsA (where the
// package runs) holds 192.0.2.1/24 and 2001:db8::1/64, vB in nsB (the
// neighbour) holds 192.0.2.2/24 and 2001:db8::2/64.
type testNet struct {
	nsA, nsB string
	macA     string
}

const fakeMAC = "02:00:00:00:00:01"

func ipCmd(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func newTestNet(t *testing.T) *testNet {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("needs the ip command (iproute2)")
	}
	id := fmt.Sprintf("%d-%d", os.Getpid(), rand.IntN(1_000_000))
	n := &testNet{nsA: "tnvA-" + id, nsB: "tnvB-" + id}
	for _, ns := range []string{n.nsA, n.nsB} {
		ipCmd(t, "netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	}
	ipCmd(t, "-n", n.nsA, "link", "add", "vA", "type", "veth", "peer", "name", "vB", "netns", n.nsB)
	for _, c := range [][]string{
		{"-n", n.nsA, "addr", "add", "192.0.2.1/24", "dev", "vA"},
		{"-n", n.nsA, "addr", "add", "2001:db8::1/64", "dev", "vA", "nodad"},
		{"-n", n.nsB, "addr", "add", "192.0.2.2/24", "dev", "vB"},
		{"-n", n.nsB, "addr", "add", "2001:db8::2/64", "dev", "vB", "nodad"},
		{"-n", n.nsA, "link", "set", "lo", "up"},
		{"-n", n.nsB, "link", "set", "lo", "up"},
		{"-n", n.nsA, "link", "set", "vA", "up"},
		{"-n", n.nsB, "link", "set", "vB", "up"},
	} {
		ipCmd(t, c...)
	}
	// Until linkwatch marks the links up (it may take up to a second) their
	// qdisc drops every packet, announcements included.
	deadline := time.Now().Add(3 * time.Second)
	for _, l := range [][2]string{{n.nsA, "vA"}, {n.nsB, "vB"}} {
		for {
			mac, state := linkState(t, l[0], l[1])
			if l[1] == "vA" {
				n.macA = mac
			}
			if state == "UP" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s in %s still %s 3s after link up", l[1], l[0], state)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return n
}

// linkState returns the MAC and operational state of ifname in ns.
func linkState(t *testing.T, ns, ifname string) (mac, state string) {
	t.Helper()
	var links []struct {
		Address   string `json:"address"`
		OperState string `json:"operstate"`
	}
	out := ipCmd(t, "-j", "-n", ns, "link", "show", ifname)
	if err := json.Unmarshal([]byte(out), &links); err != nil || len(links) != 1 {
		t.Fatalf("parse link %s in %s from %q: %v", ifname, ns, out, err)
	}
	return links[0].Address, links[0].OperState
}

// in runs fn with the calling thread in namespace ns, as the agent would
// run. The thread stays locked, so it is discarded when fn returns instead
// of going back to the pool inside the namespace. fn must not call t.Fatal.
func in(t *testing.T, ns string, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		h, err := netns.GetFromName(ns)
		if err != nil {
			t.Errorf("open namespace %s: %v", ns, err)
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			t.Errorf("enter namespace %s: %v", ns, err)
			return
		}
		fn()
	}()
	<-done
}

// neighMAC is the lladdr of addr in nsB's neighbour table ("" if none).
func (n *testNet) neighMAC(t *testing.T, addr string) string {
	t.Helper()
	var entries []struct {
		LLAddr string `json:"lladdr"`
	}
	out := ipCmd(t, "-j", "-n", n.nsB, "neigh", "show", "to", addr, "dev", "vB")
	if err := json.Unmarshal([]byte(out), &entries); err != nil {
		t.Fatalf("parse neighbour table %q: %v", out, err)
	}
	if len(entries) == 0 {
		return ""
	}
	return entries[0].LLAddr
}

// waitIdle waits for every announcement burst to end.
func waitIdle(d time.Duration) bool {
	ch := make(chan struct{})
	go func() { defaultAnnouncer.wg.Wait(); close(ch) }()
	select {
	case <-ch:
		return true
	case <-time.After(d):
		return false
	}
}

// addrFlags returns the IFA_F_* flags of addr on vA in nsA, or -1.
func (n *testNet) addrFlags(t *testing.T, addr netip.Addr) int {
	t.Helper()
	flags := -1
	in(t, n.nsA, func() {
		link, err := netlink.LinkByName("vA")
		if err != nil {
			t.Errorf("vA: %v", err)
			return
		}
		have, err := addrsOn(current, link, addr)
		if err != nil {
			t.Errorf("list %s: %v", addr, err)
			return
		}
		if len(have) > 0 {
			flags = have[0].flags
		}
	})
	return flags
}

func TestAddRemoveAnnounce(t *testing.T) {
	n := newTestNet(t)
	for _, tc := range []struct{ vip, other string }{
		{"192.0.2.10/24", "192.0.2.11/24"},
		{"2001:db8::10/64", "2001:db8::11/64"},
	} {
		vip := netip.MustParsePrefix(tc.vip)
		t.Run(vip.Addr().String(), func(t *testing.T) {
			// A stale entry with a wrong MAC, as left by the previous holder.
			ipCmd(t, "-n", n.nsB, "neigh", "replace", vip.Addr().String(), "lladdr", fakeMAC, "dev", "vB", "nud", "stale")
			if got := n.neighMAC(t, vip.Addr().String()); got != fakeMAC {
				t.Fatalf("neighbour entry before Add = %q, want %q", got, fakeMAC)
			}
			in(t, n.nsA, func() {
				if ok, err := Present(vip, "vA"); err != nil || ok {
					t.Errorf("Present before Add = %v, %v; want false, nil", ok, err)
				}
				if err := Add(vip, "vA"); err != nil {
					t.Errorf("Add: %v", err)
				}
				if err := Add(vip, "vA"); err != nil {
					t.Errorf("second Add: %v", err)
				}
				if ok, err := Present(vip, "vA"); err != nil || !ok {
					t.Errorf("Present(vA) after Add = %v, %v; want true, nil", ok, err)
				}
				if ok, err := Present(vip, ""); err != nil || !ok {
					t.Errorf("Present(any) after Add = %v, %v; want true, nil", ok, err)
				}
				other := netip.MustParsePrefix(tc.other)
				held := Held([]netip.Prefix{vip, other})
				if !held[vip] || held[other] || len(held) != 2 {
					t.Errorf("Held = %v; want %v held, %v not", held, vip, other)
				}
				if name, err := InterfaceFor(vip); err != nil || name != "vA" {
					t.Errorf("InterfaceFor(%v) with the VIP held = %q, %v; want vA", vip, name, err)
				}
			})
			if t.Failed() {
				return
			}
			flags := n.addrFlags(t, vip.Addr())
			if vip.Addr().Is6() && (flags&unix.IFA_F_TENTATIVE != 0 || flags&unix.IFA_F_NODAD == 0) {
				t.Errorf("IPv6 VIP flags = %#x; want NODAD and not TENTATIVE", flags)
			}
			deadline := time.Now().Add(2 * time.Second)
			for {
				got := n.neighMAC(t, vip.Addr().String())
				if got == n.macA {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("peer's neighbour entry for %s is %q 2s after Add; want %s (announcement not seen)", vip.Addr(), got, n.macA)
				}
				time.Sleep(20 * time.Millisecond)
			}
			in(t, n.nsA, func() {
				if err := Remove(vip, "vA"); err != nil {
					t.Errorf("Remove: %v", err)
				}
				if err := Remove(vip, "vA"); err != nil {
					t.Errorf("second Remove: %v", err)
				}
				if err := Remove(vip, ""); err != nil {
					t.Errorf("Remove from any interface: %v", err)
				}
				if err := Remove(vip, "nosuch0"); err != nil {
					t.Errorf("Remove from a missing interface: %v", err)
				}
				if ok, err := Present(vip, "vA"); err != nil || ok {
					t.Errorf("Present after Remove = %v, %v; want false, nil", ok, err)
				}
			})
		})
	}
}

func TestAddErrors(t *testing.T) {
	n := newTestNet(t)
	in(t, n.nsA, func() {
		vip := netip.MustParsePrefix("192.0.2.10/24")
		err := Add(vip, "nosuch0")
		if err == nil || !strings.Contains(err.Error(), "192.0.2.10/24") || !strings.Contains(err.Error(), "nosuch0") || !strings.Contains(err.Error(), "vips[].interface") {
			t.Errorf("Add on a missing interface = %v; want an error naming VIP, interface and the fix", err)
		}
		if _, err := Present(vip, "nosuch0"); err == nil || !strings.Contains(err.Error(), "nosuch0") {
			t.Errorf("Present on a missing interface = %v; want an error naming it", err)
		}
		// Empty interface: picked by subnet.
		if err := Add(vip, ""); err != nil {
			t.Errorf("Add without interface: %v", err)
		}
		if ok, err := Present(vip, "vA"); err != nil || !ok {
			t.Errorf("VIP added without interface is not on vA: %v, %v", ok, err)
		}
		err = Add(netip.MustParsePrefix("198.51.100.10/24"), "")
		if err == nil || !strings.Contains(err.Error(), "no interface has an address in 198.51.100.0/24; set vips[].interface") {
			t.Errorf("Add without interface outside every subnet = %v", err)
		}
	})
}

func TestInterfaceFor(t *testing.T) {
	n := newTestNet(t)
	// Two more interfaces in the same subnet make 198.51.100.0/25 ambiguous.
	for _, c := range [][]string{
		{"-n", n.nsA, "link", "add", "d1", "type", "veth", "peer", "name", "d1p"},
		{"-n", n.nsA, "link", "add", "d2", "type", "veth", "peer", "name", "d2p"},
		{"-n", n.nsA, "addr", "add", "198.51.100.1/25", "dev", "d1"},
		{"-n", n.nsA, "addr", "add", "198.51.100.2/25", "dev", "d2"},
	} {
		ipCmd(t, c...)
	}
	in(t, n.nsA, func() {
		for vip, want := range map[string]string{
			"192.0.2.10/24":   "vA",
			"192.0.2.10/32":   "vA",
			"2001:db8::10/64": "vA",
		} {
			if got, err := InterfaceFor(netip.MustParsePrefix(vip)); err != nil || got != want {
				t.Errorf("InterfaceFor(%s) = %q, %v; want %q", vip, got, err, want)
			}
		}
		for vip, want := range map[string]string{
			"198.51.100.10/25":  "interfaces d1, d2 all have an address in 198.51.100.0/25; set vips[].interface",
			"198.51.100.200/25": "no interface has an address in 198.51.100.128/25; set vips[].interface",
		} {
			if got, err := InterfaceFor(netip.MustParsePrefix(vip)); err == nil || !strings.Contains(err.Error(), want) {
				t.Errorf("InterfaceFor(%s) = %q, %v; want error %q", vip, got, err, want)
			}
		}
		for addr, want := range map[string]string{
			"192.0.2.1":        "vA",
			"2001:db8::1":      "vA",
			"198.51.100.2":     "d2",
			"::ffff:192.0.2.1": "vA",
		} {
			if got, err := InterfaceForAddr(netip.MustParseAddr(addr)); err != nil || got != want {
				t.Errorf("InterfaceForAddr(%s) = %q, %v; want %q", addr, got, err, want)
			}
		}
		if got, err := InterfaceForAddr(netip.MustParseAddr("192.0.2.99")); err == nil || !strings.Contains(err.Error(), "no interface holds address 192.0.2.99") {
			t.Errorf("InterfaceForAddr(192.0.2.99) = %q, %v; want a not-found error", got, err)
		}
	})
}

func TestAnnouncementStopsOnRemove(t *testing.T) {
	n := newTestNet(t)
	if !waitIdle(3 * time.Second) {
		t.Fatal("announcements of earlier tests still running after 3s")
	}
	vip := netip.MustParsePrefix("192.0.2.20/24")
	// Removed through the package: the burst is cancelled at once.
	in(t, n.nsA, func() {
		if err := Add(vip, "vA"); err != nil {
			t.Errorf("Add: %v", err)
		}
		if err := Remove(vip, "vA"); err != nil {
			t.Errorf("Remove: %v", err)
		}
	})
	if !waitIdle(200 * time.Millisecond) {
		t.Error("announcement still running 200ms after Remove; want it stopped")
	}
	// Removed behind our back: the burst sees it at its next repeat.
	in(t, n.nsA, func() {
		if err := Add(vip, "vA"); err != nil {
			t.Errorf("Add: %v", err)
		}
	})
	ipCmd(t, "-n", n.nsA, "addr", "del", vip.String(), "dev", "vA")
	if !waitIdle(600 * time.Millisecond) {
		t.Error("announcement still running 600ms after the VIP was deleted; want it stopped before the 1s repeat")
	}
}

func TestWatchCarrier(t *testing.T) {
	n := newTestNet(t)
	type ev struct {
		name string
		up   bool
	}
	events := make(chan ev, 64)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	in(t, n.nsA, func() {
		if up, err := CarrierUp("vA"); err != nil || !up {
			t.Errorf("CarrierUp(vA) = %v, %v; want true", up, err)
		}
		if _, err := CarrierUp("nosuch0"); err == nil || !strings.Contains(err.Error(), "nosuch0") {
			t.Errorf("CarrierUp(nosuch0) = %v; want an error naming it", err)
		}
		err := WatchCarrier(ctx, []string{"vA", "nosuch0", "vA"}, func(name string, up bool) {
			events <- ev{name, up}
		})
		if err != nil {
			t.Errorf("WatchCarrier: %v", err)
		}
	})
	if t.Failed() {
		return
	}
	// The initial calls happen before WatchCarrier returns.
	for _, want := range []ev{{"vA", true}, {"nosuch0", false}} {
		select {
		case got := <-events:
			if got != want {
				t.Fatalf("initial call = %v; want %v", got, want)
			}
		default:
			t.Fatalf("no initial call for %v before WatchCarrier returned", want)
		}
	}
	expect := func(want ev, what string) {
		t.Helper()
		select {
		case got := <-events:
			if got != want {
				t.Fatalf("after %s: call %v; want %v", what, got, want)
			}
		case <-time.After(3 * time.Second):
			t.Fatalf("after %s: no call within 3s; want %v", what, want)
		}
	}
	ipCmd(t, "-n", n.nsB, "link", "set", "vB", "down")
	expect(ev{"vA", false}, "peer link down")
	in(t, n.nsA, func() {
		if up, err := CarrierUp("vA"); err != nil || up {
			t.Errorf("CarrierUp(vA) with the peer down = %v, %v; want false", up, err)
		}
	})
	ipCmd(t, "-n", n.nsB, "link", "set", "vB", "up")
	expect(ev{"vA", true}, "peer link up")
	ipCmd(t, "-n", n.nsA, "link", "set", "vA", "down")
	expect(ev{"vA", false}, "own link down")
	ipCmd(t, "-n", n.nsA, "link", "set", "vA", "up")
	expect(ev{"vA", true}, "own link up")
	cancel()
	// After cancel, no more calls.
	time.Sleep(50 * time.Millisecond)
	ipCmd(t, "-n", n.nsB, "link", "set", "vB", "down")
	select {
	case got := <-events:
		t.Errorf("call %v after the context ended", got)
	case <-time.After(300 * time.Millisecond):
	}
}

// TestAnnouncementPackets captures the burst on the neighbour's side and
// checks every packet and the schedule.
func TestAnnouncementPackets(t *testing.T) {
	n := newTestNet(t)
	if !waitIdle(3 * time.Second) {
		t.Fatal("announcements of earlier tests still running after 3s")
	}
	vip4 := netip.MustParsePrefix("192.0.2.30/24")
	vip6 := netip.MustParsePrefix("2001:db8::30/64")
	var (
		arpc *arp.Client
		ndpc *ndp.Conn
	)
	// Open the capture sockets in nsB; they stay there when read from here.
	in(t, n.nsB, func() {
		ifi, err := net.InterfaceByName("vB")
		if err != nil {
			t.Errorf("vB: %v", err)
			return
		}
		if arpc, err = arp.Dial(ifi); err != nil {
			t.Errorf("open ARP capture: %v", err)
			return
		}
		if ndpc, _, err = ndp.Listen(ifi, ndp.Unspecified); err != nil {
			t.Errorf("open NDP capture: %v", err)
			return
		}
		var f ipv6.ICMPFilter
		f.SetAll(true)
		f.Accept(ipv6.ICMPTypeNeighborAdvertisement)
		if err := ndpc.SetICMPFilter(&f); err != nil {
			t.Errorf("filter NDP capture: %v", err)
		}
		if err := ndpc.SetControlMessage(ipv6.FlagDst|ipv6.FlagHopLimit, true); err != nil {
			t.Errorf("NDP capture control messages: %v", err)
		}
	})
	if arpc != nil {
		defer arpc.Close()
	}
	if ndpc != nil {
		defer ndpc.Close()
	}
	if t.Failed() {
		return
	}
	deadline := time.Now().Add(3 * time.Second)
	_ = arpc.SetReadDeadline(deadline)
	_ = ndpc.SetReadDeadline(deadline)

	type seen struct {
		at   []time.Duration
		errs []string
	}
	start := time.Now()
	arpDone := make(chan seen, 1)
	ndpDone := make(chan seen, 1)
	go func() {
		var req, rep seen
		for len(req.at) < 4 || len(rep.at) < 4 {
			p, eth, err := arpc.Read()
			if err != nil {
				req.errs = append(req.errs, fmt.Sprintf("read: %v (requests %d, replies %d)", err, len(req.at), len(rep.at)))
				break
			}
			if p.SenderIP != vip4.Addr() || p.SenderHardwareAddr.String() != n.macA {
				continue // not ours (the kernel's own ARP)
			}
			bad := func(format string, a ...any) { req.errs = append(req.errs, fmt.Sprintf(format, a...)) }
			if p.TargetIP != vip4.Addr() {
				bad("target IP %s; want %s", p.TargetIP, vip4.Addr())
			}
			if eth.Destination.String() != "ff:ff:ff:ff:ff:ff" {
				bad("Ethernet destination %s; want broadcast", eth.Destination)
			}
			switch p.Operation {
			case arp.OperationRequest:
				if p.TargetHardwareAddr.String() != "00:00:00:00:00:00" {
					bad("request target MAC %s; want zero", p.TargetHardwareAddr)
				}
				req.at = append(req.at, time.Since(start))
			case arp.OperationReply:
				if p.TargetHardwareAddr.String() != n.macA {
					bad("reply target MAC %s; want the sender's %s", p.TargetHardwareAddr, n.macA)
				}
				rep.at = append(rep.at, time.Since(start))
			}
		}
		if len(req.at) != len(rep.at) {
			req.errs = append(req.errs, fmt.Sprintf("%d requests, %d replies; want as many", len(req.at), len(rep.at)))
		}
		arpDone <- req
	}()
	go func() {
		var s seen
		for len(s.at) < 4 {
			m, cm, _, err := ndpc.ReadFrom()
			if err != nil {
				s.errs = append(s.errs, fmt.Sprintf("read: %v (got %d)", err, len(s.at)))
				break
			}
			na, ok := m.(*ndp.NeighborAdvertisement)
			if !ok || na.TargetAddress != vip6.Addr() {
				continue
			}
			s.at = append(s.at, time.Since(start))
			bad := func(format string, a ...any) { s.errs = append(s.errs, fmt.Sprintf(format, a...)) }
			if !na.Override || na.Solicited || na.Router {
				bad("flags override=%v solicited=%v router=%v; want override only", na.Override, na.Solicited, na.Router)
			}
			if cm == nil || !cm.Dst.Equal(net.ParseIP("ff02::1")) || cm.HopLimit != 255 {
				bad("control message %v; want destination ff02::1, hop limit 255", cm)
			}
			var lla string
			for _, o := range na.Options {
				if l, ok := o.(*ndp.LinkLayerAddress); ok && l.Direction == ndp.Target {
					lla = l.Addr.String()
				}
			}
			if lla != n.macA {
				bad("target link-layer address %q; want %s", lla, n.macA)
			}
		}
		ndpDone <- s
	}()

	in(t, n.nsA, func() {
		if err := Add(vip4, "vA"); err != nil {
			t.Errorf("Add(%v): %v", vip4, err)
		}
		if err := Add(vip6, "vA"); err != nil {
			t.Errorf("Add(%v): %v", vip6, err)
		}
	})
	for what, ch := range map[string]chan seen{"gratuitous ARP": arpDone, "neighbour advertisement": ndpDone} {
		s := <-ch
		for _, e := range s.errs {
			t.Errorf("%s: %s", what, e)
		}
		if len(s.at) != 4 {
			t.Errorf("%s: %d sent; want 4", what, len(s.at))
			continue
		}
		// Sent at 0, 100ms, 300ms, 1s: allow scheduling slack, not reordering.
		if s.at[0] > 100*time.Millisecond || s.at[1] < 90*time.Millisecond || s.at[2] < 290*time.Millisecond || s.at[3] < 990*time.Millisecond || s.at[3] > 1500*time.Millisecond {
			t.Errorf("%s: sent at %v; want about 0, 100ms, 300ms, 1s", what, s.at)
		}
	}
}

// TestWatchCarrierRenews breaks the link subscription and checks that
// changes are still reported through the renewed one.
func TestWatchCarrierRenews(t *testing.T) {
	n := newTestNet(t)
	events := make(chan bool, 64)
	var (
		w   *carrierWatch
		sub *subscription
	)
	in(t, n.nsA, func() {
		var err error
		w, sub, err = startWatch([]string{"vA"}, func(_ string, up bool) { events <- up })
		if err != nil {
			t.Errorf("startWatch: %v", err)
		}
	})
	if t.Failed() {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan struct{})
	go func() { w.loop(ctx, sub); close(stopped) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-stopped:
		case <-time.After(3 * time.Second):
			t.Error("watch loop still running 3s after cancel")
		}
	})
	if up := <-events; !up {
		t.Fatal("initial state down; want up")
	}
	// As a socket error would: netlink's reader fails and closes the channel.
	sub.closeSocket()
	time.Sleep(resubscribeDelay + 200*time.Millisecond)
	ipCmd(t, "-n", n.nsB, "link", "set", "vB", "down")
	select {
	case up := <-events:
		if up {
			t.Fatal("after renewal and peer down: reported up")
		}
	case <-time.After(3 * time.Second):
		t.Fatal("no call for peer down after the subscription was renewed")
	}
}
