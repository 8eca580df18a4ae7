package config

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const baseCluster = `name: prod
key_file: cluster.key
networks: [lan, backup]
nodes:
  - name: alpha
    addresses: {lan: 192.0.2.11, backup: 198.51.100.11}
  - name: beta
    addresses: {lan: 192.0.2.12, backup: 198.51.100.12}
`

func writeFile(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
}

// loadClusterText writes text as cluster.yaml in a fresh directory.
func loadClusterText(t *testing.T, text string) (*Cluster, string, error) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "cluster.yaml")
	writeFile(t, file, text, 0o644)
	c, err := LoadCluster(file)
	return c, file, err
}

func mustCluster(t *testing.T, text string) *Cluster {
	t.Helper()
	c, _, err := loadClusterText(t, text)
	if err != nil {
		t.Fatalf("LoadCluster: %v", err)
	}
	return c
}

func TestLoadClusterValidDefaults(t *testing.T) {
	c, file, err := loadClusterText(t, baseCluster)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(file)
	checks := []struct{ name, got, want string }{
		{"File", c.File, file},
		{"Name", c.Name, "prod"},
		{"KeyFile", c.KeyFile, filepath.Join(dir, "cluster.key")},
		{"StateDir", c.StateDir, DefaultStateDir},
		{"ModulesDir", c.ModulesDir, DefaultModulesDir},
		{"Socket", c.Socket, DefaultSocket},
		{"HealthListen", c.HealthListen, ""},
		{"Networks", strings.Join(c.Networks, ","), "lan,backup"},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s = %q, want %q", ch.name, ch.got, ch.want)
		}
	}
	if c.Heartbeat != (Heartbeat{Port: 7400, Interval: 100 * time.Millisecond, Timeout: 600 * time.Millisecond}) {
		t.Errorf("Heartbeat = %+v", c.Heartbeat)
	}
	if len(c.Nodes) != 2 || c.Nodes[1].Addresses["backup"] != netip.MustParseAddr("198.51.100.12") {
		t.Errorf("Nodes = %+v", c.Nodes)
	}
	if n, ok := c.Node("beta"); !ok || n.Name != "beta" {
		t.Errorf("Node(beta) = %v, %v", n, ok)
	}
	if _, ok := c.Node("gamma"); ok {
		t.Error("Node(gamma) found")
	}
}

func TestLoadClusterFull(t *testing.T) {
	c, file, err := loadClusterText(t, `name: test-1
key_file: /etc/tandem/cluster.key
state_dir: state
modules_dir: mods
socket: /run/t.sock
health_listen: ":9453"
networks: [lan]
heartbeat:
  port: 7500
  interval: 200ms
  timeout: 1s
nodes:
  - name: alpha
    addresses: {lan: "2001:db8::11"}
    socket: alpha.sock
    state_dir: /var/lib/tandem/alpha
    modules_dir: /etc/tandem/alpha-modules
    health_listen: 127.0.0.1:9454
  - name: beta
    addresses:
      lan: 2001:db8::12
`)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(file)
	if c.StateDir != filepath.Join(dir, "state") || c.ModulesDir != filepath.Join(dir, "mods") {
		t.Errorf("relative paths not resolved: %q %q", c.StateDir, c.ModulesDir)
	}
	if c.Heartbeat != (Heartbeat{Port: 7500, Interval: 200 * time.Millisecond, Timeout: time.Second}) {
		t.Errorf("Heartbeat = %+v", c.Heartbeat)
	}
	a := c.Resolved("alpha")
	want := NodeSettings{Name: "alpha", Socket: filepath.Join(dir, "alpha.sock"), StateDir: "/var/lib/tandem/alpha",
		ModulesDir: "/etc/tandem/alpha-modules", HealthListen: "127.0.0.1:9454"}
	if a != want {
		t.Errorf("Resolved(alpha) = %+v, want %+v", a, want)
	}
	b := c.Resolved("beta")
	want = NodeSettings{Name: "beta", Socket: "/run/t.sock", StateDir: filepath.Join(dir, "state"),
		ModulesDir: filepath.Join(dir, "mods"), HealthListen: ":9453"}
	if b != want {
		t.Errorf("Resolved(beta) = %+v, want %+v", b, want)
	}
}

