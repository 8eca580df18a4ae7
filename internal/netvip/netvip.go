// Package netvip adds, removes and announces virtual IPs with netlink, finds
// the interface a VIP or address belongs to, and watches interface carrier.
//
// Every function works in the network namespace of the calling thread at the
// time of the call (the agent runs inside a namespace in tests); background
// work keeps using the sockets opened in that namespace.
package netvip

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// current is a netlink handle without sockets of its own: each request opens
// a socket in the calling thread's namespace.
var current = &netlink.Handle{}

// ifAddr is one address configured on one interface.
type ifAddr struct {
	ifname  string
	ifindex int
	prefix  netip.Prefix // the address with its own prefix length
	flags   int          // IFA_F_* flags
}

// Add puts vip on interface ifname (when ifname is empty, on the interface
// InterfaceFor picks) and announces it in the background. Adding a VIP that
// is already there succeeds and announces it again, so peers that cached
// another node's MAC follow. IPv6 VIPs skip duplicate address detection so
// they are usable at once.
func Add(vip netip.Prefix, ifname string) error {
	if err := checkVIP(vip); err != nil {
		return err
	}
	if ifname == "" {
		name, err := InterfaceFor(vip)
		if err != nil {
			return fmt.Errorf("add VIP %s: %w", vip, err)
		}
		ifname = name
	}
	link, err := current.LinkByName(ifname)
	if err != nil {
		return fmt.Errorf("add VIP %s on %s: interface not found (%v); check vips[].interface (`ip link` lists the interfaces)", vip, ifname, err)
	}
	have, err := addrsOn(current, link, vip.Addr())
	if err != nil {
		return fmt.Errorf("add VIP %s on %s: %w", vip, ifname, err)
	}
	if len(have) == 0 {
		a := &netlink.Addr{IPNet: ipNet(vip)}
		if vip.Addr().Is6() {
			// Without NODAD the address stays tentative for about a second and
			// cannot be used as a source nor answer neighbour solicitations.
			a.Flags = unix.IFA_F_NODAD
		}
		err := current.AddrAdd(link, a)
		switch {
		case errors.Is(err, unix.EEXIST):
			// Added meanwhile by someone else: present, which is what we want.
		case err != nil:
			return fmt.Errorf("add VIP %s on %s: %v; check that the interface exists and accepts %s addresses (IPv6 may be disabled on it)", vip, ifname, err, famName(vip.Addr()))
		default:
			slog.Info("VIP added", "vip", vip.String(), "interface", ifname)
		}
	} else if have[0].prefix.Bits() != vip.Bits() {
		slog.Warn("VIP already present with another prefix length; leaving it as is",
			"vip", vip.String(), "interface", ifname, "present", have[0].prefix.String())
	}
	defaultAnnouncer.start(vip, link)
	return nil
}

// Remove takes vip off interface ifname (every interface when ifname is
// empty) and stops its announcement. A VIP that is not there, or an interface
// that no longer exists, is success.
func Remove(vip netip.Prefix, ifname string) error {
	if err := checkVIP(vip); err != nil {
		return err
	}
	var have []ifAddr
	if ifname == "" {
		all, err := listAddrs(current, nil, family(vip.Addr()))
		if err != nil {
			return fmt.Errorf("remove VIP %s: %w", vip, err)
		}
		for _, a := range all {
			if a.prefix.Addr() == vip.Addr() {
				have = append(have, a)
			}
		}
	} else {
		link, err := current.LinkByName(ifname)
		if err != nil {
			var nf netlink.LinkNotFoundError
			if errors.As(err, &nf) {
				slog.Info("VIP interface is gone, so is the VIP", "vip", vip.String(), "interface", ifname)
				return nil
			}
			return fmt.Errorf("remove VIP %s from %s: look up interface: %v", vip, ifname, err)
		}
		defaultAnnouncer.stop(vip.Addr(), link.Attrs().Index)
		have, err = addrsOn(current, link, vip.Addr())
		if err != nil {
			return fmt.Errorf("remove VIP %s from %s: %w", vip, ifname, err)
		}
	}
	for _, a := range have {
		defaultAnnouncer.stop(vip.Addr(), a.ifindex)
		link := &netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: a.ifindex, Name: a.ifname}}
		// Delete with the prefix length actually configured: IPv4 matches on it.
		err := current.AddrDel(link, &netlink.Addr{IPNet: ipNet(a.prefix)})
		switch {
		case errors.Is(err, unix.EADDRNOTAVAIL), errors.Is(err, unix.ESRCH), errors.Is(err, unix.ENODEV):
			// Gone meanwhile.
		case err != nil:
			return fmt.Errorf("remove VIP %s from %s: %v; remove it by hand with `ip addr del %s dev %s`", vip, a.ifname, err, a.prefix, a.ifname)
		default:
			slog.Info("VIP removed", "vip", vip.String(), "interface", a.ifname)
		}
	}
	return nil
}

