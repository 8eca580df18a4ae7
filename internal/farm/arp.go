package farm

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/mdlayher/arp"
	"github.com/mdlayher/ethernet"
	"github.com/mdlayher/packet"
	"golang.org/x/sys/unix"
)

// Responder answers ARP requests for the VIP with the shared MAC.
//
// Every frame it sends carries this node's own MAC as Ethernet source; only
// the ARP payload's sender hardware address is the shared MAC. A bridge or
// switch learns from Ethernet sources only, so the shared MAC is never
// learned and stays flooded. (mdlayher/arp's Client.WriteTo would use the
// payload's sender address as Ethernet source: that is exactly what must not
// happen, so frames are built here.) Every live node answers: the answers
// are identical, and a client is answered even while a node is down but not
// yet declared so.
type Responder struct {
	vip    netip.Addr
	shared net.HardwareAddr
	ifi    *net.Interface
	conn   *packet.Conn
	log    *slog.Logger

	answered atomic.Uint64
	done     chan struct{}
	wg       sync.WaitGroup
}

// StartResponder opens a raw ARP socket on ifi (in the calling thread's
// network namespace) and answers requests for vip until Close.
func StartResponder(ifi *net.Interface, vip netip.Addr, log *slog.Logger) (*Responder, error) {
	if log == nil {
		log = slog.Default()
	}
	c, err := packet.Listen(ifi, packet.Raw, unix.ETH_P_ARP, nil)
	if err != nil {
		return nil, fmt.Errorf("farm ARP responder on %s: %w", ifi.Name, err)
	}
	r := &Responder{vip: vip, shared: SharedMAC(vip), ifi: ifi, conn: c, log: log, done: make(chan struct{})}
	r.wg.Add(1)
	go r.loop()
	return r, nil
}

// Answered counts the requests answered.
func (r *Responder) Answered() uint64 { return r.answered.Load() }

func (r *Responder) loop() {
	defer r.wg.Done()
	buf := make([]byte, 1500)
	for {
		n, _, err := r.conn.ReadFrom(buf)
		if err != nil {
			select {
			case <-r.done:
				return
			default:
			}
			if errors.Is(err, net.ErrClosed) {
				return
			}
			r.log.Warn("farm ARP responder: read", "interface", r.ifi.Name, "err", err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		var f ethernet.Frame
		if f.UnmarshalBinary(buf[:n]) != nil || f.EtherType != ethernet.EtherTypeARP {
			continue
		}
		var p arp.Packet
		if p.UnmarshalBinary(f.Payload) != nil || p.Operation != arp.OperationRequest || p.TargetIP != r.vip {
			continue
		}
		if p.SenderIP == r.vip {
			continue // another node's announcement
		}
		if err := r.send(arp.OperationReply, p.SenderHardwareAddr, p.SenderIP, f.Source); err != nil {
			r.log.Warn("farm ARP responder: reply", "interface", r.ifi.Name, "to", p.SenderIP.String(), "err", err)
			continue
		}
		r.answered.Add(1)
	}
}

// send writes one ARP packet whose sender is (shared MAC, VIP), in a frame
// from this interface's own MAC.
func (r *Responder) send(op arp.Operation, tha net.HardwareAddr, tpa netip.Addr, dst net.HardwareAddr) error {
	p, err := arp.NewPacket(op, r.shared, r.vip, tha, tpa)
	if err != nil {
		return err
	}
	pb, err := p.MarshalBinary()
	if err != nil {
		return err
	}
	f := &ethernet.Frame{Destination: dst, Source: r.ifi.HardwareAddr, EtherType: ethernet.EtherTypeARP, Payload: pb}
	fb, err := f.MarshalBinary()
	if err != nil {
		return err
	}
	_, err = r.conn.WriteTo(fb, &packet.Addr{HardwareAddr: dst})
	return err
}

// Announce broadcasts a gratuitous ARP (VIP is at the shared MAC), so that
// neighbours which cached another MAC for the VIP follow at once.
func (r *Responder) Announce() error {
	bcast := ethernet.Broadcast
	return r.send(arp.OperationRequest, net.HardwareAddr{0, 0, 0, 0, 0, 0}, r.vip, bcast)
}

// Close stops the responder.
func (r *Responder) Close() error {
	close(r.done)
	err := r.conn.Close()
	r.wg.Wait()
	return err
}
