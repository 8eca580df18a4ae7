package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Module defaults and limits.
const (
	ModuleFile               = "module.yaml"
	DefaultScriptTimeout     = 60 * time.Second
	DefaultScriptStopTimeout = 30 * time.Second
	// DefaultReplicationTimeout: a secondary silent this long is failed.
	DefaultReplicationTimeout = 3 * time.Second
	// DefaultMaxLag: how far plain writes may stream ahead of the secondary.
	DefaultMaxLag     int64 = 64 << 20
	MaxModulesPerNode       = 32
	maxModuleNameLen        = 32
)

// ScriptNames are the scripts a module may have in its bin/ directory.
var ScriptNames = []string{"prestart", "start_prim", "stop_prim", "start_both", "stop_both", "start_second", "stop_second", "poststop"}

// KindMirror is the only module kind supported so far.
const KindMirror = "mirror"

// Module is one loaded module directory.
type Module struct {
	Name           string // the directory name
	Dir            string // absolute module directory
	File           string // absolute path of module.yaml
	Kind           string
	Nodes          []string
	DefaultPrimary string
	VIPs           []VIP
	Scripts        Scripts
	Directories    []string // replicated directories, absolute and clean
	Sync           string   // SyncFsync or SyncWrite
	Replication    Replication
	Checkers       []Checker // see checkers.go
	LoopLimit      LoopLimit
	Farm           *Farm // kind farm only, see farm.go
}

// VIP is a virtual IP of a module. Interface empty means "the interface
// holding an address in the same subnet". Line is its line in File.
type VIP struct {
	Address   netip.Prefix
	Interface string
	Line      int
}

// LastPrim as default_primary: no automatic failback; when both nodes
// start, the one that served last wins.
const LastPrim = "lastprim"

// Sync modes of a module's replication.
const (
	SyncFsync = "fsync" // durable calls wait for the secondary; plain writes stream ahead
	SyncWrite = "write" // every write waits for the secondary
)

// Replication holds a module's replication settings.
type Replication struct {
	Timeout time.Duration // no acknowledgement for this long: the peer is failed
	MaxLag  int64         // bytes plain writes may stream ahead of the secondary
	// ZoneSize is the granularity of the change records kept while the
	// peer is away: a changed zone is compared again when it returns.
	ZoneSize int64
	// ResyncBandwidth caps the data a resynchronisation sends, in bytes
	// per second (0: no cap; live writes are never capped).
	ResyncBandwidth int64
	// ResyncParallel is how many files a resynchronisation compares at once.
	ResyncParallel int
	// ResyncHashCache: a full compare takes the hashes of files unchanged
	// since a compare read them (same inode, size and ctime) from memory
	// instead of reading them again.
	ResyncHashCache bool
}

// Replication defaults and limits.
const (
	DefaultZoneSize       int64 = 4 << 10
	DefaultResyncParallel       = 16
	maxResyncParallel           = 64
)

// Scripts holds the script time limits.
type Scripts struct {
	Timeout     time.Duration // start scripts
	StopTimeout time.Duration // stop scripts, before the "force" retry
}

type rawModule struct {
	Kind           string         `yaml:"kind"`
	Nodes          []string       `yaml:"nodes"`
	DefaultPrimary string         `yaml:"default_primary"`
	VIPs           []rawVIP       `yaml:"vips"`
	Scripts        rawScripts     `yaml:"scripts"`
	Directories    []string       `yaml:"directories"`
	Sync           string         `yaml:"sync"`
	Replication    rawReplication `yaml:"replication"`
	Checkers       []rawChecker   `yaml:"checkers"`
	LoopLimit      rawLoopLimit   `yaml:"loop_limit"`
	// kind farm only, see farm.go
	VIP       string         `yaml:"vip"`
	Interface string         `yaml:"interface"`
	Hash      string         `yaml:"hash"`
	Weights   map[string]int `yaml:"weights"`
	Drain     string         `yaml:"drain"`
}

type rawReplication struct {
	Timeout         time.Duration `yaml:"timeout"`
	MaxLag          string        `yaml:"max_lag"`
	ZoneSize        string        `yaml:"zone_size"`
	ResyncBandwidth string        `yaml:"resync_bandwidth"`
	ResyncParallel  int           `yaml:"resync_parallel"`
	ResyncHashCache bool          `yaml:"resync_hash_cache"`
}