// Present reports whether vip's address is configured on interface ifname,
// or on any interface when ifname is empty. The prefix length is not compared.
func Present(vip netip.Prefix, ifname string) (bool, error) {
	if err := checkVIP(vip); err != nil {
		return false, err
	}
	var link netlink.Link
	if ifname != "" {
		l, err := current.LinkByName(ifname)
		if err != nil {
			return false, fmt.Errorf("check VIP %s on %s: interface not found (%v); check vips[].interface", vip, ifname, err)
		}
		link = l
	}
	have, err := addrsOn(current, link, vip.Addr())
	if err != nil {
		return false, fmt.Errorf("check VIP %s on %s: %w", vip, orAny(ifname), err)
	}
	return len(have) > 0, nil
}

// Held reports, for each VIP, whether its address is configured on any
// interface of this namespace. When the addresses cannot be read it logs the
// error and reports every VIP as not held.
func Held(vips []netip.Prefix) map[netip.Prefix]bool {
	held := make(map[netip.Prefix]bool, len(vips))
	for _, v := range vips {
		held[v] = false
	}
	if len(vips) == 0 {
		return held
	}
	all, err := listAddrs(current, nil, unix.AF_UNSPEC)
	if err != nil {
		slog.Error("cannot list addresses to see which VIPs are held; reporting none held", "error", err)
		return held
	}
	on := make(map[netip.Addr]bool, len(all))
	for _, a := range all {
		on[a.prefix.Addr()] = true
	}
	for _, v := range vips {
		held[v] = on[v.Addr().Unmap()]
	}
	return held
}

// InterfaceFor picks the interface for a VIP that has no configured
// interface: the one holding another address in the VIP's subnet (vip
// masked to its prefix length), or else whose own subnet contains the VIP
// (so a /32 VIP works). None or several is an error.
func InterfaceFor(vip netip.Prefix) (string, error) {
	if err := checkVIP(vip); err != nil {
		return "", err
	}
	all, err := listAddrs(current, nil, family(vip.Addr()))
	if err != nil {
		return "", fmt.Errorf("find interface for VIP %s: %w", vip, err)
	}
	return pickInterface(vip, all)
}

// pickInterface is InterfaceFor on a given address list.
func pickInterface(vip netip.Prefix, all []ifAddr) (string, error) {
	subnet := vip.Masked()
	var names []string
	// Addresses in the VIP's own subnet first; an address whose subnet merely
	// contains the VIP counts only when none is.
	for _, pass := range []func(a ifAddr) bool{
		func(a ifAddr) bool { return subnet.Contains(a.prefix.Addr()) },
		func(a ifAddr) bool { return a.prefix.Masked().Contains(vip.Addr()) },
	} {
		for _, a := range all {
			if a.prefix.Addr() == vip.Addr() || a.prefix.Addr().IsLinkLocalUnicast() {
				continue
			}
			if pass(a) && !slices.Contains(names, a.ifname) {
				names = append(names, a.ifname)
			}
		}
		if len(names) > 0 {
			break
		}
	}
	switch len(names) {
	case 0:
		return "", fmt.Errorf("no interface has an address in %s; set vips[].interface", subnet)
	case 1:
		return names[0], nil
	default:
		slices.Sort(names)
		return "", fmt.Errorf("interfaces %s all have an address in %s; set vips[].interface to choose one for VIP %s", strings.Join(names, ", "), subnet, vip)
	}
}