func TestTimeoutDefaultFollowsInterval(t *testing.T) {
	c := mustCluster(t, baseCluster+"heartbeat: {interval: 300ms}\n")
	if c.Heartbeat.Timeout != 1800*time.Millisecond {
		t.Errorf("Timeout = %v, want 6 × 300ms", c.Heartbeat.Timeout)
	}
}

// wantErr is one expected error: its file:line: field: prefix and a part
// of its message.
type wantErr struct {
	line  int
	field string
	msg   string
}

func checkErrors(t *testing.T, err error, file string, want []wantErr) {
	t.Helper()
	if err == nil {
		t.Fatalf("no error, want %v", want)
	}
	text := err.Error()
	for _, w := range want {
		prefix := fmt.Sprintf("%s:%d: %s: ", file, w.line, w.field)
		if w.field == "" {
			prefix = fmt.Sprintf("%s:%d: ", file, w.line)
		}
		found := false
		for _, l := range strings.Split(text, "\n") {
			if strings.HasPrefix(l, prefix) && strings.Contains(l, w.msg) {
				found = true
			}
		}
		if !found {
			t.Errorf("missing error %q ... %q in:\n%s", prefix, w.msg, text)
		}
	}
	if got := Errors(err); len(got) != len(want) {
		t.Errorf("%d errors, want %d:\n%s", len(got), len(want), text)
	}
	for _, e := range Errors(err) {
		if e.File != file {
			t.Errorf("error names file %q, want %q", e.File, file)
		}
	}
}

