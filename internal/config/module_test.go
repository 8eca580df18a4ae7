package config

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// testEnv is a cluster file with a modules directory next to it.
type testEnv struct {
	c    *Cluster
	mods string
}

func newEnv(t *testing.T) *testEnv {
	t.Helper()
	dir := t.TempDir()
	file := filepath.Join(dir, "cluster.yaml")
	writeFile(t, file, baseCluster+"modules_dir: modules\n", 0o644)
	c, err := LoadCluster(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(c.ModulesDir, 0o755); err != nil {
		t.Fatal(err)
	}
	return &testEnv{c: c, mods: c.ModulesDir}
}

// module writes modules/<name>/module.yaml and returns its path.
func (e *testEnv) module(t *testing.T, name, yaml string) string {
	t.Helper()
	p := filepath.Join(e.mods, name, ModuleFile)
	writeFile(t, p, yaml, 0o644)
	return p
}

const baseModule = `kind: mirror
nodes: [alpha, beta]
`

func TestLoadModuleValid(t *testing.T) {
	e := newEnv(t)
	file := e.module(t, "web", `kind: mirror
nodes: [alpha, beta]
default_primary: beta
vips:
  - address: 192.0.2.100/24
    interface: eth0
  - address: 2001:db8::100/64
scripts:
  timeout: 90s
  stop_timeout: 10s
`)
	writeFile(t, filepath.Join(e.mods, "web", "bin", "start_prim"), "#!/bin/sh\n", 0o755)
	writeFile(t, filepath.Join(e.mods, "web", "bin", "README"), "notes\n", 0o644)
	m, err := LoadModule(filepath.Join(e.mods, "web"), e.c)
	if err != nil {
		t.Fatal(err)
	}
	want := &Module{
		Name: "web", Dir: filepath.Dir(file), File: file, Kind: "mirror",
		Nodes: []string{"alpha", "beta"}, DefaultPrimary: "beta",
		VIPs: []VIP{
			{Address: netip.MustParsePrefix("192.0.2.100/24"), Interface: "eth0", Line: 5},
			{Address: netip.MustParsePrefix("2001:db8::100/64"), Line: 7},
		},
		Scripts:     Scripts{Timeout: 90 * time.Second, StopTimeout: 10 * time.Second},
		Sync:        SyncFsync,
		Replication: Replication{Timeout: DefaultReplicationTimeout, MaxLag: DefaultMaxLag, ZoneSize: DefaultZoneSize, ResyncParallel: DefaultResyncParallel, ResyncHashCache: true},
	}
	if fmt.Sprint(m) != fmt.Sprint(want) {
		t.Errorf("got  %+v\nwant %+v", m, want)
	}
	if m.Peer("alpha") != "beta" || m.Peer("beta") != "alpha" || m.Peer("gamma") != "" {
		t.Error("Peer wrong")
	}
	if m.ScriptPath("stop_prim") != filepath.Join(e.mods, "web", "bin", "stop_prim") {
		t.Errorf("ScriptPath = %s", m.ScriptPath("stop_prim"))
	}
}

func TestLoadModuleDefaults(t *testing.T) {
	e := newEnv(t)
	e.module(t, "db", baseModule)
	m, err := LoadModule(filepath.Join(e.mods, "db"), e.c)
	if err != nil {
		t.Fatal(err)
	}
	if m.Scripts != (Scripts{Timeout: 60 * time.Second, StopTimeout: 30 * time.Second}) || m.DefaultPrimary != "" || len(m.VIPs) != 0 {
		t.Errorf("defaults: %+v", m)
	}
}

func TestLoadModuleErrors(t *testing.T) {
	cases := []struct {
		name string
		text string
		want []wantErr
	}{
		{"unknown top-level field", baseModule + "vipz: 192.0.2.1/24\n",
			[]wantErr{{3, "vipz", `unknown field; did you mean "vips"?`}}},
		{"unknown nested field", baseModule + "scripts:\n  timout: 5s\n",
			[]wantErr{{4, "scripts.timout", `did you mean "timeout"?`}}},
		{"unknown field in list item", baseModule + "vips:\n  - adress: 192.0.2.1/24\n",
			[]wantErr{{4, "vips[0].adress", "unknown field"}, {4, "vips[0].address", "required"}}},
		{"wrong type", "kind: mirror\nnodes: alpha\n",
			[]wantErr{{2, "nodes", "expected a list"}}},
		{"bad duration", baseModule + "scripts:\n  stop_timeout: 10 seconds\n",
			[]wantErr{{4, "scripts.stop_timeout", `invalid duration "10 seconds" (use e.g. 500ms, 3s)`}}},
		{"negative duration", baseModule + "scripts: {timeout: -1s}\n",
			[]wantErr{{3, "scripts.timeout", "greater than zero"}}},
		{"kind of wrong type", "kind: [mirror]\nnodes: [alpha, beta]\n",
			[]wantErr{{1, "kind", "expected a single value"}}},
		{"kind missing", "nodes: [alpha, beta]\n",
			[]wantErr{{1, "kind", "required"}}},
		{"kind farm without vip", "kind: farm\nnodes: [alpha, beta]\n",
			[]wantErr{{1, "vip", "required: the farm's virtual IP"}}},
		{"kind unknown", "kind: mirorr\nnodes: [alpha, beta]\n",
			[]wantErr{{1, "kind", `unknown kind "mirorr"`}}},
		{"nodes missing", "kind: mirror\n",
			[]wantErr{{1, "nodes", "required"}}},
		{"three nodes", "kind: mirror\nnodes: [alpha, beta, alpha]\n",
			[]wantErr{{2, "nodes", "exactly 2 nodes, found 3"}, {2, "nodes[2]", `"alpha" listed twice`}}},
		{"node not in cluster", "kind: mirror\nnodes:\n  - alpha\n  - gamma\n",
			[]wantErr{{4, "nodes[1]", `node "gamma" is not in the cluster file`}}},
		{"default_primary not in nodes", baseModule + "default_primary: gamma\n",
			[]wantErr{{3, "default_primary", `"gamma" is not one of this module's nodes (alpha, beta)`}}},
		{"VIP without prefix", baseModule + "vips:\n  - address: 192.0.2.100\n",
			[]wantErr{{4, "vips[0].address", "write it as CIDR, e.g. 192.0.2.100/24"}}},
		{"VIP as a plain string", baseModule + "vips:\n  - 192.0.2.100/24\n",
			[]wantErr{{4, "vips[0]", `expected a mapping (key: value), got "192.0.2.100/24"`}}},
		{"VIP invalid", baseModule + "vips:\n  - address: 192.0.2.500/24\n",
			[]wantErr{{4, "vips[0].address", `invalid address "192.0.2.500/24"`}}},
		{"VIP IPv4-mapped short prefix", baseModule + "vips:\n  - address: \"::ffff:192.0.2.1/64\"\n",
			[]wantErr{{4, "vips[0].address", "write an IPv4 virtual IP in IPv4 form"}}},
		{"duplicate VIP in module", baseModule + "vips:\n  - address: 192.0.2.100/24\n  - address: 192.0.2.100/25\n",
			[]wantErr{{5, "vips[1].address", "virtual IP 192.0.2.100 is already listed at line 4"}}},
		{"VIP is a node address", baseModule + "vips:\n  - address: 192.0.2.11/24\n",
			[]wantErr{{4, "vips[0].address", "is node alpha's lan address"}}},
		{"bad interface", baseModule + "vips:\n  - address: 192.0.2.100/24\n    interface: eth0/1\n",
			[]wantErr{{5, "vips[0].interface", "invalid interface name"}}},
		{"syntax error", "kind: mirror\nnodes: [alpha, beta\n",
			[]wantErr{{2, "", "invalid YAML"}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			file := e.module(t, "web", tc.text)
			_, err := LoadModule(filepath.Dir(file), e.c)
			checkErrors(t, err, file, tc.want)
		})
	}
}

func TestModuleScriptChecks(t *testing.T) {
	e := newEnv(t)
	e.module(t, "web", baseModule)
	bin := filepath.Join(e.mods, "web", "bin")
	writeFile(t, filepath.Join(bin, "start_prim"), "#!/bin/sh\n", 0o644)
	writeFile(t, filepath.Join(bin, "stop_prim"), "#!/bin/sh\n", 0o700)
	writeFile(t, filepath.Join(bin, "whatever"), "not a script\n", 0o644) // unknown files are fine
	if err := os.MkdirAll(filepath.Join(bin, "poststop"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("nowhere", filepath.Join(bin, "prestart")); err != nil {
		t.Fatal(err)
	}
	_, err := LoadModule(filepath.Join(e.mods, "web"), e.c)
	if err == nil {
		t.Fatal("no error")
	}
	got := err.Error()
	for _, want := range []string{
		filepath.Join(bin, "start_prim") + ": not executable (chmod +x it)",
		filepath.Join(bin, "poststop") + ": not a regular file",
		filepath.Join(bin, "prestart") + ": dangling symbolic link",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("missing %q in:\n%s", want, got)
		}
	}
	if strings.Contains(got, "stop_prim") || strings.Contains(got, "whatever") {
		t.Errorf("unexpected error in:\n%s", got)
	}
	if n := len(Errors(err)); n != 3 {
		t.Errorf("%d errors, want 3", n)
	}
}

func TestModuleDirProblems(t *testing.T) {
	e := newEnv(t)
	dir := filepath.Join(e.mods, "empty")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := LoadModule(dir, e.c)
	if err == nil || !strings.Contains(err.Error(), filepath.Join(dir, ModuleFile)+": missing") {
		t.Errorf("missing module.yaml: %v", err)
	}
	bad := filepath.Dir(e.module(t, "Web.App", baseModule))
	_, err = LoadModule(bad, e.c)
	if err == nil || !strings.Contains(err.Error(), bad+`: module name "Web.App" is invalid`) {
		t.Errorf("bad name: %v", err)
	}
	long := filepath.Dir(e.module(t, strings.Repeat("a", 33), baseModule))
	if _, err = LoadModule(long, e.c); err == nil || !strings.Contains(err.Error(), "longer than 32") {
		t.Errorf("long name: %v", err)
	}
}

func TestLoadModules(t *testing.T) {
	e := newEnv(t)
	e.module(t, "web", baseModule)
	e.module(t, "db", baseModule+"default_primary: beta\n")
	writeFile(t, filepath.Join(e.mods, "README"), "a stray file is ignored\n", 0o644)
	if err := os.MkdirAll(filepath.Join(e.mods, ".git"), 0o755); err != nil {
		t.Fatal(err)
	}
	mods, err := LoadModules(e.c, "alpha")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, m := range mods {
		names = append(names, m.Name)
	}
	if !slices.Equal(names, []string{"db", "web"}) {
		t.Errorf("modules = %v", names)
	}

	// A module of other nodes is not returned.
	file := filepath.Join(t.TempDir(), "cluster.yaml")
	writeFile(t, file, baseCluster+"  - name: gamma\n    addresses: {lan: 192.0.2.13, backup: 198.51.100.13}\nmodules_dir: "+e.mods+"\n", 0o644)
	c3, err := LoadCluster(file)
	if err != nil {
		t.Fatal(err)
	}
	e.module(t, "other", "kind: mirror\nnodes: [beta, gamma]\n")
	mods, err = LoadModules(c3, "alpha")
	if err != nil || len(mods) != 2 {
		t.Errorf("alpha: %d modules, err %v", len(mods), err)
	}
	mods, err = LoadModules(c3, "gamma")
	if err != nil || len(mods) != 1 || mods[0].Name != "other" {
		t.Errorf("gamma: %v, err %v", mods, err)
	}
}

func TestLoadModulesVIPAcrossModules(t *testing.T) {
	e := newEnv(t)
	fa := e.module(t, "a", baseModule+"vips:\n  - address: 192.0.2.50/24\n")
	fb := e.module(t, "b", baseModule+"vips:\n  - address: 198.51.100.50/24\n  - address: 192.0.2.50/24\n")
	e.module(t, "c", baseModule)
	mods, err := LoadModules(e.c, "alpha")
	if err == nil {
		t.Fatal("no error")
	}
	want := fmt.Sprintf("%s:5: vips[1].address: virtual IP 192.0.2.50 is also used by module a (%s:4)", fb, fa)
	if !strings.Contains(err.Error(), want) {
		t.Errorf("missing %q in:\n%s", want, err)
	}
	want = fmt.Sprintf("%s:4: vips[0].address: virtual IP 192.0.2.50 is also used by module b (%s:5)", fa, fb)
	if !strings.Contains(err.Error(), want) {
		t.Errorf("missing %q in:\n%s", want, err)
	}
	// The clean module is still returned so the agent can run it.
	if len(mods) != 1 || mods[0].Name != "c" {
		t.Errorf("mods = %v", mods)
	}
}

func TestLoadModulesLimit(t *testing.T) {
	e := newEnv(t)
	for i := range MaxModulesPerNode + 1 {
		e.module(t, fmt.Sprintf("m%02d", i), baseModule)
	}
	_, err := LoadModules(e.c, "alpha")
	if err == nil || !strings.Contains(err.Error(), "33 modules include node alpha: at most 32") {
		t.Errorf("err = %v", err)
	}
}

func TestLoadModulesMissingDir(t *testing.T) {
	e := newEnv(t)
	if err := os.RemoveAll(e.mods); err != nil {
		t.Fatal(err)
	}
	_, err := LoadModules(e.c, "alpha")
	if err == nil || !strings.Contains(err.Error(), "modules directory does not exist") {
		t.Errorf("err = %v", err)
	}
}

func TestCheckAll(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "cluster.yaml")
	writeFile(t, file, strings.NewReplacer(
		"name: alpha\n", "name: alpha\n    modules_dir: a\n",
		"name: beta\n", "name: beta\n    modules_dir: b\n").Replace(baseCluster), 0o644)
	c, err := LoadCluster(file)
	if err != nil {
		t.Fatal(err)
	}
	put := func(node, mod, text string) string {
		p := filepath.Join(dir, node, mod, ModuleFile)
		writeFile(t, p, text, 0o644)
		return p
	}
	put("a", "web", baseModule+"vips: [{address: 192.0.2.100/24}]\n")
	put("b", "web", baseModule+"vips: [{address: 192.0.2.100/24}]\n")
	if err := CheckAll(c); err != nil {
		t.Fatalf("identical copies: %v", err)
	}
	bdb := put("b", "db", baseModule+"default_primary: beta\n")
	adb := put("a", "db", baseModule+"default_primary: alpha\n")
	bad := put("b", "bad", "kind: farm\nnodes: [alpha, beta]\n")
	err = CheckAll(c)
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{
		bdb + ": differs from the copy in " + adb + ": default_primary: here beta, in " + adb + " alpha",
		bad + ":1: vip: required: the farm's virtual IP",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in:\n%s", want, err)
		}
	}
	var ce *Error
	if !errors.As(err, &ce) {
		t.Error("not a *config.Error")
	}
}

