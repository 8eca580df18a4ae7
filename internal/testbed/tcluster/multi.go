package tcluster

import (
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/tandem-ha/tandem/internal/api"
	"github.com/tandem-ha/tandem/internal/eventlog"
)

// NoDefaultPrimary as Options.DefaultPrimary writes no default_primary:
// the module stays where it runs.
const NoDefaultPrimary = "none"

// ModuleSpec is an extra mirror module of the cluster, beside Module: its
// own VIPs, replicated directories, scripts and default primary, for
// active-active tests. Its scripts get the same environment as Module's.
type ModuleSpec struct {
	Name string
	// DefaultPrimary goes to module.yaml as is; "" writes none.
	DefaultPrimary string
	// VIPs are the module's own addresses (at least one), distinct from
	// every other module's; the cluster's sampler watches them too.
	VIPs []string
	// Directories are replicated like Options.Directories; distinct from
	// every other module's.
	Directories []string
	// Port is the test service's port; default AppPort+1+its index.
	Port uint16
	// Scripts replace or add scripts in bin/; default: the test service
	// on Port (its pid in $TANDEM_STATE_DIR/app.pid, which Kill9 kills).
	Scripts map[string]string
	// Extra is appended to module.yaml.
	Extra string
}

// addModules writes the extra modules' directories (called by New, before
// the sampler starts, so that it watches their VIPs).
func (c *Cluster) addModules(o Options) {
	c.t.Helper()
	seen := map[string]bool{Module: true}
	for i, ms := range o.Modules {
		if ms.Name == "" || seen[ms.Name] || strings.ContainsAny(ms.Name, "/ ") {
			c.t.Fatalf("tcluster: extra module %d: name %q is empty, repeated or not a plain name", i, ms.Name)
		}
		seen[ms.Name] = true
		if len(ms.VIPs) == 0 {
			c.t.Fatalf("tcluster: extra module %s has no VIP: give it one of its own", ms.Name)
		}
		if ms.Port == 0 {
			ms.Port = AppPort + 1 + uint16(i)
		}
		mdir := filepath.Join(c.dir, "modules", ms.Name)
		must(c.t, os.MkdirAll(filepath.Join(mdir, "bin"), 0o755))
		var m strings.Builder
		m.WriteString("kind: mirror\nnodes: [alpha, beta]\n")
		if ms.DefaultPrimary != "" {
			fmt.Fprintf(&m, "default_primary: %s\n", ms.DefaultPrimary)
		}
		m.WriteString("vips:\n")
		for _, v := range ms.VIPs {
			fmt.Fprintf(&m, "  - address: %s\n", v)
			c.vips = append(c.vips, netip.MustParsePrefix(v))
		}
		fmt.Fprintf(&m, "scripts:\n  timeout: %s\n  stop_timeout: %s\n", o.ScriptTimeout, o.StopTimeout)
		if len(ms.Directories) > 0 {
			m.WriteString("directories:\n")
			for _, d := range ms.Directories {
				if slices.Contains(o.Directories, d) {
					c.t.Fatalf("tcluster: extra module %s replicates %s, which module %s replicates too", ms.Name, d, Module)
				}
				fmt.Fprintf(&m, "  - %s\n", d)
				for _, n := range c.nodes {
					backing := c.BackingDir(n.name, d)
					must(c.t, os.MkdirAll(backing, 0o755))
					must(c.t, n.Host.BindMount(backing, d))
				}
			}
		}
		m.WriteString(ms.Extra)
		must(c.t, os.WriteFile(filepath.Join(mdir, "module.yaml"), []byte(m.String()), 0o644))
		scripts := map[string]string{
			"start_prim": fmt.Sprintf(startPrim, c.bins.Nameserver, ms.Port),
			"stop_prim":  stopPrim,
		}
		if _, ok := ms.Scripts["start_prim"]; !ok && c.bins.Nameserver == "" {
			c.t.Fatalf("tcluster: Binaries.Nameserver is empty and module %s has no start_prim: build it (tcluster.Build) or give a start_prim", ms.Name)
		}
		for k, v := range ms.Scripts {
			scripts[k] = v
		}
		for name, body := range scripts {
			must(c.t, os.WriteFile(filepath.Join(mdir, "bin", name), []byte(body), 0o755))
		}
		c.extra = append(c.extra, ms)
	}
}