func TestLoadClusterErrors(t *testing.T) {
	// Lines of baseCluster: 1 name, 2 key_file, 3 networks, 4 nodes,
	// 5 - name: alpha, 6 addresses, 7 - name: beta, 8 addresses.
	cases := []struct {
		name string
		text string
		want []wantErr
	}{
		{"unknown top-level field", baseCluster + "nmae: x\n",
			[]wantErr{{9, "nmae", `unknown field; did you mean "name"?`}}},
		{"unknown nested field", baseCluster + "heartbeat:\n  intervall: 1s\n",
			[]wantErr{{10, "heartbeat.intervall", `did you mean "interval"?`}}},
		{"unknown node field", strings.Replace(baseCluster, "  - name: beta\n", "  - name: beta\n    adresses: {}\n", 1),
			[]wantErr{{8, "nodes[1].adresses", `unknown field; did you mean "addresses"?`}}},
		{"node without addresses", strings.Replace(baseCluster, "    addresses: {lan: 192.0.2.12, backup: 198.51.100.12}\n", "", 1),
			[]wantErr{{7, "nodes[1].addresses", "required: one address per network (lan, backup)"}}},
		{"wrong type int", baseCluster + "heartbeat:\n  port: abc\n",
			[]wantErr{{10, "heartbeat.port", `expected a whole number, got "abc"`}}},
		{"wrong type list", strings.Replace(baseCluster, "[lan, backup]", "lan", 1),
			[]wantErr{{3, "networks", "expected a list"}}},
		{"wrong type for a string", strings.Replace(baseCluster, "name: prod", "name: [prod]", 1),
			[]wantErr{{1, "name", "expected a single value, got a list"}}},
		{"wrong type for a required string", strings.Replace(baseCluster, "key_file: cluster.key", "key_file: {a: b}", 1),
			[]wantErr{{2, "key_file", "expected a single value, got a mapping"}}},
		{"wrong type mapping", baseCluster + "heartbeat: 5\n",
			[]wantErr{{9, "heartbeat", "expected a mapping"}}},
		{"bad duration", baseCluster + "heartbeat:\n  interval: 100ms\n  timeout: 3x\n",
			[]wantErr{{11, "heartbeat.timeout", `invalid duration "3x" (use e.g. 500ms, 3s)`}}},
		{"duration without unit", baseCluster + "heartbeat:\n  timeout: 3\n",
			[]wantErr{{10, "heartbeat.timeout", `a unit is needed`}}},
		{"timeout below 3 intervals", baseCluster + "heartbeat:\n  interval: 300ms\n  timeout: 600ms\n",
			[]wantErr{{11, "heartbeat.timeout", "shorter than 3 × heartbeat.interval (3 × 300ms = 900ms)"}}},
		{"port out of range", baseCluster + "heartbeat: {port: 70000}\n",
			[]wantErr{{9, "heartbeat.port", "out of range"}}},
		{"network missing an address", strings.Replace(baseCluster, "{lan: 192.0.2.12, backup: 198.51.100.12}", "{lan: 192.0.2.12}", 1),
			[]wantErr{{8, "nodes[1].addresses", "no address for network backup"}}},
		{"unknown network", strings.Replace(baseCluster, "backup: 198.51.100.12}", "backup: 198.51.100.12, wan: 203.0.113.1}", 1),
			[]wantErr{{8, "nodes[1].addresses.wan", `unknown network "wan" (networks: lan, backup)`}}},
		{"duplicate node names", strings.Replace(baseCluster, "name: beta", "name: alpha", 1),
			[]wantErr{{7, "nodes[1].name", `node "alpha" is defined twice (first at line 5)`}}},
		{"bad IP", strings.Replace(baseCluster, "192.0.2.12", "192.0.2.300", 1),
			[]wantErr{{8, "nodes[1].addresses.lan", `invalid IP address "192.0.2.300"`}}},
		{"IP with prefix", strings.Replace(baseCluster, "192.0.2.12", "192.0.2.12/24", 1),
			[]wantErr{{8, "nodes[1].addresses.lan", "without a /prefix"}}},
		{"duplicate IP across nodes", strings.Replace(baseCluster, "192.0.2.12", "192.0.2.11", 1),
			[]wantErr{{8, "nodes[1].addresses.lan", "address 192.0.2.11 is also node alpha's lan address (line 6)"}}},
		{"mixed families", strings.Replace(baseCluster, "192.0.2.12", "2001:db8::12", 1),
			[]wantErr{{8, "nodes[1].addresses.lan", "mixes IPv4 and IPv6"}}},
		{"node as a plain string", strings.Replace(baseCluster, "  - name: beta\n", "  - beta\n  - name: beta\n", 1),
			[]wantErr{{7, "nodes[1]", `expected a mapping (key: value), got "beta"`}}},
		{"bad node name", strings.Replace(baseCluster, "name: beta", "name: Beta_1", 1),
			[]wantErr{{7, "nodes[1].name", `invalid node name "Beta_1"`}}},
		{"missing required", "networks: [lan]\nnodes: []\n",
			[]wantErr{{1, "name", "required"}, {1, "key_file", "required"}, {2, "nodes", "at least 2 nodes"}}},
		{"empty file", "",
			[]wantErr{{1, "name", "required"}, {1, "key_file", "required"}, {1, "networks", "required"}, {1, "nodes", "at least 2 nodes are required, found 0"}}},
		{"duplicate key", baseCluster + "name: other\n",
			[]wantErr{{9, "name", "given twice (first at line 1)"}}},
		{"duplicate network", strings.Replace(baseCluster, "[lan, backup]", "[lan, lan]", 1),
			[]wantErr{{3, "networks[1]", `network "lan" listed twice`},
				{6, "nodes[0].addresses.backup", `unknown network "backup" (networks: lan)`},
				{8, "nodes[1].addresses.backup", `unknown network "backup"`}}},
		{"bad health_listen", baseCluster + "health_listen: nowhere\n",
			[]wantErr{{9, "health_listen", "invalid listen address"}}},
		{"syntax error with tab", baseCluster + "heartbeat:\n\tport: 1\n",
			[]wantErr{{10, "", "invalid YAML"}}},
		{"two documents", baseCluster + "---\nname: x\n",
			[]wantErr{{9, "", "only one YAML document"}}},
		{"several errors at once", strings.Replace(baseCluster, "name: beta", "name: alpha", 1) + "heartbeat: {timeout: 3x}\nfoo: 1\n",
			[]wantErr{{7, "nodes[1].name", "defined twice"}, {9, "heartbeat.timeout", "invalid duration"}, {10, "foo", "unknown field"}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, file, err := loadClusterText(t, tc.text)
			checkErrors(t, err, file, tc.want)
			var ce *Error
			if !errors.As(err, &ce) {
				t.Errorf("error is not a *config.Error: %T", err)
			}
		})
	}
}

func TestLoadClusterMissingFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "nope.yaml")
	_, err := LoadCluster(p)
	if err == nil || !strings.HasPrefix(err.Error(), p+": cannot read") {
		t.Fatalf("err = %v", err)
	}
}

