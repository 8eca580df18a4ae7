package config

import (
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Defaults of the cluster file.
const (
	DefaultClusterFile       = "/etc/tandem/cluster.yaml"
	DefaultStateDir          = "/var/lib/tandem"
	DefaultModulesDir        = "/etc/tandem/modules"
	DefaultSocket            = "/run/tandem/tandem.sock"
	DefaultHeartbeatPort     = 7400
	DefaultHeartbeatInterval = 100 * time.Millisecond
	// The default timeout is this many intervals (600ms at the default
	// interval): enough to ride out a few lost packets or a busy scheduler
	// while keeping detection well under a second.
	DefaultTimeoutIntervals = 6
	// MinTimeoutIntervals is the smallest accepted timeout/interval ratio:
	// below it one or two lost packets would declare a live peer dead.
	MinTimeoutIntervals  = 3
	MinHeartbeatInterval = 10 * time.Millisecond
)

// Cluster is a loaded cluster file with defaults applied and every path
// absolute.
type Cluster struct {
	File         string // absolute path of the cluster file
	Name         string
	KeyFile      string
	StateDir     string
	ModulesDir   string
	Socket       string
	HealthListen string
	Networks     []string
	Heartbeat    Heartbeat
	Replication  ClusterReplication
	Nodes        []Node
}

// ClusterReplication says where replication streams flow: each node
// listens on Port at its address on Network.
type ClusterReplication struct {
	Port    int
	Network string
}

// DefaultReplicationPort is the TCP port of replication streams.
const DefaultReplicationPort = 7401

// Heartbeat holds the failure-detection settings.
type Heartbeat struct {
	Port     int
	Interval time.Duration
	Timeout  time.Duration
}

// Node is one node of the cluster. Empty override fields mean "use the
// cluster-wide value"; see Cluster.Resolved.
type Node struct {
	Name         string
	Addresses    map[string]netip.Addr // network name -> address
	Socket       string
	StateDir     string
	ModulesDir   string
	HealthListen string
}

// NodeSettings are one node's effective settings (overrides applied).
type NodeSettings struct {
	Name         string
	Socket       string
	StateDir     string
	ModulesDir   string
	HealthListen string
}

type rawCluster struct {
	Name         string                `yaml:"name"`
	KeyFile      string                `yaml:"key_file"`
	StateDir     string                `yaml:"state_dir"`
	ModulesDir   string                `yaml:"modules_dir"`
	Socket       string                `yaml:"socket"`
	HealthListen string                `yaml:"health_listen"`
	Networks     []string              `yaml:"networks"`
	Heartbeat    rawHeartbeat          `yaml:"heartbeat"`
	Replication  rawClusterReplication `yaml:"replication"`
	Nodes        []rawNode             `yaml:"nodes"`
}

type rawClusterReplication struct {
	Port    int    `yaml:"port"`
	Network string `yaml:"network"`
}

type rawHeartbeat struct {
	Port     int           `yaml:"port"`
	Interval time.Duration `yaml:"interval"`
	Timeout  time.Duration `yaml:"timeout"`
}

type rawNode struct {
	Name         string            `yaml:"name"`
	Addresses    map[string]string `yaml:"addresses"`
	Socket       string            `yaml:"socket"`
	StateDir     string            `yaml:"state_dir"`
	ModulesDir   string            `yaml:"modules_dir"`
	HealthListen string            `yaml:"health_listen"`
}

var (
	clusterNameRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)
	networkNameRe = regexp.MustCompile(`^[a-z0-9_-]{1,32}$`)
	nodeNameRe    = regexp.MustCompile(`^[a-z0-9-]{1,32}$`)
)

// LoadCluster reads and validates a cluster file. All problems are returned
// together, joined, each an *Error naming file, line and field.
func LoadCluster(path string) (*Cluster, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, &Error{File: path, Msg: fmt.Sprintf("cannot resolve path: %v", err)}
	}
	src, err := os.ReadFile(abs)
	if err != nil {
		return nil, &Error{File: abs, Msg: fmt.Sprintf("cannot read the cluster file: %v", unwrapPathError(err))}
	}
	return parseCluster(abs, src)
}

func unwrapPathError(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}