// appPids returns the pids of the modules' applications on node name (their
// app.pid files), for Kill9.
func (c *Cluster) appPids(name string) []int {
	files := []string{c.nodes[name].app}
	for _, ms := range c.extra {
		files = append(files, filepath.Join(c.ModuleStateDirOf(name, ms.Name), "app.pid"))
	}
	var pids []int
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid > 0 {
			pids = append(pids, pid)
		}
	}
	return pids
}

// Modules names every module of the cluster: Module first, then the extra
// ones in the order of Options.Modules.
func (c *Cluster) Modules() []string {
	out := []string{Module}
	for _, ms := range c.extra {
		out = append(out, ms.Name)
	}
	return out
}

// spec returns the extra module's spec (with its defaults).
func (c *Cluster) spec(module string) (ModuleSpec, bool) {
	for _, ms := range c.extra {
		if ms.Name == module {
			return ms, true
		}
	}
	return ModuleSpec{}, false
}

// ModuleVIP is the first VIP of a module (Module or an extra one).
func (c *Cluster) ModuleVIP(module string) netip.Addr {
	if ms, ok := c.spec(module); ok {
		return netip.MustParsePrefix(ms.VIPs[0]).Addr()
	}
	return c.vips[0].Addr()
}

// ModulePort is the port of a module's test service.
func (c *Cluster) ModulePort(module string) uint16 {
	if ms, ok := c.spec(module); ok {
		return ms.Port
	}
	return AppPort
}

// ModuleStatus is Status for any module of the cluster.
func (c *Cluster) ModuleStatus(node, module string) (api.ModuleStatus, error) {
	st, err := c.nodes[node].api.Status(module)
	if err != nil {
		return api.ModuleStatus{}, err
	}
	if len(st.Modules) != 1 {
		return api.ModuleStatus{}, fmt.Errorf("status of %s on %s: %d modules", module, node, len(st.Modules))
	}
	return st.Modules[0], nil
}

// WaitModuleState is WaitState for any module of the cluster.
func (c *Cluster) WaitModuleState(node, module, state string, within time.Duration) api.ModuleStatus {
	c.t.Helper()
	deadline := time.Now().Add(within)
	var last api.ModuleStatus
	var lastErr error
	for time.Now().Before(deadline) {
		last, lastErr = c.ModuleStatus(node, module)
		if lastErr == nil && last.State == state && last.Target == "" {
			return last
		}
		time.Sleep(20 * time.Millisecond)
	}
	c.t.Fatalf("module %s on %s did not reach %s within %s: last %s (target %q, reason %q) err=%v", module, node, state, within, last.State, last.Target, last.Reason, lastErr)
	return last
}

// ModuleCommand is Command for any module of the cluster.
func (c *Cluster) ModuleCommand(node, module, verb string, opts api.CommandOptions) (string, error) {
	return c.nodes[node].api.Command(module, verb, opts)
}

// ModuleStateDirOf is a module's state directory on node
// ($TANDEM_STATE_DIR of its scripts).
func (c *Cluster) ModuleStateDirOf(node, module string) string {
	return filepath.Join(c.dir, "state-"+node, "modules", module)
}

// ModuleEvents reads every event of a module's log on node.
func (c *Cluster) ModuleEvents(node, module string) ([]eventlog.Event, error) {
	return eventlog.Read(filepath.Join(c.ModuleStateDirOf(node, module), "events.log"), -1)
}

// WaitReachModule is WaitReach for any module's service (its first VIP
// and its port).
func (c *Cluster) WaitReachModule(module, want string, within time.Duration) time.Duration {
	c.t.Helper()
	vip, port := c.ModuleVIP(module), c.ModulePort(module)
	start := time.Now()
	var got string
	var err error
	for time.Since(start) < within {
		got, err = c.ReachPort(vip, port, 200*time.Millisecond)
		if err == nil && got == want {
			return time.Since(start)
		}
		time.Sleep(5 * time.Millisecond)
	}
	c.t.Fatalf("client did not reach module %s's service on %s through %s port %d within %s: last answer %q err=%v", module, want, vip, port, within, got, err)
	return 0
}

// VIPViolations is how many samples so far found a VIP on two nodes at
// once, and the first of them, so that a long test can stop at the step
// that caused it.
func (c *Cluster) VIPViolations() (int64, string) {
	first, _ := c.violation.Load().(string)
	return c.violations.Load(), first
}
