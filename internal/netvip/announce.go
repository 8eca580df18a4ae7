package netvip

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ndp"
	"github.com/vishvananda/netlink"
	"golang.org/x/net/ipv6"
	"golang.org/x/sys/unix"
)

// burstOffsets are the send times of one announcement, from its start: one
// at once for the fast path, repeats for packets lost while switches and
// neighbours settle.
var burstOffsets = []time.Duration{0, 100 * time.Millisecond, 300 * time.Millisecond, time.Second}

var (
	broadcastMAC = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	zeroMAC      = net.HardwareAddr{0, 0, 0, 0, 0, 0}
	allNodes     = netip.MustParseAddr("ff02::1")
)

// announcer runs at most one announcement burst per VIP and interface.
type announcer struct {
	mu     sync.Mutex
	active map[annKey]*burst
	wg     sync.WaitGroup // running bursts; tests wait on it
}

type annKey struct {
	addr    netip.Addr
	ifindex int
}

type burst struct {
	vip    netip.Prefix
	ifname string
	key    annKey
	send   func() error
	close  func()
	h      *netlink.Handle // in the namespace of the Add call, to see removal
	cancel context.CancelFunc
}

var defaultAnnouncer = &announcer{active: map[annKey]*burst{}}

// start opens the sockets now, in the caller's namespace, and sends the
// burst in the background; a burst already running for the VIP is replaced.
// Failures are logged: the VIP works without announcement, just later.
func (a *announcer) start(vip netip.Prefix, link netlink.Link) {
	attrs := link.Attrs()
	log := slog.With("vip", vip.String(), "interface", attrs.Name)
	if len(attrs.HardwareAddr) < 6 || attrs.RawFlags&unix.IFF_NOARP != 0 || attrs.RawFlags&unix.IFF_LOOPBACK != 0 {
		log.Debug("interface has no neighbour resolution; VIP not announced")
		return
	}
	b := &burst{vip: vip, ifname: attrs.Name, key: annKey{vip.Addr(), attrs.Index}}
	var err error
	if vip.Addr().Is4() {
		b.send, b.close, err = openARP(vip.Addr(), attrs)
	} else {
		b.send, b.close, err = openNDP(vip.Addr(), attrs)
	}
	if err != nil {
		log.Warn("cannot announce VIP; neighbours learn its new MAC only when their cache expires", "error", err)
		return
	}
	b.h, err = netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		// Without it the burst cannot see a removal; still announce, the
		// repeats stop at the latest with a Remove through this package.
		log.Debug("no netlink handle to watch VIP removal during announcement", "error", err)
		b.h = nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	b.cancel = cancel

	a.mu.Lock()
	if old := a.active[b.key]; old != nil {
		old.cancel()
	}
	a.active[b.key] = b
	a.wg.Add(1)
	a.mu.Unlock()

	go a.run(ctx, b, log)
}

// stop ends the burst for addr on the interface, if one is running.
func (a *announcer) stop(addr netip.Addr, ifindex int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if b := a.active[annKey{addr, ifindex}]; b != nil {
		b.cancel()
		delete(a.active, b.key)
	}
}

func (a *announcer) run(ctx context.Context, b *burst, log *slog.Logger) {
	defer a.wg.Done()
	defer func() {
		b.cancel()
		b.close()
		if b.h != nil {
			b.h.Close()
		}
		a.mu.Lock()
		if a.active[b.key] == b {
			delete(a.active, b.key)
		}
		a.mu.Unlock()
	}()
	begin := time.Now()
	for i, off := range burstOffsets {
		if i > 0 {
			t := time.NewTimer(time.Until(begin.Add(off)))
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			if !b.stillThere(log) {
				log.Debug("VIP removed; announcement stopped")
				return
			}
		}
		if err := b.send(); err != nil {
			log.Warn("VIP announcement not sent", "attempt", i+1, "error", err)
			continue
		}
		log.Debug("VIP announced", "attempt", i+1)
	}
}