func TestModuleFields(t *testing.T) {
	e := newEnv(t)
	e.module(t, "a", "kind: mirror\nnodes: [beta, alpha]\nvips: [{address: 192.0.2.100/24, interface: eth1}]\n")
	e.module(t, "b", "kind: mirror\nnodes: [alpha, beta]\nvips: [{address: 192.0.2.100/24}]\nscripts: {timeout: 1m}\n")
	ma, err := LoadModule(filepath.Join(e.mods, "a"), e.c)
	if err != nil {
		t.Fatal(err)
	}
	mb, err := LoadModule(filepath.Join(e.mods, "b"), e.c)
	if err != nil {
		t.Fatal(err)
	}
	got := DiffFields(ma.Fields(), mb.Fields())
	want := []string{
		"name: here a, on peer b",
		"vips[0].interface: here eth1, on peer (absent)",
	}
	if !slices.Equal(got, want) {
		t.Errorf("diff = %q, want %q", got, want)
	}
}

func FuzzParseModule(f *testing.F) {
	c, err := parseCluster("/c.yaml", []byte(baseCluster))
	if err != nil {
		f.Fatal(err)
	}
	f.Add([]byte(baseModule + "default_primary: alpha\nvips: [{address: 192.0.2.1/24, interface: eth0}]\nscripts: {timeout: 1s}\n"))
	f.Add([]byte("kind: farm\nnodes: [a, a, b]\nvips: [1, {address: \"::ffff:192.0.2.1/120\"}]\n"))
	f.Fuzz(func(t *testing.T, src []byte) {
		m, errs := parseModule("/m/module.yaml", src, c)
		if m != nil {
			_ = Digest(m.Fields())
		}
		for _, e := range errs {
			if e.File != "/m/module.yaml" {
				t.Fatalf("error names %q", e.File)
			}
		}
	})
}