func parseCluster(file string, src []byte) (*Cluster, error) {
	d := newDecoder(file)
	root, ok := d.parse(src)
	if !ok {
		return nil, joinErrors(d.errs)
	}
	var raw rawCluster
	d.decode(root, "", reflect.ValueOf(&raw).Elem())
	c := d.validateCluster(&raw)
	if err := joinErrors(d.errs); err != nil {
		return nil, err
	}
	return c, nil
}

// absPath resolves p relative to the cluster file's directory.
func absPath(base, p string) string {
	if p == "" || filepath.IsAbs(p) {
		return filepath.Clean(p)
	}
	return filepath.Join(base, p)
}

func (d *decoder) validateCluster(raw *rawCluster) *Cluster {
	base := filepath.Dir(d.file)
	c := &Cluster{File: d.file}

	switch {
	case d.bad["name"]:
	case !d.set("name") || raw.Name == "":
		d.add(d.line("name"), "name", "required: the cluster name (e.g. name: prod)")
	case !clusterNameRe.MatchString(raw.Name):
		d.add(d.line("name"), "name", "invalid name %q: use letters, digits, '.', '_' and '-' (at most 64, starting with a letter or digit)", raw.Name)
	}
	c.Name = raw.Name

	if !d.bad["key_file"] && raw.KeyFile == "" {
		d.add(d.line("key_file"), "key_file", "required: path of the shared cluster key (e.g. key_file: /etc/tandem/cluster.key)")
	}
	c.KeyFile = absPath(base, raw.KeyFile)
	if raw.KeyFile == "" {
		c.KeyFile = ""
	}
	c.StateDir = absPath(base, orDefault(raw.StateDir, DefaultStateDir))
	c.ModulesDir = absPath(base, orDefault(raw.ModulesDir, DefaultModulesDir))
	c.Socket = absPath(base, orDefault(raw.Socket, DefaultSocket))
	c.HealthListen = raw.HealthListen
	d.checkListen("health_listen", raw.HealthListen)

	// Networks.
	if !d.set("networks") || d.ok("networks") && len(raw.Networks) == 0 {
		d.add(d.line("networks"), "networks", "required: at least one network name (e.g. networks: [lan])")
	}
	netLine := map[string]int{}
	for i, n := range raw.Networks {
		p := fmt.Sprintf("networks[%d]", i)
		if !networkNameRe.MatchString(n) {
			d.add(d.line(p), p, "invalid network name %q: use a-z, 0-9, '_' and '-' (at most 32)", n)
			continue
		}
		if l, dup := netLine[n]; dup {
			d.add(d.line(p), p, "network %q listed twice (first at line %d)", n, l)
			continue
		}
		netLine[n] = d.line(p)
		c.Networks = append(c.Networks, n)
	}

	// Heartbeat.
	c.Heartbeat = Heartbeat{Port: DefaultHeartbeatPort, Interval: DefaultHeartbeatInterval}
	if d.ok("heartbeat.port") {
		if raw.Heartbeat.Port < 1 || raw.Heartbeat.Port > 65535 {
			d.add(d.line("heartbeat.port"), "heartbeat.port", "port %d out of range 1-65535", raw.Heartbeat.Port)
		}
		c.Heartbeat.Port = raw.Heartbeat.Port
	}
	if d.ok("heartbeat.interval") {
		c.Heartbeat.Interval = raw.Heartbeat.Interval
		if c.Heartbeat.Interval < MinHeartbeatInterval {
			d.add(d.line("heartbeat.interval"), "heartbeat.interval", "%s is too short: at least %s", c.Heartbeat.Interval, MinHeartbeatInterval)
		}
	}
	c.Heartbeat.Timeout = DefaultTimeoutIntervals * c.Heartbeat.Interval
	if d.ok("heartbeat.timeout") {
		c.Heartbeat.Timeout = raw.Heartbeat.Timeout
		if minT := MinTimeoutIntervals * c.Heartbeat.Interval; c.Heartbeat.Timeout < minT {
			d.add(d.line("heartbeat.timeout"), "heartbeat.timeout",
				"%s is shorter than %d × heartbeat.interval (%d × %s = %s): raise the timeout or lower the interval",
				c.Heartbeat.Timeout, MinTimeoutIntervals, MinTimeoutIntervals, c.Heartbeat.Interval, minT)
		}
	}

	// Replication.
	c.Replication = ClusterReplication{Port: DefaultReplicationPort}
	if len(c.Networks) > 0 {
		c.Replication.Network = c.Networks[0]
	}
	if d.ok("replication.port") {
		if raw.Replication.Port < 1 || raw.Replication.Port > 65535 {
			d.add(d.line("replication.port"), "replication.port", "port %d out of range 1-65535", raw.Replication.Port)
		} else if raw.Replication.Port == c.Heartbeat.Port {
			d.add(d.line("replication.port"), "replication.port", "port %d is the heartbeat port too: give replication its own (TCP) port", raw.Replication.Port)
		}
		c.Replication.Port = raw.Replication.Port
	}
	if raw.Replication.Network != "" {
		if !slices.Contains(c.Networks, raw.Replication.Network) {
			d.add(d.line("replication.network"), "replication.network", "unknown network %q (networks: %s)", raw.Replication.Network, strings.Join(c.Networks, ", "))
		} else {
			c.Replication.Network = raw.Replication.Network
		}
	}

	// Nodes.
	if !d.bad["nodes"] && len(raw.Nodes) < 2 {
		d.add(d.line("nodes"), "nodes", "at least 2 nodes are required, found %d", len(raw.Nodes))
	}
	nameLine := map[string]int{}
	type owner struct {
		node, network string
		addr          netip.Addr
		line          int
	}
	addrOwner := map[netip.Addr]owner{}
	family := map[string]owner{} // network -> first node seen, for family checks
	for i, rn := range raw.Nodes {
		p := fmt.Sprintf("nodes[%d]", i)
		if !d.isMapping(p) {
			continue // already reported by the decoder
		}
		n := Node{Name: rn.Name, Addresses: map[string]netip.Addr{}}
		switch {
		case rn.Name == "":
			d.add(d.line(p+".name"), p+".name", "required: the node name (e.g. name: alpha)")
		case !nodeNameRe.MatchString(rn.Name):
			d.add(d.line(p+".name"), p+".name", "invalid node name %q: use a-z, 0-9 and '-' (at most 32)", rn.Name)
		default:
			if l, dup := nameLine[rn.Name]; dup {
				d.add(d.line(p+".name"), p+".name", "node %q is defined twice (first at line %d)", rn.Name, l)
			} else {
				nameLine[rn.Name] = d.line(p + ".name")
			}
		}
		label := rn.Name
		if label == "" {
			label = p
		}

		ap := p + ".addresses"
		if !d.set(ap) {
			d.add(d.line(ap), ap, "required: one address per network (%s)", strings.Join(c.Networks, ", "))
		}
		for _, nw := range sortedKeys(rn.Addresses) {
			fp := ap + "." + nw
			text := rn.Addresses[nw]
			if _, known := netLine[nw]; !known {
				if !d.ok("networks") {
					continue // the network list itself is wrong
				}
				d.add(d.keyLine(fp), fp, "unknown network %q (networks: %s)", nw, strings.Join(c.Networks, ", "))
				continue
			}
			a, err := netip.ParseAddr(text)
			if err != nil {
				hint := ""
				if _, perr := netip.ParsePrefix(text); perr == nil {
					hint = ": write the address without a /prefix"
				}
				d.add(d.line(fp), fp, "invalid IP address %q%s", text, hint)
				continue
			}
			a = a.Unmap()
			if a.IsUnspecified() || a.IsMulticast() || a.Zone() != "" {
				d.add(d.line(fp), fp, "%s cannot be a node address (unspecified, multicast or zoned)", text)
				continue
			}
			if o, dup := addrOwner[a]; dup {
				d.add(d.line(fp), fp, "address %s is also node %s's %s address (line %d)", a, o.node, o.network, o.line)
				continue
			}
			addrOwner[a] = owner{label, nw, a, d.line(fp)}
			if o, seen := family[nw]; !seen {
				family[nw] = addrOwner[a]
			} else if o.addr.Is4() != a.Is4() {
				d.add(d.line(fp), fp, "network %s mixes IPv4 and IPv6 (node %s has %s at line %d): use one family per network", nw, o.node, o.addr, o.line)
			}
			n.Addresses[nw] = a
		}
		if d.isMapping(ap) {
			for _, nw := range c.Networks {
				if _, ok := rn.Addresses[nw]; !ok {
					d.add(d.line(ap), ap, "no address for network %s: every node needs one address on every network", nw)
				}
			}
		}
		if rn.Socket != "" {
			n.Socket = absPath(base, rn.Socket)
		}
		if rn.StateDir != "" {
			n.StateDir = absPath(base, rn.StateDir)
		}
		if rn.ModulesDir != "" {
			n.ModulesDir = absPath(base, rn.ModulesDir)
		}
		n.HealthListen = rn.HealthListen
		d.checkListen(p+".health_listen", rn.HealthListen)
		c.Nodes = append(c.Nodes, n)
	}
	return c
}