func TestErrorFormat(t *testing.T) {
	for _, tc := range []struct {
		e    Error
		want string
	}{
		{Error{"/etc/tandem/cluster.yaml", 12, "heartbeat.timeout", "bad"}, "/etc/tandem/cluster.yaml:12: heartbeat.timeout: bad"},
		{Error{"/m/bin/start_prim", 0, "", "not executable (chmod +x it)"}, "/m/bin/start_prim: not executable (chmod +x it)"},
		{Error{"f", 3, "", "x"}, "f:3: x"},
	} {
		if got := tc.e.Error(); got != tc.want {
			t.Errorf("Error() = %q, want %q", got, tc.want)
		}
	}
}

func TestLocalNode(t *testing.T) {
	c := mustCluster(t, baseCluster)
	addr := netip.MustParseAddr
	if n, err := c.localNodeFrom([]netip.Addr{addr("127.0.0.1"), addr("198.51.100.12")}); err != nil || n != "beta" {
		t.Errorf("got %q, %v; want beta", n, err)
	}
	if _, err := c.localNodeFrom([]netip.Addr{addr("127.0.0.1")}); err == nil ||
		!strings.Contains(err.Error(), "alpha (192.0.2.11, 198.51.100.11); beta (192.0.2.12, 198.51.100.12)") {
		t.Errorf("none: err = %v", err)
	}
	if _, err := c.localNodeFrom([]netip.Addr{addr("192.0.2.11"), addr("192.0.2.12")}); err == nil ||
		!strings.Contains(err.Error(), "several nodes") || !strings.Contains(err.Error(), "alpha, beta") {
		t.Errorf("several: err = %v", err)
	}
	// The real call must not fail on this machine (the documentation
	// addresses are not configured in the root namespace).
	if _, err := c.LocalNode(); err == nil {
		t.Log("a documentation address is configured on this machine")
	}
}

func TestFieldsAndDiff(t *testing.T) {
	a := mustCluster(t, baseCluster)
	explicit := mustCluster(t, baseCluster+"state_dir: /var/lib/tandem\nheartbeat: {port: 7400, interval: 100ms, timeout: 600ms}\n")
	// Same directory name is needed for key_file: rebase it.
	explicit.KeyFile = a.KeyFile
	if Digest(a.Fields()) != Digest(explicit.Fields()) {
		t.Errorf("explicit defaults change the digest: %v", DiffFields(a.Fields(), explicit.Fields()))
	}
	f := a.Fields()
	for i := 1; i < len(f); i++ {
		if f[i-1].Path >= f[i].Path {
			t.Errorf("fields not sorted: %q before %q", f[i-1].Path, f[i].Path)
		}
	}
	has := func(path, value string) {
		t.Helper()
		for _, x := range f {
			if x.Path == path {
				if x.Value != value {
					t.Errorf("%s = %q, want %q", path, x.Value, value)
				}
				return
			}
		}
		t.Errorf("field %s missing", path)
	}
	has("heartbeat.interval", "100ms")
	has("heartbeat.timeout", "600ms")
	has("nodes.alpha.addresses.lan", "192.0.2.11")
	has("nodes.beta.addresses.backup", "198.51.100.12")
	has("networks", "lan,backup")

	b := mustCluster(t, strings.Replace(baseCluster, "name: beta", "name: beta\n    socket: /run/b.sock", 1)+"heartbeat: {timeout: 1s}\n")
	b.KeyFile = a.KeyFile
	if Digest(a.Fields()) == Digest(b.Fields()) {
		t.Fatal("different clusters, same digest")
	}
	got := DiffFields(a.Fields(), b.Fields())
	want := []string{
		"heartbeat.timeout: here 600ms, on peer 1s",
		"nodes.beta.socket: here (absent), on peer /run/b.sock",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("DiffFields =\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if d := DiffFields(a.Fields(), a.Fields()); len(d) != 0 {
		t.Errorf("self diff = %v", d)
	}
	// Digest ignores order but not content boundaries.
	if Digest([]Field{{"a", "bc"}}) == Digest([]Field{{"ab", "c"}}) {
		t.Error("digest confuses field boundaries")
	}
	if Digest([]Field{{"a", "1"}, {"b", "2"}}) != Digest([]Field{{"b", "2"}, {"a", "1"}}) {
		t.Error("digest depends on order")
	}
}

func TestLoadKey(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		name    string
		content string
		mode    os.FileMode
		want    []byte
		errPart string
	}{
		{"raw", "0123456789abcdefXYZ\n", 0o600, []byte("0123456789abcdefXYZ"), ""},
		{"hex", "000102030405060708090a0b0c0d0e0f\n", 0o600, []byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, ""},
		{"hex crlf", "000102030405060708090a0b0c0d0e0f\r\n", 0o400, []byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}, ""},
		{"world readable", "0123456789abcdefXYZ", 0o644, nil, "chmod 600"},
		{"group readable", "0123456789abcdefXYZ", 0o640, nil, "chmod 600"},
		{"short raw", "short\n", 0o600, nil, "5 bytes, need at least 16"},
		{"short hex", "00010203\n", 0o600, nil, "4 bytes after hex decoding"},
		{"empty", "", 0o600, nil, "0 bytes"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_"))
			writeFile(t, p, tc.content, tc.mode)
			key, err := LoadKey(p)
			if tc.errPart != "" {
				if err == nil || !strings.Contains(err.Error(), tc.errPart) || !strings.Contains(err.Error(), p) {
					t.Fatalf("err = %v, want one naming %s and %q", err, p, tc.errPart)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if string(key) != string(tc.want) {
				t.Errorf("key = %x, want %x", key, tc.want)
			}
		})
	}
	if _, err := LoadKey(filepath.Join(dir, "missing")); err == nil || !strings.Contains(err.Error(), "no such file") {
		t.Errorf("missing key: err = %v", err)
	}
}

