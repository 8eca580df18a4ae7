package config

import (
	"fmt"
	"io/fs"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/tandem-ha/tandem/modules"
)

// KindFarm is a farm module: N nodes, all active, one VIP load-balanced
// over them with no load balancer (docs/farm.md).
const KindFarm = "farm"

// Farm limits and defaults.
const (
	MinFarmNodes = 2
	MaxFarmNodes = 16
	MaxWeight    = 100
	// DefaultDrain: how long a node that gives buckets away (to a node
	// coming back) still serves the established TCP connections of them.
	DefaultDrain = 30 * time.Second
	HashAddr     = "addr"
	HashAddrPort = "addr+port"
)

// Farm holds the settings of a farm module (Module.Kind == KindFarm).
type Farm struct {
	VIP       netip.Prefix // IPv4 with the prefix length of its subnet
	Interface string       // "" = the interface holding an address in the VIP's subnet
	Hash      string       // HashAddr or HashAddrPort
	Weights   map[string]int
	Drain     time.Duration // 0: buckets change hands at once
}

// Weight returns a node's weight (1 when not listed).
func (f *Farm) Weight(node string) int {
	if w, ok := f.Weights[node]; ok {
		return w
	}
	return 1
}

// farmFields are the farm settings in the canonical field list.
func (m *Module) farmFields() []Field {
	if m.Farm == nil {
		return nil
	}
	f := []Field{
		{"vip", m.Farm.VIP.String()},
		{"hash", m.Farm.Hash},
		{"drain", m.Farm.Drain.String()},
	}
	if m.Farm.Interface != "" {
		f = append(f, Field{"interface", m.Farm.Interface})
	}
	for _, n := range m.Nodes {
		f = append(f, Field{"weights." + n, strconv.Itoa(m.Farm.Weight(n))})
	}
	return f
}

// farmOnly are the fields only a farm module may set; mirrorOnly the
// reverse.
var (
	farmOnly   = []string{"vip", "interface", "hash", "weights", "drain"}
	mirrorOnly = []string{"default_primary", "vips", "directories", "sync", "replication"}
)

// validateFarm checks the farm fields of a farm module, and that a mirror
// module sets none of them.
func (d *decoder) validateFarm(raw *rawModule, m *Module, c *Cluster) {
	if raw.Kind != KindFarm {
		if raw.Kind == KindMirror {
			for _, f := range farmOnly {
				if d.set(f) {
					d.add(d.keyLine(f), f, "only for kind: farm (a mirror module has vips:, see docs/config.md)")
				}
			}
		}
		return
	}
	for _, f := range mirrorOnly {
		if d.set(f) {
			hint := ""
			if f == "vips" {
				hint = ": a farm has one virtual IP, write vip: ADDRESS/PREFIX"
			}
			d.add(d.keyLine(f), f, "not used by a farm module%s", hint)
		}
	}
	m.VIPs = nil
	for i, ck := range m.Checkers {
		if ck.When == "second" {
			p := fmt.Sprintf("checkers[%d].when", i)
			d.add(d.line(p), p, "a farm has no SECOND: use prim or both (while the node is UP) or pre")
		}
	}
	if d.set("nodes") && d.nodes["nodes"].Kind == yaml.SequenceNode &&
		(len(raw.Nodes) < MinFarmNodes || len(raw.Nodes) > MaxFarmNodes) {
		d.add(d.line("nodes"), "nodes", "a farm module runs on %d to %d nodes, found %d", MinFarmNodes, MaxFarmNodes, len(raw.Nodes))
	}
	f := &Farm{Hash: HashAddr, Drain: DefaultDrain, Weights: map[string]int{}}
	m.Farm = f

	switch {
	case d.bad["vip"]:
	case raw.VIP == "":
		d.add(d.line("vip"), "vip", "required: the farm's virtual IP with its prefix length (e.g. vip: 192.0.2.100/24)")
	default:
		if pfx, ok := d.farmVIP(raw.VIP, c); ok {
			f.VIP = pfx
			m.VIPs = []VIP{{Address: pfx, Interface: raw.Interface, Line: d.line("vip")}}
		}
	}
	if raw.Interface != "" {
		if !ifaceNameRe.MatchString(raw.Interface) {
			d.add(d.line("interface"), "interface", "invalid interface name %q", raw.Interface)
		} else {
			f.Interface = raw.Interface
		}
	}
	switch raw.Hash {
	case "", HashAddr:
	case HashAddrPort:
		f.Hash = HashAddrPort
	default:
		d.add(d.line("hash"), "hash", "unknown hash %q: addr (a client's connections all go to one node) or addr+port (spread by source port too)", raw.Hash)
	}
	for _, n := range sortedKeys(raw.Weights) {
		p := "weights." + n
		w := raw.Weights[n]
		switch {
		case d.bad[p]:
		case !slices.Contains(raw.Nodes, n):
			d.add(d.keyLine(p), p, "%q is not one of this module's nodes (%s)", n, strings.Join(raw.Nodes, ", "))
		case w < 1 || w > MaxWeight:
			d.add(d.line(p), p, "weight %d out of range: 1 to %d (a node gets buckets in proportion to its weight)", w, MaxWeight)
		default:
			f.Weights[n] = w
		}
	}
	if raw.Drain != "" {
		switch v, err := time.ParseDuration(raw.Drain); {
		case raw.Drain == "off" || raw.Drain == "0":
			f.Drain = 0
		case err != nil || v < 0:
			d.add(d.line("drain"), "drain", "invalid duration %q (use e.g. 30s, or 0 to hand buckets over at once)", raw.Drain)
		default:
			f.Drain = v
		}
	}
}