func orDefault(v, def string) string {
	if v == "" {
		return def
	}
	return v
}

// checkListen validates a "host:port" listen address (host optional).
func (d *decoder) checkListen(path, v string) {
	if v == "" {
		return
	}
	host, port, err := net.SplitHostPort(v)
	if err == nil && host != "" {
		if _, aerr := netip.ParseAddr(host); aerr != nil {
			err = fmt.Errorf("host must be an IP address")
		}
	}
	if err == nil {
		if p, perr := strconv.Atoi(port); perr != nil || p < 1 || p > 65535 {
			err = fmt.Errorf("port must be 1-65535")
		}
	}
	if err != nil {
		d.add(d.line(path), path, "invalid listen address %q (use e.g. \":9453\" or \"192.0.2.11:9453\")", v)
	}
}

// Node returns the node called name.
func (c *Cluster) Node(name string) (*Node, bool) {
	for i := range c.Nodes {
		if c.Nodes[i].Name == name {
			return &c.Nodes[i], true
		}
	}
	return nil, false
}

// NodeNames lists the node names in file order.
func (c *Cluster) NodeNames() []string {
	names := make([]string, len(c.Nodes))
	for i, n := range c.Nodes {
		names[i] = n.Name
	}
	return names
}

// Resolved returns node's effective settings: its overrides where set, the
// cluster-wide values elsewhere. An unknown node gets the cluster values.
func (c *Cluster) Resolved(node string) NodeSettings {
	s := NodeSettings{Name: node, Socket: c.Socket, StateDir: c.StateDir, ModulesDir: c.ModulesDir, HealthListen: c.HealthListen}
	n, ok := c.Node(node)
	if !ok {
		return s
	}
	s.Socket = orDefault(n.Socket, s.Socket)
	s.StateDir = orDefault(n.StateDir, s.StateDir)
	s.ModulesDir = orDefault(n.ModulesDir, s.ModulesDir)
	s.HealthListen = orDefault(n.HealthListen, s.HealthListen)
	return s
}

