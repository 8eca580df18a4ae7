package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const farmCluster = `name: prod
key_file: cluster.key
networks: [lan]
modules_dir: modules
nodes:
  - name: alpha
    addresses: {lan: 192.0.2.11}
  - name: beta
    addresses: {lan: 192.0.2.12}
  - name: gamma
    addresses: {lan: 192.0.2.13}
`

func farmEnv(t *testing.T) *testEnv {
	t.Helper()
	dir := t.TempDir()
	file := filepath.Join(dir, "cluster.yaml")
	writeFile(t, file, farmCluster, 0o644)
	c, err := LoadCluster(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(c.ModulesDir, 0o755); err != nil {
		t.Fatal(err)
	}
	return &testEnv{c: c, mods: c.ModulesDir}
}

func TestFarmValid(t *testing.T) {
	e := farmEnv(t)
	file := e.module(t, "web", `kind: farm
nodes: [alpha, beta, gamma]
vip: 192.0.2.100/24
interface: eth0
hash: addr+port
weights: {alpha: 2}
drain: 5s
`)
	m, err := LoadModule(filepath.Dir(file), e.c)
	if err != nil {
		t.Fatal(err)
	}
	f := m.Farm
	if m.Kind != KindFarm || f == nil || f.VIP.String() != "192.0.2.100/24" || f.Interface != "eth0" || f.Hash != HashAddrPort ||
		f.Weight("alpha") != 2 || f.Weight("beta") != 1 || f.Drain != 5*time.Second || len(m.Nodes) != 3 {
		t.Fatalf("loaded %+v %+v", m, f)
	}
	if len(m.VIPs) != 1 || m.VIPs[0].Address != f.VIP || m.VIPs[0].Line != 3 {
		t.Errorf("VIPs %+v: the farm VIP must be listed (module list, VIP conflicts)", m.VIPs)
	}
	fields := map[string]string{}
	for _, x := range m.Fields() {
		fields[x.Path] = x.Value
	}
	for k, v := range map[string]string{"vip": "192.0.2.100/24", "hash": "addr+port", "weights.alpha": "2", "weights.gamma": "1", "drain": "5s", "interface": "eth0", "kind": "farm"} {
		if fields[k] != v {
			t.Errorf("field %s = %q, want %q", k, fields[k], v)
		}
	}
	// Defaults.
	file = e.module(t, "api", "kind: farm\nnodes: [alpha, beta]\nvip: 192.0.2.101/24\ndrain: 0\n")
	m, err = LoadModule(filepath.Dir(file), e.c)
	if err != nil {
		t.Fatal(err)
	}
	if m.Farm.Hash != HashAddr || m.Farm.Drain != 0 || m.Farm.Interface != "" {
		t.Errorf("defaults: %+v", m.Farm)
	}
	file = e.module(t, "api2", "kind: farm\nnodes: [alpha, beta]\nvip: 192.0.2.102/24\n")
	if m, err = LoadModule(filepath.Dir(file), e.c); err != nil || m.Farm.Drain != DefaultDrain {
		t.Errorf("default drain: %v %v", m, err)
	}
}

func TestFarmErrors(t *testing.T) {
	const head = "kind: farm\nnodes: [alpha, beta, gamma]\n"
	cases := []struct {
		name string
		text string
		want []wantErr
	}{
		{"one node", "kind: farm\nnodes: [alpha]\nvip: 192.0.2.100/24\n",
			[]wantErr{{2, "nodes", "a farm module runs on 2 to 16 nodes, found 1"}}},
		{"node twice", "kind: farm\nnodes: [alpha, alpha]\nvip: 192.0.2.100/24\n",
			[]wantErr{{2, "nodes[1]", `"alpha" listed twice: a farm needs distinct nodes`}}},
		{"no vip", head, []wantErr{{1, "vip", "required"}}},
		{"vip without prefix", head + "vip: 192.0.2.100\n", []wantErr{{3, "vip", "has no prefix length"}}},
		{"vip /32", head + "vip: 192.0.2.100/32\n", []wantErr{{3, "vip", "not /32"}}},
		{"vip ipv6", head + "vip: 2001:db8::100/64\n", []wantErr{{3, "vip", "IPv6 farm VIPs are not supported yet"}}},
		{"vip garbage", head + "vip: nope\n", []wantErr{{3, "vip", `invalid address "nope"`}}},
		{"vip multicast", head + "vip: 224.0.0.1/24\n", []wantErr{{3, "vip", "cannot be a virtual IP"}}},
		{"vip is a node", head + "vip: 192.0.2.12/24\n", []wantErr{{3, "vip", "is node beta's lan address"}}},
		{"bad hash", head + "vip: 192.0.2.100/24\nhash: port\n", []wantErr{{4, "hash", `unknown hash "port"`}}},
		{"bad weight", head + "vip: 192.0.2.100/24\nweights:\n  alpha: 0\n  delta: 2\n",
			[]wantErr{{5, "weights.alpha", "weight 0 out of range"}, {6, "weights.delta", `"delta" is not one of this module's nodes`}}},
		{"weight not a number", head + "vip: 192.0.2.100/24\nweights: {alpha: heavy}\n",
			[]wantErr{{4, "weights.alpha", "expected a whole number"}}},
		{"bad drain", head + "vip: 192.0.2.100/24\ndrain: soon\n", []wantErr{{4, "drain", `invalid duration "soon"`}}},
		{"bad interface", head + "vip: 192.0.2.100/24\ninterface: a/b\n", []wantErr{{4, "interface", "invalid interface name"}}},
		{"mirror fields", head + "vip: 192.0.2.100/24\ndefault_primary: alpha\nvips: [{address: 192.0.2.101/24}]\ndirectories: [/srv/x]\n",
			[]wantErr{{4, "default_primary", "not used by a farm module"}, {5, "vips", "write vip: ADDRESS/PREFIX"}, {6, "directories", "not used by a farm module"}}},
		{"farm fields in a mirror", "kind: mirror\nnodes: [alpha, beta]\nvip: 192.0.2.100/24\nhash: addr\n",
			[]wantErr{{3, "vip", "only for kind: farm"}, {4, "hash", "only for kind: farm"}}},
		{"kind unknown", "kind: farms\nnodes: [alpha, beta]\n", []wantErr{{1, "kind", "(supported: mirror, farm)"}}},
		{"second checker", head + "vip: 192.0.2.100/24\ncheckers:\n  - name: x\n    type: tcp\n    address: 127.0.0.1:80\n    when: second\n    action: restart\n",
			[]wantErr{{8, "checkers[0].when", "a farm has no SECOND"}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := farmEnv(t)
			file := e.module(t, "web", tc.text)
			_, err := LoadModule(filepath.Dir(file), e.c)
			checkErrors(t, err, file, tc.want)
		})
	}
}

func TestFarmVIPConflict(t *testing.T) {
	e := farmEnv(t)
	e.module(t, "web", "kind: farm\nnodes: [alpha, beta, gamma]\nvip: 192.0.2.100/24\n")
	db := e.module(t, "db", "kind: mirror\nnodes: [alpha, beta]\nvips: [{address: 192.0.2.100/24}]\n")
	err := CheckAll(e.c)
	if err == nil || !strings.Contains(err.Error(), db+":3: vips[0].address: virtual IP 192.0.2.100 is also used by module web") {
		t.Fatalf("farm VIP used by a mirror too: %v", err)
	}
}

func TestFarmTemplate(t *testing.T) {
	if TemplateKind("farm") != KindFarm || TemplateKind("mirror") != KindMirror || TemplateKind("nope") != "" {
		t.Fatalf("template kinds: farm=%q mirror=%q", TemplateKind("farm"), TemplateKind("mirror"))
	}
	e := farmEnv(t)
	for _, tpl := range []string{"farm", "nginx"} {
		dir := filepath.Join(e.mods, "t"+tpl)
		if err := NewModuleFromTemplate(tpl, dir, "alpha", "beta", "gamma"); err != nil {
			t.Fatal(err)
		}
		m, err := LoadModule(dir, e.c)
		if err != nil {
			t.Fatalf("template %s with 3 nodes: %v", tpl, err)
		}
		if m.Kind != KindFarm || len(m.Nodes) != 3 {
			t.Errorf("template %s: %+v", tpl, m)
		}
	}
	if err := NewModuleFromTemplate("farm", filepath.Join(e.mods, "x"), "alpha"); err == nil {
		t.Error("farm template with one node accepted")
	}
	if err := NewModuleFromTemplate("mirror", filepath.Join(e.mods, "y"), "alpha", "beta", "gamma"); err == nil {
		t.Error("mirror template with 3 nodes accepted")
	}
}