// farmVIP checks the farm's VIP: an IPv4 address with its prefix length,
// free (not a node's address).
func (d *decoder) farmVIP(text string, c *Cluster) (netip.Prefix, bool) {
	pfx, err := netip.ParsePrefix(text)
	if err != nil {
		if a, aerr := netip.ParseAddr(text); aerr == nil && a.Is4() {
			d.add(d.line("vip"), "vip", "%q has no prefix length: write it as CIDR, e.g. %s/24", text, a)
		} else {
			d.add(d.line("vip"), "vip", "invalid address %q (use CIDR, e.g. 192.0.2.100/24)", text)
		}
		return pfx, false
	}
	a := pfx.Addr()
	if a.Is4In6() && pfx.Bits() >= 96 {
		pfx = netip.PrefixFrom(a.Unmap(), pfx.Bits()-96)
		a = pfx.Addr()
	}
	switch {
	case a.Is6():
		d.add(d.line("vip"), "vip", "%s: IPv6 farm VIPs are not supported yet (docs/farm.md): use an IPv4 address", text)
		return pfx, false
	case a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() || a == netip.AddrFrom4([4]byte{255, 255, 255, 255}):
		d.add(d.line("vip"), "vip", "%s cannot be a virtual IP (unspecified, multicast, broadcast or loopback)", text)
		return pfx, false
	case pfx.Bits() == 32:
		d.add(d.line("vip"), "vip", "%s: give the prefix length of the clients' subnet (e.g. /24), not /32: the farm interface is the one holding an address in that subnet", text)
		return pfx, false
	}
	if c != nil {
		if node, nw, ok := c.addrOwner(a); ok {
			d.add(d.line("vip"), "vip", "%s is node %s's %s address in %s: a virtual IP must be a free address", a, node, nw, c.File)
			return pfx, false
		}
	}
	return pfx, true
}

var kindLineRe = regexp.MustCompile(`(?m)^kind:\s*(\S+)`)

// TemplateKind is the kind of a built-in template ("" if unknown).
func TemplateKind(template string) string {
	b, err := fs.ReadFile(modules.FS, template+"/"+ModuleFile)
	if err != nil {
		return ""
	}
	if m := kindLineRe.FindSubmatch(b); m != nil {
		return string(m[1])
	}
	return ""
}

// nodesLine is the "nodes:" line a template gets for nodes.
func nodesLine(nodes []string) []byte {
	return fmt.Appendf(nil, "nodes: [%s]", strings.Join(nodes, ", "))
}
