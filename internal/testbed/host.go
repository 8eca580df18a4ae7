package testbed

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Host is a network namespace plus a persistent mount namespace, with one
// interface per bed network.
type Host struct {
	Name  string
	Index int    // creation order, 0-based; allocated addresses use 10+Index
	NetNS string // named network namespace (/run/netns/<NetNS>)
	// MountNS is the file the host's mount namespace is bound to.
	MountNS string
	// Addrs maps network name to the host's addresses there (v4, then v6).
	Addrs map[string][]netip.Prefix
	// Ifaces maps network name to the interface name inside the host.
	Ifaces map[string]string
	// Peers maps network name to the bridge-side veth in the switch namespace.
	Peers map[string]string

	bed    *Bed
	ns     netns.NsHandle
	nl     *nlHandle
	netIno uint64
	mntIno uint64

	mu       sync.Mutex
	dropped  map[string][]string // other host -> nft set elements added
	dropMade bool                // nft table created
	tmpfs    map[string]int64    // mount path -> size, from MountTmpfs
	binds    []string            // BindMount targets still mounted
	created  [][]string          // paths each BindMount created, deepest first
}

// AddHost adds a host with allocated addresses: host index i gets offset
// 10+i in every network's v4 and v6 prefix (192.0.2.10/24, ...).
func (b *Bed) AddHost(name string) (*Host, error) {
	return b.AddHostAddrs(name, nil)
}

// AddHostAddrs adds a host; addrs overrides the allocated addresses of the
// networks it names (an empty slice means no address on that network). The
// host still gets an interface on every network.
func (b *Bed) AddHostAddrs(name string, addrs map[string][]netip.Prefix) (*Host, error) {
	b.addMu.Lock()
	defer b.addMu.Unlock()
	if !hostRE.MatchString(name) || name == "switch" {
		return nil, fmt.Errorf("testbed %s: host name %q: want 1-32 of a-z 0-9 _ - (not \"switch\")", b.id, name)
	}
	if b.Host(name) != nil {
		return nil, fmt.Errorf("testbed %s: host %q already exists", b.id, name)
	}
	for nw := range addrs {
		if b.network(nw) == nil {
			return nil, fmt.Errorf("testbed %s: host %s: unknown network %q (have %s)", b.id, name, nw, b.networkNames())
		}
	}
	b.mu.Lock()
	idx := b.nextIdx
	b.nextIdx++
	b.mu.Unlock()

	h := &Host{
		Name:    name,
		Index:   idx,
		NetNS:   b.id + "-" + name,
		MountNS: filepath.Join(b.mntDir, name),
		Addrs:   map[string][]netip.Prefix{},
		Ifaces:  map[string]string{},
		Peers:   map[string]string{},
		bed:     b,
		ns:      -1,
		dropped: map[string][]string{},
		tmpfs:   map[string]int64{},
	}
	for i, n := range b.networks {
		h.Ifaces[n.Name] = "eth" + strconv.Itoa(i)
		h.Peers[n.Name] = peerName(idx, n.Name)
		if a, ok := addrs[n.Name]; ok {
			for _, p := range a {
				if !n.V4.Contains(p.Addr()) && !(n.V6.IsValid() && n.V6.Contains(p.Addr())) {
					return nil, fmt.Errorf("testbed %s: host %s: address %v is outside network %s (%v %v)", b.id, name, p, n.Name, n.V4, n.V6)
				}
			}
			h.Addrs[n.Name] = append([]netip.Prefix(nil), a...)
			continue
		}
		for _, pfx := range []netip.Prefix{n.V4, n.V6} {
			if !pfx.IsValid() {
				continue
			}
			a, err := hostAddr(pfx, 10+idx)
			if err != nil {
				return nil, fmt.Errorf("testbed %s: host %s on %s: %w", b.id, name, n.Name, err)
			}
			h.Addrs[n.Name] = append(h.Addrs[n.Name], a)
		}
	}
	if err := h.setup(); err != nil {
		return nil, errors.Join(err, h.teardown())
	}
	b.mu.Lock()
	b.hosts = append(b.hosts, h)
	b.mu.Unlock()
	return h, nil
}

