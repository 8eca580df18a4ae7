// Package testbed builds throw-away multi-host networks on one Linux machine
// for end-to-end tests, benchmarks and `tandem demo`.
//
// A Bed is a "switch" network namespace holding one bridge per network (no
// physical port, no default route) plus any number of hosts. A Host is a
// network namespace with its own persistent mount namespace (private tmpfs
// at /run/tandem, fresh sysfs), wired to every bridge by a veth pair. The bed
// offers process control and fault injection: kill -9, link down/up
// (carrier loss), partitions (nftables) and full disks (small tmpfs).
//
// Only documentation address ranges are used (192.0.2.0/24,
// 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32), and nothing is created in
// the root network namespace. Everything needs root.
package testbed

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// RunRoot holds one directory per live bed: the owner file and the
// mount-namespace files of its hosts.
const RunRoot = "/run/tandem-testbed"

// idPrefix starts every bed id; namespaces are named "<id>-<host>".
const idPrefix = "tb"

// KeepEnv, when set to 1, keeps a bed's Dir (logs, configs) after Close.
const KeepEnv = "KEEP_TESTBED"

var (
	idRE      = regexp.MustCompile(`^tb[0-9a-f]{5}$`)
	nsRE      = regexp.MustCompile(`^(tb[0-9a-f]{5})-`)
	netNameRE = regexp.MustCompile(`^[a-z][a-z0-9]{0,9}$`)
	hostRE    = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,31}$`)
)

// docRanges are the only prefixes a bed may use (RFC 5737, RFC 3849).
var docRanges = []netip.Prefix{
	netip.MustParsePrefix("192.0.2.0/24"),
	netip.MustParsePrefix("198.51.100.0/24"),
	netip.MustParsePrefix("203.0.113.0/24"),
	netip.MustParsePrefix("2001:db8::/32"),
}

// Network is one broadcast domain (one bridge). V6 may be the zero Prefix.
type Network struct {
	Name string
	V4   netip.Prefix
	V6   netip.Prefix
}

// Options configure a Bed.
type Options struct {
	// Networks in order; host interfaces are eth0, eth1... in this order.
	// Default: lan 192.0.2.0/24 + 2001:db8:1::/64, backup 198.51.100.0/24.
	Networks []Network
	// Dir is the parent of the bed's log/config directory; default os.TempDir().
	Dir string
}

// DefaultNetworks returns the networks used when Options.Networks is empty.
func DefaultNetworks() []Network {
	return []Network{
		{Name: "lan", V4: netip.MustParsePrefix("192.0.2.0/24"), V6: netip.MustParsePrefix("2001:db8:1::/64")},
		{Name: "backup", V4: netip.MustParsePrefix("198.51.100.0/24")},
	}
}

// Bed is a set of hosts joined by bridges. Its methods are safe for
// concurrent use, except that Close must not race with AddHost.
type Bed struct {
	id       string
	networks []Network
	runDir   string // RunRoot/<id>
	mntDir   string // runDir/mnt: private bind mount holding mount-ns files
	dir      string // logs and configs
	swNS     string // switch namespace name
	swHandle *nlHandle

	addMu sync.Mutex // serialises AddHost

	mu      sync.Mutex
	hosts   []*Host
	procs   []*Proc
	logSeq  int
	nextIdx int
	mounted bool // mntDir bind mount in place

	closeOnce sync.Once
	closeErr  error
}

// Available reports why beds cannot be built here (not root, tools missing),
// or nil.
func Available() error {
	if os.Geteuid() != 0 {
		return errors.New("testbed needs root (network and mount namespaces): run the tests as root")
	}
	var missing []string
	for _, tool := range []string{"ip", "nsenter", "unshare", "sh", "mount"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("testbed needs %s in PATH: apt-get install -y iproute2 util-linux mount", strings.Join(missing, ", "))
	}
	return nil
}

// New builds a bed with its switch namespace and bridges but no hosts.
// Call Close when done, also on error paths.
func New(opts Options) (*Bed, error) {
	if err := Available(); err != nil {
		return nil, err
	}
	nets := opts.Networks
	if len(nets) == 0 {
		nets = DefaultNetworks()
	}
	if err := checkNetworks(nets); err != nil {
		return nil, err
	}
	parent := opts.Dir
	if parent == "" {
		parent = os.TempDir()
	}
	b := &Bed{networks: append([]Network(nil), nets...)}
	if err := b.claimID(); err != nil {
		return nil, err
	}
	if err := b.setup(parent); err != nil {
		return nil, errors.Join(err, b.Close())
	}
	slog.Debug("testbed created", "bed", b.id, "dir", b.dir)
	return b, nil
}

func checkNetworks(nets []Network) error {
	seen := map[string]bool{}
	for i, n := range nets {
		if !netNameRE.MatchString(n.Name) {
			return fmt.Errorf("testbed: network %d name %q: want 1-10 lower-case letters/digits starting with a letter", i, n.Name)
		}
		if seen[n.Name] {
			return fmt.Errorf("testbed: network %q given twice", n.Name)
		}
		seen[n.Name] = true
		if !n.V4.IsValid() || !n.V4.Addr().Is4() {
			return fmt.Errorf("testbed: network %q: V4 prefix %v is not a valid IPv4 prefix", n.Name, n.V4)
		}
		for _, p := range []netip.Prefix{n.V4, n.V6} {
			if !p.IsValid() {
				continue
			}
			if p.Bits() > 28 && p.Addr().Is4() || p.Bits() > 120 {
				return fmt.Errorf("testbed: network %q: prefix %v is too small for hosts", n.Name, p)
			}
			if !inDocRange(p) {
				return fmt.Errorf("testbed: network %q: prefix %v is outside the documentation ranges %v", n.Name, p, docRanges)
			}
		}
		if n.V6.IsValid() && !n.V6.Addr().Is6() {
			return fmt.Errorf("testbed: network %q: V6 prefix %v is not IPv6", n.Name, n.V6)
		}
	}
	return nil
}

func inDocRange(p netip.Prefix) bool {
	for _, r := range docRanges {
		if r.Addr().BitLen() == p.Addr().BitLen() && p.Bits() >= r.Bits() && r.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

// claimID picks a random id and creates its run directory atomically, with
// the owner file naming this process so CleanupStale leaves it alone.
func (b *Bed) claimID() error {
	if err := os.MkdirAll(RunRoot, 0o755); err != nil {
		return fmt.Errorf("testbed: create %s: %w", RunRoot, err)
	}
	for range 20 {
		var r [3]byte
		if _, err := rand.Read(r[:]); err != nil {
			return fmt.Errorf("testbed: random id: %w", err)
		}
		id := idPrefix + hex.EncodeToString(r[:])[:5]
		dir := filepath.Join(RunRoot, id)
		if err := os.Mkdir(dir, 0o755); err != nil {
			if errors.Is(err, fs.ErrExist) {
				continue
			}
			return fmt.Errorf("testbed: create %s: %w", dir, err)
		}
		if _, err := os.Stat("/run/netns/" + id + "-switch"); err == nil {
			// A stale bed's namespaces with this id remain: pick another.
			_ = os.Remove(dir)
			continue
		}
		b.id, b.runDir = id, dir
		b.mntDir = filepath.Join(dir, "mnt")
		b.swNS = id + "-switch"
		if err := writeOwner(dir); err != nil {
			return errors.Join(err, os.RemoveAll(dir))
		}
		return nil
	}
	return errors.New("testbed: no free bed id after 20 tries: run testbed.CleanupStale")
}

func (b *Bed) setup(parent string) error {
	b.dir = filepath.Join(parent, "tandem-testbed-"+b.id)
	if err := os.MkdirAll(b.dir, 0o755); err != nil {
		return fmt.Errorf("testbed %s: create dir %s: %w", b.id, b.dir, err)
	}
	if err := os.WriteFile(filepath.Join(b.runDir, "dir"), []byte(b.dir+"\n"), 0o644); err != nil {
		return fmt.Errorf("testbed %s: record dir: %w", b.id, err)
	}
	// Persistent mount namespaces can only be bound onto a file whose mount
	// is private: give them a private bind mount of their own.
	if err := os.Mkdir(b.mntDir, 0o755); err != nil {
		return fmt.Errorf("testbed %s: create %s: %w", b.id, b.mntDir, err)
	}
	if err := unix.Mount(b.mntDir, b.mntDir, "", unix.MS_BIND, ""); err != nil {
		return fmt.Errorf("testbed %s: bind mount %s: %w", b.id, b.mntDir, err)
	}
	b.mounted = true
	if err := unix.Mount("", b.mntDir, "", unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("testbed %s: make %s private: %w", b.id, b.mntDir, err)
	}

	if _, err := run(nil, "ip", "netns", "add", b.swNS); err != nil {
		return fmt.Errorf("testbed %s: create switch namespace: %w", b.id, err)
	}
	ns, err := netns.GetFromName(b.swNS)
	if err != nil {
		return fmt.Errorf("testbed %s: open switch namespace %s: %w", b.id, b.swNS, err)
	}
	defer ns.Close()
	// No IPv6 on the switch's own ports: no link-local, no MLD/RS noise.
	err = inNetNS(ns, func() error {
		return writeSysctls(map[string]string{
			"net/ipv6/conf/default/disable_ipv6": "1",
			"net/ipv6/conf/all/disable_ipv6":     "1",
		})
	})
	if err != nil {
		return fmt.Errorf("testbed %s: switch sysctls: %w", b.id, err)
	}
	var batch strings.Builder
	batch.WriteString("link set lo up\n")
	for _, n := range b.networks {
		fmt.Fprintf(&batch, "link add %s type bridge forward_delay 0 stp_state 0 mcast_snooping 0\n", bridgeName(n.Name))
		fmt.Fprintf(&batch, "link set %s up\n", bridgeName(n.Name))
	}
	if _, err := ipBatch(b.swNS, batch.String()); err != nil {
		return fmt.Errorf("testbed %s: create bridges: %w", b.id, err)
	}
	h, err := newNLHandle(ns)
	if err != nil {
		return fmt.Errorf("testbed %s: netlink handle in switch namespace: %w", b.id, err)
	}
	b.swHandle = h
	return nil
}

func bridgeName(network string) string { return "br-" + network }

// ID is the bed's unique short id ("tb" + 5 hex digits).
func (b *Bed) ID() string { return b.id }

// Dir is a directory for this bed's logs and configs, removed on Close
// unless KEEP_TESTBED=1.
func (b *Bed) Dir() string { return b.dir }

// Networks returns the bed's networks in interface order.
func (b *Bed) Networks() []Network { return append([]Network(nil), b.networks...) }

// SwitchNS is the name of the namespace holding the bridges.
func (b *Bed) SwitchNS() string { return b.swNS }

// Hosts returns the hosts in creation order.
func (b *Bed) Hosts() []*Host {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]*Host(nil), b.hosts...)
}

// Host returns the host with that name, or nil.
func (b *Bed) Host(name string) *Host {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, h := range b.hosts {
		if h.Name == name {
			return h
		}
	}
	return nil
}

// Close kills every process started in the bed's hosts (whole process
// groups, then anything else still inside their namespaces), unmounts,
// deletes the namespaces and the run directory, and removes Dir unless
// KEEP_TESTBED=1. It is best-effort, returns the joined errors, and is safe
// to call more than once.
func (b *Bed) Close() error {
	b.closeOnce.Do(func() { b.closeErr = b.close() })
	return b.closeErr
}

func (b *Bed) close() error {
	var errs []error
	b.mu.Lock()
	hosts := append([]*Host(nil), b.hosts...)
	procs := append([]*Proc(nil), b.procs...)
	b.mu.Unlock()

	for _, p := range procs {
		p.killGroup()
	}
	var inodes []uint64
	for _, h := range hosts {
		inodes = append(inodes, h.nsInodes()...)
	}
	if err := killInNamespaces(inodes, 5*time.Second); err != nil {
		errs = append(errs, fmt.Errorf("testbed %s: %w", b.id, err))
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, p := range procs {
		if err := p.waitUntil(deadline); err != nil && errors.Is(err, errWaitTimeout) {
			errs = append(errs, fmt.Errorf("testbed %s: process %d (%s) not reaped after SIGKILL", b.id, p.Cmd.Process.Pid, p.Cmd.Path))
		}
	}
	for i := len(hosts) - 1; i >= 0; i-- {
		if err := hosts[i].teardown(); err != nil {
			errs = append(errs, err)
		}
	}
	if b.swHandle != nil {
		b.swHandle.close()
	}
	if b.swNS != "" {
		if err := deleteNetNS(b.swNS); err != nil {
			errs = append(errs, fmt.Errorf("testbed %s: %w", b.id, err))
		}
	}
	if b.mounted {
		if err := unmount(b.mntDir); err != nil {
			errs = append(errs, fmt.Errorf("testbed %s: %w", b.id, err))
		}
	}
	if b.runDir != "" {
		if err := os.RemoveAll(b.runDir); err != nil {
			errs = append(errs, fmt.Errorf("testbed %s: remove %s: %w", b.id, b.runDir, err))
		}
	}
	if b.dir != "" {
		if os.Getenv(KeepEnv) == "1" {
			slog.Info("testbed dir kept", "bed", b.id, "dir", b.dir)
		} else if err := os.RemoveAll(b.dir); err != nil {
			errs = append(errs, fmt.Errorf("testbed %s: remove %s: %w", b.id, b.dir, err))
		}
	}
	return errors.Join(errs...)
}

// deleteNetNS removes a named network namespace; a missing one is fine.
func deleteNetNS(name string) error {
	path := "/run/netns/" + name
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err := unmount(path); err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove namespace file %s: %w", path, err)
	}
	return nil
}

// unmount detaches a mount; "not mounted" and "missing" are fine.
func unmount(path string) error {
	err := unix.Unmount(path, unix.MNT_DETACH)
	if err == nil || errors.Is(err, unix.EINVAL) || errors.Is(err, unix.ENOENT) {
		return nil
	}
	return fmt.Errorf("unmount %s: %w", path, err)
}

// nlHandle is a netlink handle inside one namespace; the lock keeps Close
// from racing with requests (requests themselves are safe concurrently).
type nlHandle struct {
	mu sync.RWMutex
	h  *netlink.Handle
}

func newNLHandle(ns netns.NsHandle) (*nlHandle, error) {
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return nil, err
	}
	return &nlHandle{h: h}, nil
}

func (n *nlHandle) do(fn func(h *netlink.Handle) error) error {
	n.mu.RLock()
	defer n.mu.RUnlock()
	if n.h == nil {
		return errors.New("netlink handle closed (bed closed)")
	}
	return fn(n.h)
}

func (n *nlHandle) close() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.h != nil {
		n.h.Close()
		n.h = nil
	}
}