type rawVIP struct {
	Address   string `yaml:"address"`
	Interface string `yaml:"interface"`
}

type rawScripts struct {
	Timeout     time.Duration `yaml:"timeout"`
	StopTimeout time.Duration `yaml:"stop_timeout"`
}

var (
	moduleNameRe = regexp.MustCompile(`^[a-z0-9_-]+$`)
	ifaceNameRe  = regexp.MustCompile(`^[^\s/:]{1,15}$`)
)

// Peer returns the other node of the module, or "" if self is not one of
// its nodes.
func (m *Module) Peer(self string) string {
	if len(m.Nodes) != 2 {
		return ""
	}
	switch self {
	case m.Nodes[0]:
		return m.Nodes[1]
	case m.Nodes[1]:
		return m.Nodes[0]
	}
	return ""
}

// HasNode reports whether node runs this module.
func (m *Module) HasNode(node string) bool { return slices.Contains(m.Nodes, node) }

// ScriptPath is where script name lives (it may not exist).
func (m *Module) ScriptPath(name string) string {
	return filepath.Join(m.Dir, "bin", name)
}

// Fields returns the module definition as a sorted canonical list, for
// comparing it with the peer's copy.
func (m *Module) Fields() []Field {
	nodes := slices.Clone(m.Nodes)
	slices.Sort(nodes)
	f := []Field{
		{"name", m.Name},
		{"kind", m.Kind},
		{"nodes", strings.Join(nodes, ",")},
		{"default_primary", m.DefaultPrimary},
		{"scripts.timeout", m.Scripts.Timeout.String()},
		{"scripts.stop_timeout", m.Scripts.StopTimeout.String()},
	}
	f = append(f, Field{"sync", m.Sync}, Field{"replication.timeout", m.Replication.Timeout.String()},
		Field{"replication.max_lag", strconv.FormatInt(m.Replication.MaxLag, 10)})
	for i, d := range m.Directories {
		f = append(f, Field{fmt.Sprintf("directories[%d]", i), d})
	}
	for i, v := range m.VIPs {
		p := fmt.Sprintf("vips[%d].", i)
		f = append(f, Field{p + "address", v.Address.String()})
		if v.Interface != "" {
			f = append(f, Field{p + "interface", v.Interface})
		}
	}
	f = append(f, m.checkerFields()...)
	f = append(f, m.farmFields()...)
	return sortFields(f)
}

// LoadModule reads and validates the module in dir against cluster c. With
// a nil c, the checks that need the cluster (node names, addresses) are
// skipped.
func LoadModule(dir string, c *Cluster) (*Module, error) {
	m, errs := loadModule(dir, c)
	if err := joinErrors(errs); err != nil {
		return nil, err
	}
	return m, nil
}

// loadModule returns whatever could be understood of the module (nil if
// module.yaml could not be parsed) and every problem found.
func loadModule(dir string, c *Cluster) (*Module, []*Error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, []*Error{{File: dir, Msg: fmt.Sprintf("cannot resolve path: %v", err)}}
	}
	var errs []*Error
	name := filepath.Base(abs)
	switch {
	case len(name) > maxModuleNameLen:
		errs = append(errs, errorf(abs, 0, "", "module name %q is longer than %d characters: rename the directory", name, maxModuleNameLen))
	case !moduleNameRe.MatchString(name):
		errs = append(errs, errorf(abs, 0, "", "module name %q is invalid: the directory name must use only a-z, 0-9, '_' and '-'", name))
	}
	file := filepath.Join(abs, ModuleFile)
	src, err := os.ReadFile(file)
	if err != nil {
		msg := fmt.Sprintf("cannot read: %v", unwrapPathError(err))
		if errors.Is(err, fs.ErrNotExist) {
			msg = "missing: every module directory needs one (tandem module new creates a module from a template)"
		}
		return nil, append(errs, &Error{File: file, Msg: msg})
	}
	m, perrs := parseModule(file, src, c)
	errs = append(errs, perrs...)
	if m == nil {
		return nil, errs
	}
	m.Name, m.Dir = name, abs
	errs = append(errs, checkScripts(m)...)
	errs = append(errs, checkCommands(m)...)
	return m, errs
}