// peerName is the bridge-side veth name; at most 15 bytes since network
// names are at most 10 and host indexes stay below 245.
func peerName(idx int, network string) string {
	return "h" + strconv.Itoa(idx) + "-" + network
}

func (b *Bed) network(name string) *Network {
	for i := range b.networks {
		if b.networks[i].Name == name {
			return &b.networks[i]
		}
	}
	return nil
}

func (b *Bed) networkNames() string {
	var s []string
	for _, n := range b.networks {
		s = append(s, n.Name)
	}
	return strings.Join(s, ", ")
}

// hostAddr returns the offset-th address of pfx with pfx's length.
func hostAddr(pfx netip.Prefix, offset int) (netip.Prefix, error) {
	a := pfx.Masked().Addr().As16()
	carry := offset
	for i := 15; i >= 0 && carry > 0; i-- {
		v := int(a[i]) + carry
		a[i] = byte(v)
		carry = v >> 8
	}
	addr := netip.AddrFrom16(a)
	if pfx.Addr().Is4() {
		addr = addr.Unmap()
	}
	last := pfx.Addr().Is4() && pfx.Bits() < 32 && isLastV4(pfx, addr)
	if carry > 0 || !pfx.Contains(addr) || last {
		return netip.Prefix{}, fmt.Errorf("no address %d in %v: too many hosts", offset, pfx)
	}
	return netip.PrefixFrom(addr, pfx.Bits()), nil
}

func isLastV4(pfx netip.Prefix, a netip.Addr) bool {
	next := a.Next()
	return !next.IsValid() || !pfx.Contains(next)
}

func (h *Host) setup() error {
	b := h.bed
	if _, err := run(nil, "ip", "netns", "add", h.NetNS); err != nil {
		return fmt.Errorf("testbed %s: host %s: create network namespace: %w", b.id, h.Name, err)
	}
	ns, err := netns.GetFromName(h.NetNS)
	if err != nil {
		return fmt.Errorf("testbed %s: host %s: open network namespace: %w", b.id, h.Name, err)
	}
	h.ns = ns
	h.netIno = nsInode("/run/netns/" + h.NetNS)
	// No duplicate address detection: addresses (and link-locals, needed
	// for neighbour advertisements) are usable at once.
	err = inNetNS(ns, func() error {
		return writeSysctls(map[string]string{
			"net/ipv6/conf/all/accept_dad":     "0",
			"net/ipv6/conf/default/accept_dad": "0",
		})
	})
	if err != nil {
		return fmt.Errorf("testbed %s: host %s: sysctls: %w", b.id, h.Name, err)
	}

	f, err := os.OpenFile(h.MountNS, os.O_CREATE|os.O_EXCL|os.O_RDONLY, 0o644)
	if err != nil {
		return fmt.Errorf("testbed %s: host %s: create mount namespace file: %w", b.id, h.Name, err)
	}
	f.Close()
	if _, err := run(nil, "unshare", "--mount="+h.MountNS, "--propagation", "private", "true"); err != nil {
		return fmt.Errorf("testbed %s: host %s: create mount namespace: %w", b.id, h.Name, err)
	}
	h.mntIno = nsInode(h.MountNS)
	if h.mntIno == 0 {
		return fmt.Errorf("testbed %s: host %s: mount namespace file %s is not bound after unshare", b.id, h.Name, h.MountNS)
	}
	// Per-host /run/tandem (sockets, state) and a sysfs showing the host's
	// own interfaces, as `ip netns exec` does.
	const script = `set -e
mkdir -p /run/tandem
mount -t tmpfs -o mode=0755,size=64m tandem-testbed /run/tandem
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys`
	if out, err := h.Command("sh", "-c", script).CombinedOutput(); err != nil {
		return fmt.Errorf("testbed %s: host %s: mount /run/tandem and /sys: %w: %s", b.id, h.Name, err, strings.TrimSpace(string(out)))
	}

	var sw, in strings.Builder
	in.WriteString("link set lo up\n")
	for _, n := range b.networks {
		ifc, peer := h.Ifaces[n.Name], h.Peers[n.Name]
		fmt.Fprintf(&sw, "link add %s type veth peer name %s netns %s\n", peer, ifc, h.NetNS)
		fmt.Fprintf(&sw, "link set %s master %s up\n", peer, bridgeName(n.Name))
		for _, a := range h.Addrs[n.Name] {
			if a.Addr().Is6() {
				fmt.Fprintf(&in, "addr add %s dev %s nodad\n", a, ifc)
			} else {
				fmt.Fprintf(&in, "addr add %s dev %s\n", a, ifc)
			}
		}
		fmt.Fprintf(&in, "link set %s up\n", ifc)
	}
	if _, err := ipBatch(b.swNS, sw.String()); err != nil {
		return fmt.Errorf("testbed %s: host %s: create veths: %w", b.id, h.Name, err)
	}
	if _, err := ipBatch(h.NetNS, in.String()); err != nil {
		return fmt.Errorf("testbed %s: host %s: configure interfaces: %w", b.id, h.Name, err)
	}
	nl, err := newNLHandle(ns)
	if err != nil {
		return fmt.Errorf("testbed %s: host %s: netlink handle: %w", b.id, h.Name, err)
	}
	h.nl = nl
	return nil
}