func TestSyntaxErrorLines(t *testing.T) {
	cases := []struct {
		text string
		line int
		msg  string
	}{
		{"name: a\nnetworks: [lan\n", 2, "did not find expected ',' or ']'"},
		{"name: a\nheartbeat:\n  port: 1\n interval: 1s\n", 4, "did not find expected key"},
		{"name: a\n  key_file: b\n", 2, "mapping values are not allowed"},
		{"name: a\n- b\n", 2, "did not find expected key"},
		{"name: a\nkey_file: \"b\n", 2, "unexpected end of stream"},
		{"name: a\nkey_file: *k\n", 2, "unknown anchor"},
		{"name: a\n\tkey_file: b\n", 2, "tab"},
	}
	for _, tc := range cases {
		_, file, err := loadClusterText(t, tc.text)
		checkErrors(t, err, file, []wantErr{{tc.line, "", tc.msg}})
	}
}

func TestAliasesFollowed(t *testing.T) {
	c := mustCluster(t, `name: prod
key_file: k
networks: [lan]
heartbeat: &hb {interval: 50ms}
nodes:
  - name: alpha
    addresses: {lan: 192.0.2.11}
    state_dir: &sd /srv/tandem
  - name: beta
    addresses: {lan: 192.0.2.12}
    state_dir: *sd
`)
	if c.Nodes[1].StateDir != "/srv/tandem" || c.Heartbeat.Interval != 50*time.Millisecond {
		t.Errorf("aliases: %+v %+v", c.Nodes[1], c.Heartbeat)
	}
	_, file, err := loadClusterText(t, baseCluster+"base: &b {x: 1}\nheartbeat:\n  <<: *b\n")
	checkErrors(t, err, file, []wantErr{{9, "base", "unknown field"}, {11, "heartbeat.<<", "merge keys"}})
}

// No input may panic the parser or the validation; every error names the file.
func FuzzParseCluster(f *testing.F) {
	f.Add([]byte(baseCluster))
	f.Add([]byte(baseCluster + "heartbeat: {interval: 1s, timeout: 2s}\n"))
	f.Add([]byte("a: &x [*x]\n"))
	f.Add([]byte("nodes: [{addresses: {lan: [1]}}]\n"))
	f.Fuzz(func(t *testing.T, src []byte) {
		c, err := parseCluster("/c.yaml", src)
		if err == nil {
			if c == nil {
				t.Fatal("nil cluster without error")
			}
			_ = Digest(c.Fields())
			return
		}
		for _, e := range Errors(err) {
			if e.File != "/c.yaml" {
				t.Fatalf("error names %q", e.File)
			}
		}
	})
}