func TestModuleReplicationFields(t *testing.T) {
	e := newEnv(t)
	file := e.module(t, "db", `kind: mirror
nodes: [alpha, beta]
directories:
  - /srv/db
  - /srv/db/wal
  - relative/dir
  - /proc/x
sync: sometimes
replication:
  timeout: 2s
  max_lag: 12XB
  zone_size: 48KiB
  resync_bandwidth: 10KiB
  resync_parallel: 0
  resync_hash_cache: yes
`)
	_, err := LoadModule(filepath.Dir(file), e.c)
	for _, want := range []string{
		file + ":5: directories[1]: /srv/db/wal overlaps directories[0]",
		file + ":6: directories[2]: \"relative/dir\" is not absolute",
		file + ":7: directories[3]: /proc/x cannot be replicated",
		file + ":8: sync: unknown mode \"sometimes\"",
		file + ":11: replication.max_lag: invalid size \"12XB\"",
		file + ":12: replication.zone_size: 48KiB: a power of two",
		file + ":13: replication.resync_bandwidth: 10KiB per second is too small",
		file + ":14: replication.resync_parallel: 0 files at once",
		file + ":15: replication.resync_hash_cache: expected true or false, got \"yes\"",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("missing error %q in:\n%v", want, err)
		}
	}
	file = e.module(t, "db2", `kind: mirror
nodes: [alpha, beta]
directories: [/srv/db2/]
sync: write
replication: {timeout: 2s, max_lag: 8MiB, zone_size: 1MiB, resync_bandwidth: 50MiB, resync_parallel: 8, resync_hash_cache: false}
`)
	m, err := LoadModule(filepath.Dir(file), e.c)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Directories) != 1 || m.Directories[0] != "/srv/db2" || m.Sync != SyncWrite ||
		m.Replication.Timeout != 2*time.Second || m.Replication.MaxLag != 8<<20 ||
		m.Replication.ZoneSize != 1<<20 || m.Replication.ResyncBandwidth != 50<<20 || m.Replication.ResyncParallel != 8 ||
		m.Replication.ResyncHashCache {
		t.Errorf("parsed %+v", m)
	}
	file = e.module(t, "db3", "kind: mirror\nnodes: [alpha, beta]\ndirectories: [/srv/db3]\n")
	if m, err = LoadModule(filepath.Dir(file), e.c); err != nil || !m.Replication.ResyncHashCache {
		t.Errorf("resync_hash_cache should default to true: %+v, %v", m, err)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"64MiB": 64 << 20, "1GiB": 1 << 30, "512KiB": 512 << 10, "1048576": 1 << 20, "2M": 2 << 20} {
		if got, err := ParseSize(in); err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "x", "-1", "1.5GiB", "10TB"} {
		if _, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) accepted", bad)
		}
	}
}

func TestDefaultPrimaryLastPrim(t *testing.T) {
	e := newEnv(t)
	file := e.module(t, "lp", "kind: mirror\nnodes: [alpha, beta]\ndefault_primary: lastprim\n")
	m, err := LoadModule(filepath.Dir(file), e.c)
	if err != nil || m.DefaultPrimary != LastPrim {
		t.Fatalf("default_primary lastprim: %+v, %v", m, err)
	}
}