// parseModule decodes and validates the text of a module file.
func parseModule(file string, src []byte, c *Cluster) (*Module, []*Error) {
	d := newDecoder(file)
	root, ok := d.parse(src)
	if !ok {
		return nil, d.errs
	}
	var raw rawModule
	d.decode(root, "", reflect.ValueOf(&raw).Elem())
	m := d.validateModule(&raw, c)
	m.File = file
	return m, d.errs
}

func (d *decoder) validateModule(raw *rawModule, c *Cluster) *Module {
	m := &Module{Kind: raw.Kind}
	switch {
	case d.bad["kind"]:
	case raw.Kind == "":
		d.add(d.line("kind"), "kind", "required: the module kind (kind: mirror or kind: farm)")
	case raw.Kind == KindFarm:
	case raw.Kind != KindMirror:
		d.add(d.line("kind"), "kind", "unknown kind %q (supported: mirror, farm)", raw.Kind)
	}

	clusterNodes := "(none)"
	if c != nil {
		clusterNodes = strings.Join(c.NodeNames(), ", ")
	}
	if !d.set("nodes") {
		d.add(d.line("nodes"), "nodes", "required: the 2 nodes that run this module (e.g. nodes: [alpha, beta])")
	} else if raw.Kind != KindFarm && len(raw.Nodes) != 2 && d.nodes["nodes"].Kind == yaml.SequenceNode {
		d.add(d.line("nodes"), "nodes", "a mirror module runs on exactly 2 nodes, found %d", len(raw.Nodes))
	}
	for i, n := range raw.Nodes {
		p := fmt.Sprintf("nodes[%d]", i)
		switch {
		case n == "":
			d.add(d.line(p), p, "empty node name")
		case slices.Contains(raw.Nodes[:i], n):
			d.add(d.line(p), p, "node %q listed twice: a %s needs distinct nodes", n, map[bool]string{true: "farm", false: "mirror"}[raw.Kind == KindFarm])
		case c != nil && !hasNode(c, n):
			d.add(d.line(p), p, "node %q is not in the cluster file %s (nodes: %s)", n, c.File, clusterNodes)
		default:
			m.Nodes = append(m.Nodes, n)
		}
	}

	if d.set("default_primary") && raw.DefaultPrimary != "" {
		if raw.DefaultPrimary != LastPrim && !slices.Contains(raw.Nodes, raw.DefaultPrimary) {
			d.add(d.line("default_primary"), "default_primary", "%q is not one of this module's nodes (%s), nor %q (the last primary starts first)", raw.DefaultPrimary, strings.Join(raw.Nodes, ", "), LastPrim)
		} else {
			m.DefaultPrimary = raw.DefaultPrimary
		}
	}

	first := map[netip.Addr]int{}
	for i, rv := range raw.VIPs {
		p := fmt.Sprintf("vips[%d]", i)
		if !d.isMapping(p) {
			continue // already reported by the decoder
		}
		ap := p + ".address"
		if rv.Address == "" {
			d.add(d.line(ap), ap, "required: the virtual IP with its prefix length (e.g. address: 192.0.2.100/24)")
			continue
		}
		pfx, err := netip.ParsePrefix(rv.Address)
		if err != nil {
			if a, aerr := netip.ParseAddr(rv.Address); aerr == nil {
				bits := 24
				if a.Is6() {
					bits = 64
				}
				d.add(d.line(ap), ap, "%q has no prefix length: write it as CIDR, e.g. %s/%d", rv.Address, a, bits)
			} else {
				d.add(d.line(ap), ap, "invalid address %q (use CIDR, e.g. 192.0.2.100/24 or 2001:db8::100/64)", rv.Address)
			}
			continue
		}
		a := pfx.Addr()
		if a.Is4In6() {
			if pfx.Bits() < 96 {
				d.add(d.line(ap), ap, "%s: write an IPv4 virtual IP in IPv4 form, e.g. %s/24", rv.Address, a.Unmap())
				continue
			}
			pfx = netip.PrefixFrom(a.Unmap(), pfx.Bits()-96)
			a = pfx.Addr()
		}
		if a.IsUnspecified() || a.IsMulticast() || a.IsLoopback() || a.Zone() != "" {
			d.add(d.line(ap), ap, "%s cannot be a virtual IP (unspecified, multicast, loopback or zoned)", rv.Address)
			continue
		}
		if l, dup := first[a]; dup {
			d.add(d.line(ap), ap, "virtual IP %s is already listed at line %d", a, l)
			continue
		}
		first[a] = d.line(ap)
		if c != nil {
			if node, nw, ok := c.addrOwner(a); ok {
				d.add(d.line(ap), ap, "%s is node %s's %s address in %s: a virtual IP must be a free address", a, node, nw, c.File)
				continue
			}
		}
		ip := p + ".interface"
		if rv.Interface != "" && !ifaceNameRe.MatchString(rv.Interface) {
			d.add(d.line(ip), ip, "invalid interface name %q", rv.Interface)
		}
		m.VIPs = append(m.VIPs, VIP{Address: pfx, Interface: rv.Interface, Line: d.line(ap)})
	}

	m.Scripts = Scripts{Timeout: DefaultScriptTimeout, StopTimeout: DefaultScriptStopTimeout}
	if raw.Scripts.Timeout > 0 {
		m.Scripts.Timeout = raw.Scripts.Timeout
	}
	if raw.Scripts.StopTimeout > 0 {
		m.Scripts.StopTimeout = raw.Scripts.StopTimeout
	}
	d.validateReplication(raw, m)
	d.validateCheckers(raw, m)
	d.validateFarm(raw, m, c)
	return m
}