// teardown releases the host's handles, mount namespace and network
// namespace (which deletes its veths). Processes must be gone already.
func (h *Host) teardown() error {
	var errs []error
	h.releaseMounts()
	if h.nl != nil {
		h.nl.close()
	}
	if h.ns >= 0 {
		h.ns.Close()
		h.ns = -1
	}
	if err := unmount(h.MountNS); err != nil {
		errs = append(errs, fmt.Errorf("testbed %s: host %s: %w", h.bed.id, h.Name, err))
	}
	if err := os.Remove(h.MountNS); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("testbed %s: host %s: %w", h.bed.id, h.Name, err))
	}
	if err := deleteNetNS(h.NetNS); err != nil {
		errs = append(errs, fmt.Errorf("testbed %s: host %s: %w", h.bed.id, h.Name, err))
	}
	// The bridge-side veth normally dies with its peer; remove it if not.
	if h.bed.swHandle != nil {
		for _, p := range h.Peers {
			_ = h.bed.swHandle.do(func(nh *netlink.Handle) error {
				l, err := nh.LinkByName(p)
				if err != nil {
					return nil
				}
				return nh.LinkDel(l)
			})
		}
	}
	return errors.Join(errs...)
}

func (h *Host) nsInodes() []uint64 { return []uint64{h.netIno, h.mntIno} }

// Addr returns the host's first IPv4 address on network, or the zero Addr.
func (h *Host) Addr(network string) netip.Addr {
	for _, p := range h.Addrs[network] {
		if p.Addr().Is4() {
			return p.Addr()
		}
	}
	return netip.Addr{}
}

// Addr6 returns the host's first IPv6 address on network, or the zero Addr.
func (h *Host) Addr6(network string) netip.Addr {
	for _, p := range h.Addrs[network] {
		if p.Addr().Is6() {
			return p.Addr()
		}
	}
	return netip.Addr{}
}

// Bed returns the bed the host belongs to.
func (h *Host) Bed() *Bed { return h.bed }

// nsenterArgs enters the host's network and mount namespaces; --wd=. keeps
// the caller's working directory (Cmd.Dir), which entering a mount
// namespace would otherwise reset to "/".
func (h *Host) nsenterArgs(name string, args []string) []string {
	return append([]string{"nsenter", "--net=/run/netns/" + h.NetNS, "--mount=" + h.MountNS, "--wd=.", "--", name}, args...)
}