// LocalNode finds which node this machine is: the one node with an address
// configured on a local interface.
func (c *Cluster) LocalNode() (string, error) {
	ifAddrs, err := net.InterfaceAddrs()
	if err != nil {
		return "", fmt.Errorf("cluster %s: list local addresses: %w", c.File, err)
	}
	var local []netip.Addr
	for _, a := range ifAddrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil {
			local = append(local, p.Addr().Unmap())
		}
	}
	return c.localNodeFrom(local)
}

func (c *Cluster) localNodeFrom(local []netip.Addr) (string, error) {
	var match []string
	for _, n := range c.Nodes {
		for _, a := range n.Addresses {
			if slices.Contains(local, a) {
				match = append(match, n.Name)
				break
			}
		}
	}
	switch len(match) {
	case 1:
		return match[0], nil
	case 0:
		var cand []string
		for _, n := range c.Nodes {
			var addrs []string
			for _, nw := range c.Networks {
				if a, ok := n.Addresses[nw]; ok {
					addrs = append(addrs, a.String())
				}
			}
			cand = append(cand, fmt.Sprintf("%s (%s)", n.Name, strings.Join(addrs, ", ")))
		}
		return "", fmt.Errorf("no node of %s has an address on this machine; candidates: %s; configure one of these addresses or name the node explicitly",
			c.File, strings.Join(cand, "; "))
	default:
		return "", fmt.Errorf("several nodes of %s have an address on this machine: %s; name the node explicitly",
			c.File, strings.Join(match, ", "))
	}
}
