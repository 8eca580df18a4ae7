package farm

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"time"
)

// DataplaneConfig describes one farm module's network side on this node.
type DataplaneConfig struct {
	Module    string
	VIP       netip.Addr // IPv4
	Interface string
	Mode      string
	// Handover: see FilterConfig.Handover (drain time > 0).
	Handover bool
	Log      *slog.Logger
}

// Dataplane is everything a farm module puts in the kernel of this node:
// the nftables tables, the shared MAC in the interface's filter, the VIP
// on lo, arp_announce on the interface, and the ARP responder. All of it
// works in the network namespace of the thread that calls Setup.
type Dataplane struct {
	cfg    DataplaneConfig
	filter *Filter
	resp   *Responder
	ifi    *net.Interface
	stop   chan struct{}
	wg     sync.WaitGroup
	// announced: this dataplane counts among the users of arp_announce.
	announced bool
}

// announceState counts, per interface, the farm modules that need
// arp_announce 2, and the value to restore after the last one.
var announceState = struct {
	sync.Mutex
	users map[string]int
	old   map[string]string
}{users: map[string]int{}, old: map[string]string{}}

// Setup installs the module's dataplane with no bucket taken: the filter
// first (every bucket dropped), then the VIP, so there is no moment when
// this node would accept every client.
func Setup(cfg DataplaneConfig) (_ *Dataplane, err error) {
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	ifi, err := net.InterfaceByName(cfg.Interface)
	if err != nil {
		return nil, fmt.Errorf("farm %s: interface %s: %w (check the module's interface field; `ip link` lists them)", cfg.Module, cfg.Interface, err)
	}
	if len(ifi.HardwareAddr) != 6 {
		return nil, fmt.Errorf("farm %s: interface %s has no Ethernet address: a farm needs an Ethernet interface", cfg.Module, cfg.Interface)
	}
	f, err := NewFilter(FilterConfig{Module: cfg.Module, VIP: cfg.VIP, Interface: ifi.Name, Ifindex: ifi.Index, Mode: cfg.Mode, Handover: cfg.Handover})
	if err != nil {
		return nil, err
	}
	d := &Dataplane{cfg: cfg, filter: f, ifi: ifi, stop: make(chan struct{})}
	defer func() {
		if err != nil {
			err = errors.Join(err, d.Teardown())
		}
	}()
	if err := f.Install(); err != nil {
		return d, err
	}
	if err := AcceptMAC(ifi.Index, SharedMAC(cfg.VIP)); err != nil {
		return d, fmt.Errorf("farm %s: %w", cfg.Module, err)
	}
	if err := useARPAnnounce(ifi.Name); err != nil {
		return d, fmt.Errorf("farm %s: %w", cfg.Module, err)
	}
	d.announced = true
	if err := AddVIP(cfg.VIP); err != nil {
		return d, err
	}
	if d.resp, err = StartResponder(ifi, cfg.VIP, cfg.Log); err != nil {
		return d, err
	}
	d.wg.Add(1)
	go d.announce()
	return d, nil
}

// announce sends gratuitous ARPs at once and a little later (a lost frame,
// a neighbour still busy).
func (d *Dataplane) announce() {
	defer d.wg.Done()
	for _, wait := range []time.Duration{0, 200 * time.Millisecond, time.Second} {
		select {
		case <-d.stop:
			return
		case <-time.After(wait):
		}
		if err := d.resp.Announce(); err != nil {
			d.cfg.Log.Warn("farm: gratuitous ARP failed", "module", d.cfg.Module, "vip", d.cfg.VIP.String(), "err", err)
		}
	}
}

// announceKey names an interface in the calling thread's network namespace
// (tests run several namespaces in one process).
func announceKey(ifname string) string {
	ns, _ := os.Readlink("/proc/thread-self/ns/net")
	return ns + "/" + ifname
}

func useARPAnnounce(ifname string) error {
	announceState.Lock()
	defer announceState.Unlock()
	key := announceKey(ifname)
	if announceState.users[key] == 0 {
		old, err := SetARPAnnounce(ifname, "2")
		if err != nil {
			return err
		}
		announceState.old[key] = old
	}
	announceState.users[key]++
	return nil
}

func releaseARPAnnounce(ifname string) error {
	announceState.Lock()
	defer announceState.Unlock()
	key := announceKey(ifname)
	if announceState.users[key] == 0 {
		return nil
	}
	announceState.users[key]--
	if announceState.users[key] > 0 {
		return nil
	}
	old := announceState.old[key]
	delete(announceState.old, key)
	if old == "" {
		return nil
	}
	_, err := SetARPAnnounce(ifname, old)
	return err
}

// Update loads the per-bucket verdicts.
func (d *Dataplane) Update(v [Buckets]Verdict) error { return d.filter.Update(v) }

// Interface is the farm interface.
func (d *Dataplane) Interface() *net.Interface { return d.ifi }

// ARPAnswered counts ARP requests answered.
func (d *Dataplane) ARPAnswered() uint64 {
	if d.resp == nil {
		return 0
	}
	return d.resp.Answered()
}

// Teardown removes everything Setup installed, VIP first (packets for it
// are then dropped by IP, never answered with a reset). It is safe on a
// partly set up dataplane and returns every error.
func (d *Dataplane) Teardown() error {
	var errs []error
	select {
	case <-d.stop:
	default:
		close(d.stop)
	}
	if err := DelVIP(d.cfg.VIP); err != nil {
		errs = append(errs, err)
	}
	d.wg.Wait()
	if d.resp != nil {
		if err := d.resp.Close(); err != nil {
			errs = append(errs, fmt.Errorf("farm %s: close ARP responder: %w", d.cfg.Module, err))
		}
		d.resp = nil
	}
	if err := d.filter.Remove(); err != nil {
		errs = append(errs, err)
	}
	if err := DropMAC(d.ifi.Index, SharedMAC(d.cfg.VIP)); err != nil {
		errs = append(errs, fmt.Errorf("farm %s: %w", d.cfg.Module, err))
	}
	if d.announced {
		d.announced = false
		if err := releaseARPAnnounce(d.ifi.Name); err != nil {
			errs = append(errs, fmt.Errorf("farm %s: %w", d.cfg.Module, err))
		}
	}
	return errors.Join(errs...)
}

// Cleanup removes what a crashed agent may have left for a module: its
// tables, its VIP on lo and the shared MAC on the interface (ifname may be
// empty when unknown).
func Cleanup(module string, vip netip.Addr, ifname string) error {
	errs := []error{DelVIP(vip), RemoveTables(module, 0)}
	if ifname != "" {
		if ifi, err := net.InterfaceByName(ifname); err == nil {
			errs = append(errs, DropMAC(ifi.Index, SharedMAC(vip)))
		}
	}
	return errors.Join(errs...)
}