// Command returns a command that runs inside the host (network and mount
// namespace) in a process group of its own. Dir, Env, Stdin... may be set
// before Start; Dir is resolved in the caller's mount namespace, so it
// cannot be a path on one of the host's own mounts. Close kills the
// process (found through its namespaces) if it is still running.
func (h *Host) Command(name string, args ...string) *exec.Cmd {
	a := h.nsenterArgs(name, args)
	cmd := exec.Command(a[0], a[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	return cmd
}

// CommandContext is Command whose process group is SIGKILLed when ctx ends.
func (h *Host) CommandContext(ctx context.Context, name string, args ...string) *exec.Cmd {
	a := h.nsenterArgs(name, args)
	cmd := exec.CommandContext(ctx, a[0], a[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		_ = unix.Kill(-cmd.Process.Pid, unix.SIGKILL)
		return cmd.Process.Kill()
	}
	cmd.WaitDelay = 5 * time.Second
	return cmd
}

// RunTimeout bounds Run.
const RunTimeout = 2 * time.Minute

// Run runs a command inside the host and returns its combined output; the
// error names the host and command and includes the output.
func (h *Host) Run(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), RunTimeout)
	defer cancel()
	return h.RunContext(ctx, name, args...)
}

// RunContext is Run bounded by ctx.
func (h *Host) RunContext(ctx context.Context, name string, args ...string) (string, error) {
	out, err := h.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("host %s: %s %s: %w: %s", h.Name, name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Do runs fn on a locked OS thread switched into the host's network
// namespace (not its mount namespace). Sockets fn creates stay in the
// namespace; goroutines fn starts do not run in it.
func (h *Host) Do(fn func() error) error {
	if h.ns < 0 {
		return fmt.Errorf("host %s: namespace closed", h.Name)
	}
	return inNetNS(h.ns, fn)
}

// Dial connects from inside the host's network namespace. addr should hold
// an IP literal: name resolution would run outside the namespace.
func (h *Host) Dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var c net.Conn
	err := h.Do(func() error {
		var err error
		c, err = (&net.Dialer{}).DialContext(ctx, network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("host %s: dial %s %s: %w", h.Name, network, addr, err)
	}
	return c, nil
}

// Listen opens a listener inside the host's network namespace.
func (h *Host) Listen(network, addr string) (net.Listener, error) {
	var l net.Listener
	err := h.Do(func() error {
		var err error
		l, err = net.Listen(network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("host %s: listen %s %s: %w", h.Name, network, addr, err)
	}
	return l, nil
}

// ListenPacket opens a packet socket inside the host's network namespace.
func (h *Host) ListenPacket(network, addr string) (net.PacketConn, error) {
	var c net.PacketConn
	err := h.Do(func() error {
		var err error
		c, err = net.ListenPacket(network, addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("host %s: listen %s %s: %w", h.Name, network, addr, err)
	}
	return c, nil
}

// Netlink runs fn with a netlink handle opened in the host's namespace.
func (h *Host) Netlink(fn func(*netlink.Handle) error) error {
	if h.nl == nil {
		return fmt.Errorf("host %s: no netlink handle (host not set up)", h.Name)
	}
	return h.nl.do(fn)
}

// HasAddr reports whether any interface of the host holds a. It reuses one
// netlink handle, so sampling it every few milliseconds is cheap.
func (h *Host) HasAddr(a netip.Addr) (bool, error) {
	a = a.Unmap()
	fam := netlink.FAMILY_V4
	if a.Is6() {
		fam = netlink.FAMILY_V6
	}
	var found bool
	err := h.Netlink(func(nh *netlink.Handle) error {
		var list []netlink.Addr
		var err error
		for range 5 {
			list, err = nh.AddrList(nil, fam)
			if !errors.Is(err, netlink.ErrDumpInterrupted) {
				break
			}
		}
		if err != nil {
			return err
		}
		for _, x := range list {
			if x.IPNet == nil {
				continue
			}
			if y, ok := netip.AddrFromSlice(x.IP); ok && y.Unmap() == a {
				found = true
				return nil
			}
		}
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("host %s: list addresses: %w", h.Name, err)
	}
	return found, nil
}

// Neighbor returns the link-layer address the host's neighbour table holds
// for a (any state but FAILED/INCOMPLETE), or nil when there is none.
func (h *Host) Neighbor(a netip.Addr) (net.HardwareAddr, error) {
	a = a.Unmap()
	fam := netlink.FAMILY_V4
	if a.Is6() {
		fam = netlink.FAMILY_V6
	}
	var mac net.HardwareAddr
	err := h.Netlink(func(nh *netlink.Handle) error {
		list, err := nh.NeighList(0, fam)
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			return err
		}
		for _, n := range list {
			y, ok := netip.AddrFromSlice(n.IP)
			if !ok || y.Unmap() != a || len(n.HardwareAddr) == 0 {
				continue
			}
			if n.State&(netlink.NUD_FAILED|netlink.NUD_INCOMPLETE) != 0 {
				continue
			}
			mac = n.HardwareAddr
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("host %s: list neighbours: %w", h.Name, err)
	}
	return mac, nil
}

// MAC returns the hardware address of the host's interface on network.
func (h *Host) MAC(network string) (net.HardwareAddr, error) {
	ifc, ok := h.Ifaces[network]
	if !ok {
		return nil, fmt.Errorf("host %s: unknown network %q (have %s)", h.Name, network, h.bed.networkNames())
	}
	var mac net.HardwareAddr
	err := h.Netlink(func(nh *netlink.Handle) error {
		l, err := nh.LinkByName(ifc)
		if err != nil {
			return err
		}
		mac = l.Attrs().HardwareAddr
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("host %s: interface %s: %w", h.Name, ifc, err)
	}
	return mac, nil
}

// LinkDown sets the bridge-side end of the host's cable on network down:
// the host sees carrier loss, as if the cable were pulled.
func (h *Host) LinkDown(network string) error { return h.setPeer(network, false) }

// LinkUp plugs the cable back in.
func (h *Host) LinkUp(network string) error { return h.setPeer(network, true) }

func (h *Host) setPeer(network string, up bool) error {
	peer, ok := h.Peers[network]
	if !ok {
		return fmt.Errorf("host %s: unknown network %q (have %s)", h.Name, network, h.bed.networkNames())
	}
	err := h.bed.swHandle.do(func(nh *netlink.Handle) error {
		l, err := nh.LinkByName(peer)
		if err != nil {
			return err
		}
		if up {
			return nh.LinkSetUp(l)
		}
		return nh.LinkSetDown(l)
	})
	if err != nil {
		state := "down"
		if up {
			state = "up"
		}
		return fmt.Errorf("host %s: set link %s (%s in %s) %s: %w", h.Name, network, peer, h.bed.swNS, state, err)
	}
	return nil
}

// MountTmpfs mounts a tmpfs of size bytes at the absolute path inside the
// host's mount namespace (creating the directory), e.g. a data directory
// that FillDisk can then fill.
func (h *Host) MountTmpfs(path string, size int64) error {
	if !filepath.IsAbs(path) || filepath.Clean(path) != path {
		return fmt.Errorf("host %s: tmpfs mount point %q: want a clean absolute path", h.Name, path)
	}
	if size <= 0 {
		return fmt.Errorf("host %s: tmpfs at %s: size %d: want > 0 bytes", h.Name, path, size)
	}
	const script = `set -e; mkdir -p "$1"; mount -t tmpfs -o "size=$2,mode=0755" tandem-testbed "$1"`
	if _, err := h.Run("sh", "-c", script, "sh", path, strconv.FormatInt(size, 10)); err != nil {
		return err
	}
	h.mu.Lock()
	h.tmpfs[path] = size
	h.mu.Unlock()
	return nil
}

// fillName is the file FillDisk writes.
const fillName = ".testbed-fill"

// FillDisk fills a tmpfs made by MountTmpfs until writes fail with ENOSPC.
// Only such mounts are accepted, so a typo cannot fill a real disk.
func (h *Host) FillDisk(path string) error {
	h.mu.Lock()
	size, ok := h.tmpfs[path]
	h.mu.Unlock()
	if !ok {
		return fmt.Errorf("host %s: fill disk %s: not a tmpfs made by MountTmpfs on this host", h.Name, path)
	}
	count := size/65536 + 2
	out, err := h.Run("dd", "if=/dev/zero", "of="+filepath.Join(path, fillName), "bs=65536", "count="+strconv.FormatInt(count, 10))
	if err == nil || strings.Contains(out, "No space left") {
		return nil
	}
	return fmt.Errorf("fill disk: %w", err)
}

// FreeDisk removes what FillDisk wrote.
func (h *Host) FreeDisk(path string) error {
	h.mu.Lock()
	_, ok := h.tmpfs[path]
	h.mu.Unlock()
	if !ok {
		return fmt.Errorf("host %s: free disk %s: not a tmpfs made by MountTmpfs on this host", h.Name, path)
	}
	_, err := h.Run("rm", "-f", filepath.Join(path, fillName))
	return err
}
