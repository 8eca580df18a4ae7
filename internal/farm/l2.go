package farm

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// SharedMAC is the farm VIP's MAC address: locally administered, unicast,
// 02:74 followed by the IPv4 address (like VRRP's 00:00:5e:00:01:VRID, it
// is a function of the configuration, the same on every node). No node ever
// sends a frame from it, so no switch learns it and frames to it are
// flooded to every port.
func SharedMAC(vip netip.Addr) net.HardwareAddr {
	a := vip.Unmap().As4()
	return net.HardwareAddr{0x02, 0x74, a[0], a[1], a[2], a[3]}
}

// handle works in the calling thread's network namespace at call time.
var handle = &netlink.Handle{}

// AddVIP puts the VIP on lo as a host address (/32): the kernel accepts
// packets for it on every interface, but never answers ARP for it on the
// farm interface (the ARP table drops those requests) nor uses it as the
// source of its own ARP requests there (arp_announce 2, see SetARPAnnounce).
func AddVIP(vip netip.Addr) error {
	lo, err := handle.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("farm VIP %s: find lo: %w", vip, err)
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: vip.AsSlice(), Mask: net.CIDRMask(vip.BitLen(), vip.BitLen())}}
	if err := handle.AddrAdd(lo, a); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("farm VIP %s: add to lo: %w", vip, err)
	}
	return nil
}

// DelVIP removes the VIP from lo; absent is fine.
func DelVIP(vip netip.Addr) error {
	lo, err := handle.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("farm VIP %s: find lo: %w", vip, err)
	}
	a := &netlink.Addr{IPNet: &net.IPNet{IP: vip.AsSlice(), Mask: net.CIDRMask(vip.BitLen(), vip.BitLen())}}
	if err := handle.AddrDel(lo, a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("farm VIP %s: remove from lo: %w", vip, err)
	}
	return nil
}

// AcceptMAC adds mac to the interface's unicast address filter (as `bridge
// fdb add MAC dev IF self permanent` does): a NIC with a hardware filter
// then passes frames sent to it; a device without one (veth) goes
// promiscuous, which it effectively is anyway.
func AcceptMAC(ifindex int, mac net.HardwareAddr) error {
	n := &netlink.Neigh{LinkIndex: ifindex, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF,
		State: netlink.NUD_PERMANENT, HardwareAddr: mac}
	if err := handle.NeighAppend(n); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("accept frames for %s on interface %d: %w", mac, ifindex, err)
	}
	return nil
}

// DropMAC removes what AcceptMAC added; absent is fine.
func DropMAC(ifindex int, mac net.HardwareAddr) error {
	n := &netlink.Neigh{LinkIndex: ifindex, Family: unix.AF_BRIDGE, Flags: netlink.NTF_SELF,
		State: netlink.NUD_PERMANENT, HardwareAddr: mac}
	if err := handle.NeighDel(n); err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.EADDRNOTAVAIL) {
		return fmt.Errorf("stop accepting frames for %s on interface %d: %w", mac, ifindex, err)
	}
	return nil
}

// SetARPAnnounce sets net.ipv4.conf.IF.arp_announce and returns the value
// it replaces. With 2 the kernel sources its ARP requests on IF from IF's
// own address, never from the VIP: a request from the VIP would teach the
// client this node's MAC for the VIP, and its traffic would stop being
// flooded to the other nodes.
func SetARPAnnounce(ifname, value string) (old string, err error) {
	p := filepath.Join("/proc/sys/net/ipv4/conf", ifname, "arp_announce")
	b, err := os.ReadFile(p)
	if err != nil {
		return "", fmt.Errorf("read %s: %w", p, err)
	}
	if err := os.WriteFile(p, []byte(value+"\n"), 0o644); err != nil {
		return "", fmt.Errorf("set %s to %s: %w", p, value, err)
	}
	return strings.TrimSpace(string(b)), nil
}