// validateReplication checks directories, sync and replication.
func (d *decoder) validateReplication(raw *rawModule, m *Module) {
	for i, dir := range raw.Directories {
		p := fmt.Sprintf("directories[%d]", i)
		clean := filepath.Clean(dir)
		switch {
		case dir == "":
			d.add(d.line(p), p, "empty directory")
			continue
		case !filepath.IsAbs(dir):
			d.add(d.line(p), p, "%q is not absolute: write the full path, e.g. /var/lib/app", dir)
			continue
		case clean == "/" || forbiddenDir(clean):
			d.add(d.line(p), p, "%s cannot be replicated (system or runtime directory)", clean)
			continue
		}
		for j, other := range m.Directories {
			if other == clean || strings.HasPrefix(clean+"/", other+"/") || strings.HasPrefix(other+"/", clean+"/") {
				d.add(d.line(p), p, "%s overlaps directories[%d] (%s): list each tree once", clean, j, other)
				clean = ""
				break
			}
		}
		if clean != "" {
			m.Directories = append(m.Directories, clean)
		}
	}
	m.Sync = SyncFsync
	switch raw.Sync {
	case "", SyncFsync:
	case SyncWrite:
		m.Sync = SyncWrite
	default:
		d.add(d.line("sync"), "sync", "unknown mode %q: fsync (durable calls wait for the secondary) or write (every write waits)", raw.Sync)
	}
	m.Replication = Replication{Timeout: DefaultReplicationTimeout, MaxLag: DefaultMaxLag,
		ZoneSize: DefaultZoneSize, ResyncParallel: DefaultResyncParallel, ResyncHashCache: true}
	if d.set("replication.resync_hash_cache") {
		m.Replication.ResyncHashCache = raw.Replication.ResyncHashCache
	}
	if raw.Replication.ZoneSize != "" {
		n, err := ParseSize(raw.Replication.ZoneSize)
		switch {
		case err != nil:
			d.add(d.line("replication.zone_size"), "replication.zone_size", "%v", err)
		case n < 4<<10 || n > 1<<30 || n&(n-1) != 0:
			d.add(d.line("replication.zone_size"), "replication.zone_size", "%s: a power of two between 4KiB and 1GiB (default 4KiB)", raw.Replication.ZoneSize)
		default:
			m.Replication.ZoneSize = n
		}
	}
	if raw.Replication.ResyncBandwidth != "" {
		n, err := ParseSize(raw.Replication.ResyncBandwidth)
		switch {
		case err != nil:
			d.add(d.line("replication.resync_bandwidth"), "replication.resync_bandwidth", "%v (bytes per second, e.g. 100MiB; 0: no cap)", err)
		case n != 0 && n < 1<<20:
			d.add(d.line("replication.resync_bandwidth"), "replication.resync_bandwidth", "%s per second is too small: at least 1MiB, or 0 for no cap", raw.Replication.ResyncBandwidth)
		default:
			m.Replication.ResyncBandwidth = n
		}
	}
	switch p := raw.Replication.ResyncParallel; {
	case d.set("replication.resync_parallel") && (p < 1 || p > maxResyncParallel):
		d.add(d.line("replication.resync_parallel"), "replication.resync_parallel", "%d files at once: between 1 and %d (default %d)", p, maxResyncParallel, DefaultResyncParallel)
	case p > 0:
		m.Replication.ResyncParallel = p
	}
	if raw.Replication.Timeout > 0 {
		m.Replication.Timeout = raw.Replication.Timeout
	}
	if raw.Replication.MaxLag != "" {
		n, err := ParseSize(raw.Replication.MaxLag)
		switch {
		case err != nil:
			d.add(d.line("replication.max_lag"), "replication.max_lag", "%v", err)
		case n < 1<<20:
			d.add(d.line("replication.max_lag"), "replication.max_lag", "%s is too small: at least 1MiB", raw.Replication.MaxLag)
		default:
			m.Replication.MaxLag = n
		}
	}
}

