package netvip

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// resubscribeDelay is the pause before subscribing again after the link
// subscription failed (for example a receive buffer overrun).
const resubscribeDelay = 500 * time.Millisecond

// CarrierUp reports whether interface ifname is administratively up and has
// carrier.
func CarrierUp(ifname string) (bool, error) {
	link, err := current.LinkByName(ifname)
	if err != nil {
		return false, fmt.Errorf("check carrier of %s: interface not found (%v); check the interface name in the configuration against `ip link`", ifname, err)
	}
	return linkUp(link.Attrs()), nil
}

// linkUp: IFF_UP, IFF_LOWER_UP (carrier) and an operational state that lets
// traffic through (virtual devices without state report "unknown").
func linkUp(a *netlink.LinkAttrs) bool {
	if a.RawFlags&unix.IFF_UP == 0 || a.RawFlags&unix.IFF_LOWER_UP == 0 {
		return false
	}
	return a.OperState == netlink.OperUp || a.OperState == netlink.OperUnknown
}

// WatchCarrier calls fn once per interface with its current state before it
// returns, then from a background goroutine each time an interface goes up
// or down (changes that leave up unchanged are not reported), until ctx
// ends. Calls never overlap; fn should return quickly. A missing interface counts as
// down (and up again once created with carrier). If the subscription breaks
// it is renewed and the state read again, so no change is lost for good.
func WatchCarrier(ctx context.Context, ifnames []string, fn func(ifname string, up bool)) error {
	if fn == nil {
		return errors.New("watch carrier: no callback given")
	}
	w, sub, err := startWatch(ifnames, fn)
	if err != nil {
		return err
	}
	go w.loop(ctx, sub)
	return nil
}

// startWatch subscribes and makes the initial calls; the caller runs loop.
func startWatch(ifnames []string, fn func(string, bool)) (*carrierWatch, *subscription, error) {
	// The namespace of the caller, so a renewed subscription lands there too.
	ns, err := netns.Get()
	if err != nil {
		return nil, nil, fmt.Errorf("watch carrier of %v: get current network namespace: %v", ifnames, err)
	}
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		ns.Close()
		return nil, nil, fmt.Errorf("watch carrier of %v: open netlink socket: %v", ifnames, err)
	}
	w := &carrierWatch{ns: ns, h: h, fn: fn, last: map[string]bool{}}
	for _, n := range ifnames {
		if _, dup := w.last[n]; !dup {
			w.names = append(w.names, n)
			w.last[n] = false
		}
	}
	sub, err := w.subscribe()
	if err != nil {
		w.close()
		return nil, nil, fmt.Errorf("watch carrier of %v: subscribe to link changes: %v", ifnames, err)
	}
	// Read after subscribing: a change in between shows up as an event too.
	w.resync(true)
	return w, sub, nil
}

type carrierWatch struct {
	ns    netns.NsHandle
	h     *netlink.Handle
	fn    func(string, bool)
	names []string
	last  map[string]bool
}

type subscription struct {
	ch       chan netlink.LinkUpdate
	done     chan struct{}
	closeOne sync.Once // closes done
}

func (w *carrierWatch) subscribe() (*subscription, error) {
	s := &subscription{ch: make(chan netlink.LinkUpdate, 64), done: make(chan struct{})}
	err := netlink.LinkSubscribeWithOptions(s.ch, s.done, netlink.LinkSubscribeOptions{
		Namespace: &w.ns,
		ErrorCallback: func(err error) {
			select {
			case <-s.done: // closed by us
				return
			default:
				slog.Warn("link subscription error", "interfaces", w.names, "error", err)
			}
		},
	})
	if err != nil {
		s.closeSocket()
		return nil, err
	}
	return s, nil
}

// end closes the subscription's socket and drains its channel, so both of
// netlink's goroutines exit; it is also needed after netlink gave up on it.
func (s *subscription) end() {
	s.closeSocket()
	for range s.ch {
	}
}

func (s *subscription) closeSocket() {
	s.closeOne.Do(func() { close(s.done) })
}

func (w *carrierWatch) close() {
	w.h.Close()
	w.ns.Close()
}

func (w *carrierWatch) loop(ctx context.Context, sub *subscription) {
	defer w.close()
	for {
		select {
		case <-ctx.Done():
			sub.end()
			return
		case u, ok := <-sub.ch:
			if ok {
				w.update(u)
				continue
			}
		}
		// The subscription broke: renew it, then catch up on missed changes.
		sub.end()
		for {
			t := time.NewTimer(resubscribeDelay)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			s, err := w.subscribe()
			if err == nil {
				sub = s
				break
			}
			slog.Warn("cannot renew link subscription; retrying", "interfaces", w.names, "error", err)
		}
		w.resync(false)
	}
}

func (w *carrierWatch) update(u netlink.LinkUpdate) {
	if u.Link == nil {
		return
	}
	name := u.Link.Attrs().Name
	if _, ok := w.last[name]; !ok {
		return
	}
	up := u.Header.Type != unix.RTM_DELLINK && linkUp(u.Link.Attrs())
	w.report(name, up, false)
}

// resync reads every watched interface; initial forces a call for each.
func (w *carrierWatch) resync(initial bool) {
	for _, n := range w.names {
		up := false
		link, err := w.h.LinkByName(n)
		var nf netlink.LinkNotFoundError
		switch {
		case err == nil:
			up = linkUp(link.Attrs())
		case errors.As(err, &nf):
			if initial {
				slog.Warn("watched interface not found; counted as down", "interface", n)
			}
		case initial:
			slog.Warn("cannot read watched interface; counted as down until it changes", "interface", n, "error", err)
		default:
			// A failed read says nothing about the link: keep what we know.
			slog.Warn("cannot read watched interface; keeping its last state", "interface", n, "error", err)
			continue
		}
		w.report(n, up, initial)
	}
}

func (w *carrierWatch) report(name string, up, force bool) {
	if !force && w.last[name] == up {
		return
	}
	w.last[name] = up
	slog.Info("interface carrier", "interface", name, "up", up)
	w.fn(name, up)
}