// stillThere reports whether the VIP is still on the interface; when that
// cannot be read it assumes so, since an extra announcement is harmless.
func (b *burst) stillThere(log *slog.Logger) bool {
	if b.h == nil {
		return true
	}
	link := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: b.key.ifindex, Name: b.ifname}}
	have, err := addrsOn(b.h, link, b.key.addr)
	if err != nil {
		log.Debug("cannot check whether VIP is still present", "error", err)
		return true
	}
	return len(have) > 0
}

// openARP opens a raw ARP socket on the interface and returns a sender of
// one gratuitous ARP request and one gratuitous reply (sender = target =
// VIP, broadcast): some neighbours update their cache only on one of them.
func openARP(vip netip.Addr, attrs *netlink.LinkAttrs) (func() error, func(), error) {
	ifi := netInterface(attrs)
	c, err := arp.Dial(ifi)
	if err != nil {
		return nil, nil, fmt.Errorf("open ARP socket on %s: %w", attrs.Name, err)
	}
	mac := attrs.HardwareAddr
	// RFC 5227: target hardware address zero in the request. Linux takes a
	// reply as gratuitous only when the target hardware address is the
	// sender's.
	req, err := arp.NewPacket(arp.OperationRequest, mac, vip, zeroMAC, vip)
	if err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("build gratuitous ARP request: %w", err)
	}
	rep, err := arp.NewPacket(arp.OperationReply, mac, vip, mac, vip)
	if err != nil {
		c.Close()
		return nil, nil, fmt.Errorf("build gratuitous ARP reply: %w", err)
	}
	send := func() error {
		if err := c.SetWriteDeadline(time.Now().Add(time.Second)); err != nil {
			return err
		}
		if err := c.WriteTo(req, broadcastMAC); err != nil {
			return fmt.Errorf("send gratuitous ARP request: %w", err)
		}
		if err := c.WriteTo(rep, broadcastMAC); err != nil {
			return fmt.Errorf("send gratuitous ARP reply: %w", err)
		}
		return nil
	}
	return send, func() { c.Close() }, nil
}

// openNDP opens an ICMPv6 socket bound to the VIP and returns a sender of an
// unsolicited neighbour advertisement to all nodes with the Override flag
// and our MAC, as the kernel does for its own addresses.
func openNDP(vip netip.Addr, attrs *netlink.LinkAttrs) (func() error, func(), error) {
	ifi := netInterface(attrs)
	c, _, err := ndp.Listen(ifi, ndp.Addr(vip.String()))
	if err != nil {
		return nil, nil, fmt.Errorf("open ICMPv6 socket on %s bound to %s: %w", attrs.Name, vip, err)
	}
	// Send only: block every incoming ICMPv6 type so nothing queues up.
	var f ipv6.ICMPFilter
	f.SetAll(true)
	if err := c.SetICMPFilter(&f); err != nil {
		slog.Debug("cannot filter ICMPv6 input on announcement socket", "interface", attrs.Name, "error", err)
	}
	na := &ndp.NeighborAdvertisement{
		Override:      true,
		TargetAddress: vip,
		Options: []ndp.Option{&ndp.LinkLayerAddress{
			Direction: ndp.Target,
			Addr:      attrs.HardwareAddr,
		}},
	}
	send := func() error {
		if err := c.SetWriteDeadline(time.Now().Add(time.Second)); err != nil {
			return err
		}
		if err := c.WriteTo(na, nil, allNodes); err != nil {
			return fmt.Errorf("send unsolicited neighbour advertisement: %w", err)
		}
		return nil
	}
	return send, func() { c.Close() }, nil
}

// netInterface builds the net.Interface the mdlayher packages want from
// netlink's view, without another lookup.
func netInterface(attrs *netlink.LinkAttrs) *net.Interface {
	return &net.Interface{
		Index:        attrs.Index,
		MTU:          attrs.MTU,
		Name:         attrs.Name,
		HardwareAddr: attrs.HardwareAddr,
		Flags:        attrs.Flags,
	}
}
