package farm

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/netip"
	osexec "os/exec"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/testbed"
)

// farmBed is three farm nodes and a client on one bed, each node running
// the dataplane and a TCP service answering its name on port 7000.
type farmBed struct {
	bed     *testbed.Bed
	nodes   []*testbed.Host
	dps     []*Dataplane
	client  *testbed.Host
	vip     netip.Addr
	table   *Table
	clients []netip.Addr
}

func newFarmBed(t *testing.T, mode string, handover bool, nclients int) *farmBed {
	t.Helper()
	bed := testbed.NewT(t, testbed.Options{})
	fb := &farmBed{bed: bed, vip: netip.MustParseAddr("192.0.2.100")}
	var members []Member
	for i := range 3 {
		h, err := bed.AddHost(fmt.Sprintf("n%d", i+1))
		if err != nil {
			t.Fatal(err)
		}
		fb.nodes = append(fb.nodes, h)
		members = append(members, Member{Name: h.Name, Weight: 1})
	}
	fb.table, _ = NewTable(members)
	c, err := bed.AddHost("client")
	if err != nil {
		t.Fatal(err)
	}
	fb.client = c
	var batch strings.Builder
	for i := range nclients {
		a := netip.AddrFrom4([4]byte{192, 0, 2, byte(150 + i)})
		fb.clients = append(fb.clients, a)
		fmt.Fprintf(&batch, "addr add %s/24 dev eth0\n", a)
	}
	if nclients > 0 {
		cmd := c.Command("ip", "-batch", "-")
		cmd.Stdin = strings.NewReader(batch.String())
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("client addresses: %v: %s", err, out)
		}
	}
	for _, h := range fb.nodes {
		var dp *Dataplane
		err := h.Do(func() error {
			var err error
			dp, err = Setup(DataplaneConfig{Module: "web", VIP: fb.vip, Interface: "eth0", Mode: mode, Handover: handover})
			return err
		})
		if err != nil {
			t.Fatalf("%s: setup: %v", h.Name, err)
		}
		fb.dps = append(fb.dps, dp)
		t.Cleanup(func() { h.Do(dp.Teardown) })
		ln, err := h.Listen("tcp", ":7000")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go serveName(ln, h.Name)
	}
	return fb
}

func serveName(ln net.Listener, name string) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go func() {
			defer c.Close()
			fmt.Fprintln(c, name)
			// Keep the connection open until the client closes it, so a
			// test can hold connections across a bucket move.
			buf := make([]byte, 64)
			for {
				c.SetReadDeadline(time.Now().Add(30 * time.Second))
				n, err := c.Read(buf)
				if err != nil {
					return
				}
				c.Write(buf[:n])
			}
		}()
	}
}

// assign loads the assignment for live into every live node's filter.
func (fb *farmBed) assign(t *testing.T, live []string) Assignment {
	t.Helper()
	a := fb.table.Assign(live)
	for i, h := range fb.nodes {
		var v [Buckets]Verdict
		for b, o := range a {
			if o == h.Name {
				v[b] = Own
			}
		}
		if err := h.Do(func() error { return fb.dps[i].Update(v) }); err != nil {
			t.Fatalf("%s: update: %v", h.Name, err)
		}
	}
	return a
}

// ask connects from src (port 0: any) to the VIP and returns the name.
func (fb *farmBed) ask(src netip.AddrPort) (string, net.Conn, error) {
	var c net.Conn
	err := fb.client.Do(func() error {
		d := net.Dialer{Timeout: 3 * time.Second, LocalAddr: net.TCPAddrFromAddrPort(src)}
		var err error
		c, err = d.DialContext(context.Background(), "tcp", netip.AddrPortFrom(fb.vip, 7000).String())
		return err
	})
	if err != nil {
		return "", nil, err
	}
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		c.Close()
		return "", nil, err
	}
	return strings.TrimSpace(line), c, nil
}

// The kernel's bucket of each client is the one BucketOf predicts, exactly
// one node answers, the client resolves the VIP to the shared MAC and the
// bridge never learns it.
func TestDataplaneOwnerPredicted(t *testing.T) {
	fb := newFarmBed(t, HashAddr, false, 40)
	a := fb.assign(t, []string{"n1", "n2", "n3"})
	seed := Seed(fb.vip)
	got := map[string]int{}
	for _, src := range fb.clients {
		name, c, err := fb.ask(netip.AddrPortFrom(src, 0))
		if err != nil {
			t.Fatalf("client %s: %v", src, err)
		}
		c.Close()
		want := a[BucketOf(HashAddr, seed, Client{Addr: src})]
		if name != want {
			t.Fatalf("client %s: answered by %s, the assignment says %s", src, name, want)
		}
		got[name]++
	}
	t.Logf("40 client addresses: %v", got)
	mac, err := fb.client.Neighbor(fb.vip)
	if err != nil || mac.String() != SharedMAC(fb.vip).String() {
		t.Fatalf("client resolves the VIP to %v (err %v), want the shared MAC %s", mac, err, SharedMAC(fb.vip))
	}
	out, err := osexec.Command("ip", "netns", "exec", fb.bed.SwitchNS(), "bridge", "fdb", "show").CombinedOutput()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(strings.ToLower(string(out)), SharedMAC(fb.vip).String()) {
		t.Fatalf("the bridge learned the shared MAC:\n%s", out)
	}
	// Every node answered ARP (the answers are identical).
	for i, dp := range fb.dps {
		if dp.ARPAnswered() == 0 {
			t.Errorf("%s answered no ARP request", fb.nodes[i].Name)
		}
	}
}