// forbiddenDir reports directories that must never be replicated.
func forbiddenDir(dir string) bool {
	for _, f := range []string{"/proc", "/sys", "/dev", "/run", "/boot", "/etc", "/usr", "/bin", "/sbin", "/lib", "/lib64", "/var/lib/tandem"} {
		if dir == f || (f != "/etc" && f != "/run" && strings.HasPrefix(dir, f+"/")) {
			return true
		}
	}
	return dir == "/run/tandem" || strings.HasPrefix(dir, "/run/tandem/")
}

// ParseSize reads "64MiB", "1GiB", "512KiB", "1048576" (bytes).
func ParseSize(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"B", 1}}
	num, mult := strings.TrimSpace(s), int64(1)
	for _, u := range units {
		if strings.HasSuffix(num, u.suffix) {
			num, mult = strings.TrimSpace(strings.TrimSuffix(num, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > (1<<50)/mult {
		return 0, fmt.Errorf("invalid size %q (use e.g. 64MiB, 1GiB or a number of bytes)", s)
	}
	return n * mult, nil
}

func hasNode(c *Cluster, name string) bool {
	_, ok := c.Node(name)
	return ok
}

func (c *Cluster) addrOwner(a netip.Addr) (node, network string, ok bool) {
	for _, n := range c.Nodes {
		for nw, na := range n.Addresses {
			if na == a {
				return n.Name, nw, true
			}
		}
	}
	return "", "", false
}

// checkScripts verifies that every known script present in bin/ can be run.
func checkScripts(m *Module) []*Error {
	var errs []*Error
	for _, s := range ScriptNames {
		p := m.ScriptPath(s)
		st, err := os.Stat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			if _, lerr := os.Lstat(p); lerr == nil {
				errs = append(errs, &Error{File: p, Msg: "dangling symbolic link"})
			}
		case err != nil:
			errs = append(errs, &Error{File: p, Msg: fmt.Sprintf("cannot check: %v", unwrapPathError(err))})
		case !st.Mode().IsRegular():
			errs = append(errs, &Error{File: p, Msg: "not a regular file (a script must be a file)"})
		case st.Mode().Perm()&0o111 == 0:
			errs = append(errs, &Error{File: p, Msg: "not executable (chmod +x it)"})
		}
	}
	return errs
}

type loaded struct {
	dir  string
	m    *Module // nil if module.yaml could not be parsed
	errs []*Error
}

// loadDir loads every module directory inside modulesDir, sorted by name.
// Hidden entries and plain files are ignored.
func loadDir(modulesDir string, c *Cluster) ([]*loaded, *Error) {
	entries, err := os.ReadDir(modulesDir)
	if err != nil {
		msg := fmt.Sprintf("cannot read the modules directory: %v", unwrapPathError(err))
		if errors.Is(err, fs.ErrNotExist) {
			msg = fmt.Sprintf("modules directory does not exist: create it (mkdir -p %s) or set modules_dir in %s", modulesDir, c.File)
		}
		return nil, &Error{File: modulesDir, Msg: msg}
	}
	var out []*loaded
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), ".") {
			continue
		}
		dir := filepath.Join(modulesDir, e.Name())
		if st, err := os.Stat(dir); err != nil || !st.IsDir() {
			continue
		}
		m, errs := loadModule(dir, c)
		out = append(out, &loaded{dir: dir, m: m, errs: errs})
	}
	return out, nil
}