// InterfaceForAddr returns the interface that holds address a (for example
// the local end of a heartbeat network). A zone on an IPv6 address restricts
// the search to that interface.
func InterfaceForAddr(a netip.Addr) (string, error) {
	if !a.IsValid() {
		return "", errors.New("find interface for address: invalid (empty) address")
	}
	zone := a.Zone()
	a = a.WithZone("").Unmap()
	all, err := listAddrs(current, nil, family(a))
	if err != nil {
		return "", fmt.Errorf("find interface for address %s: %w", a, err)
	}
	var names []string
	for _, x := range all {
		if x.prefix.Addr() == a && (zone == "" || zone == x.ifname) && !slices.Contains(names, x.ifname) {
			names = append(names, x.ifname)
		}
	}
	switch len(names) {
	case 0:
		return "", fmt.Errorf("no interface holds address %s; check the node's addresses in the cluster file against `ip addr`", a)
	case 1:
		return names[0], nil
	default:
		slices.Sort(names)
		return "", fmt.Errorf("address %s is on several interfaces (%s); keep it on one", a, strings.Join(names, ", "))
	}
}

// checkVIP rejects prefixes that cannot be a VIP.
func checkVIP(vip netip.Prefix) error {
	a := vip.Addr()
	switch {
	case !vip.IsValid():
		return fmt.Errorf("VIP %q is not a valid address/prefix; write it like 192.0.2.10/24 or 2001:db8::10/64", vip.String())
	case a.Is4In6():
		return fmt.Errorf("VIP %s is an IPv4-mapped IPv6 address; write it in IPv4 form", vip)
	case a.IsUnspecified(), a.IsMulticast():
		return fmt.Errorf("VIP %s is not a unicast address; use the address clients connect to", vip)
	}
	return nil
}

// addrsOn returns the entries of address a on link (all links when nil).
func addrsOn(h *netlink.Handle, link netlink.Link, a netip.Addr) ([]ifAddr, error) {
	all, err := listAddrs(h, link, family(a))
	if err != nil {
		return nil, err
	}
	var out []ifAddr
	for _, x := range all {
		if x.prefix.Addr() == a {
			out = append(out, x)
		}
	}
	return out, nil
}

// listAddrs lists the addresses of one family (AF_UNSPEC: both) on link, or
// on every link when link is nil.
func listAddrs(h *netlink.Handle, link netlink.Link, fam int) ([]ifAddr, error) {
	addrs, err := retryDump(func() ([]netlink.Addr, error) { return h.AddrList(link, fam) })
	if err != nil {
		return nil, fmt.Errorf("list addresses: %v", err)
	}
	names := map[int]string{}
	if link != nil {
		names[link.Attrs().Index] = link.Attrs().Name
	} else {
		links, err := retryDump(h.LinkList)
		if err != nil {
			return nil, fmt.Errorf("list interfaces: %v", err)
		}
		for _, l := range links {
			names[l.Attrs().Index] = l.Attrs().Name
		}
	}
	out := make([]ifAddr, 0, len(addrs))
	for _, a := range addrs {
		if a.IPNet == nil {
			continue
		}
		ip, ok := netip.AddrFromSlice(a.IP)
		if !ok {
			continue
		}
		ip = ip.Unmap()
		ones, _ := a.Mask.Size()
		out = append(out, ifAddr{
			ifname:  names[a.LinkIndex],
			ifindex: a.LinkIndex,
			prefix:  netip.PrefixFrom(ip, ones),
			flags:   a.Flags,
		})
	}
	return out, nil
}

// retryDump repeats a netlink dump that a concurrent change interrupted.
func retryDump[T any](f func() (T, error)) (T, error) {
	for i := 0; ; i++ {
		v, err := f()
		if errors.Is(err, netlink.ErrDumpInterrupted) && i < 5 {
			continue
		}
		return v, err
	}
}

func ipNet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

func family(a netip.Addr) int {
	if a.Is4() {
		return unix.AF_INET
	}
	return unix.AF_INET6
}

func famName(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}

func orAny(ifname string) string {
	if ifname == "" {
		return "any interface"
	}
	return ifname
}