// addr+port: one client address spreads over the nodes, as predicted.
func TestDataplaneAddrPort(t *testing.T) {
	fb := newFarmBed(t, HashAddrPort, false, 1)
	a := fb.assign(t, []string{"n1", "n2", "n3"})
	seed := Seed(fb.vip)
	got := map[string]int{}
	for i := range 60 {
		src := netip.AddrPortFrom(fb.clients[0], uint16(40000+i))
		name, c, err := fb.ask(src)
		if err != nil {
			t.Fatalf("client %s: %v", src, err)
		}
		c.Close()
		want := a[BucketOf(HashAddrPort, seed, Client{Addr: src.Addr(), Port: src.Port()})]
		if name != want {
			t.Fatalf("client %s: answered by %s, the assignment says %s", src, name, want)
		}
		got[name]++
	}
	if len(got) != 3 {
		t.Errorf("60 ports of one address reached %v", got)
	}
}

// A bucket handed over while a connection is open: with the hand-over
// table, the old owner keeps it (drain) and the new owner neither answers
// nor resets it; new connections of the bucket go to the new owner.
func TestDataplaneHandover(t *testing.T) {
	fb := newFarmBed(t, HashAddrPort, true, 1)
	seed := Seed(fb.vip)
	// Only n1 up: it owns everything.
	fb.assign(t, []string{"n1"})
	var open []net.Conn
	var srcs []netip.AddrPort
	for i := range 30 {
		src := netip.AddrPortFrom(fb.clients[0], uint16(41000+i))
		name, c, err := fb.ask(src)
		if err != nil || name != "n1" {
			t.Fatalf("%s: %q %v", src, name, err)
		}
		open = append(open, c)
		srcs = append(srcs, src)
	}
	defer func() {
		for _, c := range open {
			c.Close()
		}
	}()
	// n2 and n3 take their share; n1 drains what it gave away.
	a := fb.table.Assign([]string{"n1", "n2", "n3"})
	var drain Set
	for b, o := range a {
		if o != "n1" {
			drain.Add(b)
		}
	}
	for i, h := range fb.nodes {
		var v [Buckets]Verdict
		for b, o := range a {
			switch {
			case o == h.Name && h.Name != "n1":
				v[b] = OwnFresh
			case o == h.Name:
				v[b] = Own
			case h.Name == "n1" && drain.Has(b):
				v[b] = Drain
			}
		}
		if err := h.Do(func() error { return fb.dps[i].Update(v) }); err != nil {
			t.Fatal(err)
		}
	}
	moved := 0
	for i, c := range open {
		b := BucketOf(HashAddrPort, seed, Client{Addr: srcs[i].Addr(), Port: srcs[i].Port()})
		if a[b] != "n1" {
			moved++
		}
		// The old connection still echoes through n1.
		c.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := c.Write([]byte("ping\n")); err != nil {
			t.Fatalf("%s (bucket %d, now %s's): write: %v", srcs[i], b, a[b], err)
		}
		line, err := bufio.NewReader(c).ReadString('\n')
		if err != nil || line != "ping\n" {
			t.Fatalf("%s (bucket %d, now %s's): open connection broken after the hand-over: %q %v", srcs[i], b, a[b], line, err)
		}
	}
	if moved == 0 {
		t.Fatal("no open connection is in a bucket that moved: the test proves nothing")
	}
	// New connections of the moved buckets go to their new owners.
	for i := range 30 {
		src := netip.AddrPortFrom(fb.clients[0], uint16(42000+i))
		want := a[BucketOf(HashAddrPort, seed, Client{Addr: src.Addr(), Port: src.Port()})]
		name, c, err := fb.ask(src)
		if err != nil || name != want {
			t.Fatalf("new connection %s: %q %v, want %s", src, name, err, want)
		}
		c.Close()
	}
	// Drain over: n1 drops them, the new owners accept (and reset) them.
	fb.assign(t, []string{"n1", "n2", "n3"})
	resets := 0
	for i, c := range open {
		b := BucketOf(HashAddrPort, seed, Client{Addr: srcs[i].Addr(), Port: srcs[i].Port()})
		if a[b] == "n1" {
			continue
		}
		c.SetDeadline(time.Now().Add(3 * time.Second))
		c.Write([]byte("ping\n"))
		if _, err := bufio.NewReader(c).ReadString('\n'); err != nil {
			resets++
		}
	}
	t.Logf("%d of 30 open connections were in moved buckets; after the drain all %d were reset by their new owner", moved, resets)
	if resets != moved {
		t.Errorf("after the drain %d of %d moved connections failed; want all (reset by the new owner)", resets, moved)
	}
}

// Teardown leaves nothing behind; Cleanup after it is a no-op.
func TestDataplaneTeardown(t *testing.T) {
	fb := newFarmBed(t, HashAddr, true, 0)
	h := fb.nodes[0]
	if err := h.Do(fb.dps[0].Teardown); err != nil {
		t.Fatal(err)
	}
	if ok, _ := h.HasAddr(fb.vip); ok {
		t.Error("VIP still on the node after teardown")
	}
	out, err := h.Run("nft", "list", "tables")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, TableName("web")) {
		t.Errorf("tables left: %s", out)
	}
	if err := h.Do(func() error { return Cleanup("web", fb.vip, "eth0") }); err != nil {
		t.Errorf("cleanup after teardown: %v", err)
	}
	v, _ := h.Run("cat", "/proc/sys/net/ipv4/conf/eth0/arp_announce")
	if strings.TrimSpace(v) != "0" {
		t.Errorf("arp_announce %q after teardown, want it restored to 0", v)
	}
}