// vipConflicts reports VIPs used by two different modules; both are marked
// as failed.
func vipConflicts(set []*loaded) {
	type use struct {
		l *loaded
		v VIP
		i int
	}
	seen := map[netip.Addr]use{}
	for _, l := range set {
		if l.m == nil {
			continue
		}
		for i, v := range l.m.VIPs {
			a := v.Address.Addr()
			u, dup := seen[a]
			if !dup {
				seen[a] = use{l, v, i}
				continue
			}
			if u.l.m.Name == l.m.Name {
				continue // the same module seen in two nodes' directories
			}
			l.errs = append(l.errs, errorf(l.m.File, v.Line, fmt.Sprintf("vips[%d].address", i),
				"virtual IP %s is also used by module %s (%s:%d)", a, u.l.m.Name, u.l.m.File, u.v.Line))
			u.l.errs = append(u.l.errs, errorf(u.l.m.File, u.v.Line, fmt.Sprintf("vips[%d].address", u.i),
				"virtual IP %s is also used by module %s (%s:%d)", a, l.m.Name, l.m.File, v.Line))
		}
	}
}

// LoadModules loads the modules of node: every module directory in the
// node's modules_dir whose nodes include it, sorted by name. Every problem
// of every module in the directory is returned, joined; the returned slice
// then holds only the modules of node that have no problem, so a caller may
// choose to run those.
func LoadModules(c *Cluster, node string) ([]*Module, error) {
	dir := c.Resolved(node).ModulesDir
	set, derr := loadDir(dir, c)
	if derr != nil {
		return nil, derr
	}
	vipConflicts(set)
	var errs []*Error
	var mods []*Module
	count := 0
	for _, l := range set {
		errs = append(errs, l.errs...)
		if l.m == nil || !l.m.HasNode(node) {
			continue
		}
		count++
		if len(l.errs) == 0 {
			mods = append(mods, l.m)
		}
	}
	if count > MaxModulesPerNode {
		errs = append(errs, &Error{File: dir, Msg: fmt.Sprintf("%d modules include node %s: at most %d run on one node", count, node, MaxModulesPerNode)})
	}
	return mods, joinErrors(errs)
}

// CheckAll validates every module in every node's modules directory (they
// differ only when nodes override modules_dir, e.g. several nodes on one
// test machine): each module on its own, VIPs shared between modules, the
// per-node module limit, and copies of one module that differ between
// directories. It is what "tandem module check" reports.
func CheckAll(c *Cluster) error {
	var errs []*Error
	var all []*loaded
	byDir := map[string][]*loaded{}
	for _, n := range c.Nodes {
		dir := c.Resolved(n.Name).ModulesDir
		if _, done := byDir[dir]; done {
			continue
		}
		set, derr := loadDir(dir, c)
		if derr != nil {
			errs = append(errs, derr)
		}
		byDir[dir] = set
		all = append(all, set...)
	}
	vipConflicts(all)
	first := map[string]*loaded{}
	for _, l := range all {
		errs = append(errs, l.errs...)
		if l.m == nil {
			continue
		}
		f, ok := first[l.m.Name]
		if !ok {
			first[l.m.Name] = l
			continue
		}
		if diff := diffFields(l.m.Fields(), f.m.Fields(), "here", "in "+f.m.File); len(diff) > 0 {
			errs = append(errs, &Error{File: l.m.File, Msg: fmt.Sprintf("differs from the copy in %s: %s", f.m.File, strings.Join(diff, "; "))})
		}
	}
	for _, n := range c.Nodes {
		dir := c.Resolved(n.Name).ModulesDir
		count := 0
		for _, l := range byDir[dir] {
			if l.m != nil && l.m.HasNode(n.Name) {
				count++
			}
		}
		if count > MaxModulesPerNode {
			errs = append(errs, &Error{File: dir, Msg: fmt.Sprintf("%d modules include node %s: at most %d run on one node", count, n.Name, MaxModulesPerNode)})
		}
	}
	return joinErrors(errs)
}
