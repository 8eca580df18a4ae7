package config

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestCheckersValid(t *testing.T) {
	e := newEnv(t)
	e.module(t, "web", baseModule+`checkers:
  - name: app
    type: process
    pidfile: app.pid
  - name: workers
    type: process
    pattern: '^nginx: worker'
    atleast: 2
    action: stopstart
  - name: unit
    type: process
    unit: nginx.service
    when: both
  - name: port
    type: tcp
    address: 127.0.0.1:80
    interval: 2s
    timeout: 500ms
    failures: 3
  - name: health
    type: http
    url: http://127.0.0.1/health
    status: 204
    body: ok
  - name: probe
    type: custom
    command: check_app
    args: [--quick]
    action: stop
  - name: lan
    type: interface
    interface: eth0
  - name: gw
    type: ping
    address: 192.0.2.1
loop_limit:
  restarts: 0
  window: 10m
`)
	writeFile(t, filepath.Join(e.mods, "web", "bin", "check_app"), "#!/bin/sh\n", 0o755)
	m, err := LoadModule(filepath.Join(e.mods, "web"), e.c)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]Checker{}
	for _, c := range m.Checkers {
		byName[c.Name] = c
	}
	if len(m.Checkers) != 8 {
		t.Fatalf("%d checkers", len(m.Checkers))
	}
	want := map[string]Checker{
		"app":     {Name: "app", Type: "process", When: "prim", Action: "restart", Interval: time.Second, Timeout: 5 * time.Second, Failures: 1, PIDFile: "app.pid", AtLeast: 1, Line: 4},
		"workers": {Name: "workers", Type: "process", When: "prim", Action: "stopstart", Interval: time.Second, Timeout: 5 * time.Second, Failures: 1, Pattern: "^nginx: worker", AtLeast: 2, Line: 7},
		"unit":    {Name: "unit", Type: "process", When: "both", Action: "restart", Interval: time.Second, Timeout: 5 * time.Second, Failures: 1, Unit: "nginx.service", AtLeast: 1, Line: 12},
		"port":    {Name: "port", Type: "tcp", When: "prim", Action: "restart", Interval: 2 * time.Second, Timeout: 500 * time.Millisecond, Failures: 3, Address: "127.0.0.1:80", Line: 16},
		"health":  {Name: "health", Type: "http", When: "prim", Action: "restart", Interval: 5 * time.Second, Timeout: 5 * time.Second, Failures: 2, URL: "http://127.0.0.1/health", Status: 204, Body: "ok", Line: 22},
		"probe":   {Name: "probe", Type: "custom", When: "prim", Action: "stop", Interval: 5 * time.Second, Timeout: 5 * time.Second, Failures: 1, Command: "check_app", Args: []string{"--quick"}, Line: 27},
		"lan":     {Name: "lan", Type: "interface", When: "pre", Action: "wait", Interval: time.Second, Timeout: 5 * time.Second, Failures: 1, Interface: "eth0", Line: 32},
		"gw":      {Name: "gw", Type: "ping", When: "pre", Action: "wait", Interval: 2 * time.Second, Timeout: time.Second, Failures: 2, Address: "192.0.2.1", Line: 35},
	}
	for name, w := range want {
		got := byName[name]
		if got.Name != w.Name || got.Type != w.Type || got.When != w.When || got.Action != w.Action || got.Interval != w.Interval ||
			got.Timeout != w.Timeout || got.Failures != w.Failures || got.PIDFile != w.PIDFile || got.Unit != w.Unit ||
			got.Pattern != w.Pattern || got.AtLeast != w.AtLeast || got.Address != w.Address || got.URL != w.URL ||
			got.Status != w.Status || got.Body != w.Body || got.Command != w.Command || !slices.Equal(got.Args, w.Args) ||
			got.Interface != w.Interface || got.Line != w.Line {
			t.Errorf("checker %s:\n got  %+v\n want %+v", name, got, w)
		}
	}
	if l := m.Loop(); l != (LoopLimit{Restarts: 0, Failovers: DefaultLoopFailovers, Window: 10 * time.Minute}) {
		t.Errorf("loop limit %+v", l)
	}

	// The checkers are part of the module's canonical fields.
	f := map[string]string{}
	for _, x := range m.Fields() {
		f[x.Path] = x.Value
	}
	for k, v := range map[string]string{"checkers.port.interval": "2s", "checkers.workers.atleast": "2", "checkers.health.status": "204",
		"checkers.lan.interface": "eth0", "loop_limit.restarts": "0", "loop_limit.window": "10m0s", "checkers.probe.action": "stop"} {
		if f[k] != v {
			t.Errorf("field %s = %q, want %q", k, f[k], v)
		}
	}
}

func TestLoopLimitDefaults(t *testing.T) {
	e := newEnv(t)
	e.module(t, "web", baseModule)
	m, err := LoadModule(filepath.Join(e.mods, "web"), e.c)
	if err != nil {
		t.Fatal(err)
	}
	if l := m.Loop(); l != (LoopLimit{Restarts: 2, Failovers: 1, Window: time.Hour}) {
		t.Errorf("default loop limit %+v", l)
	}
	if len(m.Checkers) != 0 {
		t.Errorf("checkers %+v", m.Checkers)
	}
}

func TestCheckerErrors(t *testing.T) {
	// Lines: 1 kind, 2 nodes, 3 checkers:, 4 first entry.
	const head = baseModule + "checkers:\n"
	cases := []struct {
		name string
		text string
		want []wantErr
	}{
		{"name and type missing", head + "  - when: prim\n",
			[]wantErr{{4, "checkers[0].name", "required"}, {4, "checkers[0].type", "required"}}},
		{"unknown type", head + "  - {name: a, type: proces, pidfile: x}\n",
			[]wantErr{{4, "checkers[0].type", `unknown type "proces"; did you mean "process"?`}}},
		{"bad name", head + "  - {name: My App, type: tcp, address: '127.0.0.1:1'}\n",
			[]wantErr{{4, "checkers[0].name", "invalid name"}}},
		{"duplicate name", head + "  - {name: a, type: tcp, address: '127.0.0.1:1'}\n  - {name: a, type: tcp, address: '127.0.0.1:2'}\n",
			[]wantErr{{5, "checkers[1].name", "already defined at line 4"}}},
		{"unknown field", head + "  - name: a\n    type: tcp\n    address: 127.0.0.1:1\n    intervall: 1s\n",
			[]wantErr{{7, "checkers[0].intervall", `did you mean "interval"?`}}},
		{"field of another type", head + "  - name: a\n    type: tcp\n    address: 127.0.0.1:1\n    url: http://x/\n",
			[]wantErr{{7, "checkers[0].url", "does not apply to a tcp checker (only to http)"}}},
		{"process without selector", head + "  - {name: a, type: process}\n",
			[]wantErr{{4, "checkers[0].type", "needs one of pidfile"}}},
		{"process with two selectors", head + "  - name: a\n    type: process\n    pidfile: a.pid\n    unit: a.service\n",
			[]wantErr{{7, "checkers[0].unit", "only one of pidfile, unit and pattern"}}},
		{"atleast without pattern", head + "  - name: a\n    type: process\n    pidfile: a.pid\n    atleast: 2\n",
			[]wantErr{{7, "checkers[0].atleast", "only applies with pattern"}}},
		{"bad pattern", head + "  - name: a\n    type: process\n    pattern: 'nginx('\n",
			[]wantErr{{6, "checkers[0].pattern", "invalid regular expression"}}},
		{"atleast zero", head + "  - name: a\n    type: process\n    pattern: nginx\n    atleast: 0\n",
			[]wantErr{{7, "checkers[0].atleast", "at least 1"}}},
		{"tcp without port", head + "  - {name: a, type: tcp, address: 127.0.0.1}\n",
			[]wantErr{{4, "checkers[0].address", "want host:port"}}},
		{"tcp bad port", head + "  - {name: a, type: tcp, address: '127.0.0.1:99999'}\n",
			[]wantErr{{4, "checkers[0].address", "invalid port"}}},
		{"http bad url", head + "  - {name: a, type: http, url: 'ftp://x/'}\n",
			[]wantErr{{4, "checkers[0].url", "want http:// or https://"}}},
		{"http bad status", head + "  - {name: a, type: http, url: 'http://x/', status: 42}\n",
			[]wantErr{{4, "checkers[0].status", "not an HTTP status"}}},
		{"http status not a number", head + "  - {name: a, type: http, url: 'http://x/', status: ok}\n",
			[]wantErr{{4, "checkers[0].status", "expected a whole number"}}},
		{"custom escapes bin", head + "  - {name: a, type: custom, command: ../../x}\n",
			[]wantErr{{4, "checkers[0].command", "stay inside the module's bin/"}}},
		{"interface missing", head + "  - {name: a, type: interface}\n",
			[]wantErr{{4, "checkers[0].interface", "required"}}},
		{"ping of a name", head + "  - {name: a, type: ping, address: gateway}\n",
			[]wantErr{{4, "checkers[0].address", "invalid IP address"}}},
		{"bad when", head + "  - {name: a, type: tcp, address: '127.0.0.1:1', when: always}\n",
			[]wantErr{{4, "checkers[0].when", `unknown value "always"`}}},
		{"bad action", head + "  - {name: a, type: tcp, address: '127.0.0.1:1', action: reboot}\n",
			[]wantErr{{4, "checkers[0].action", `unknown action "reboot"`}}},
		{"pre with restart", head + "  - {name: a, type: interface, interface: eth0, action: restart}\n",
			[]wantErr{{4, "checkers[0].action", "a pre checker also runs in WAIT"}}},
		{"second with stopstart", head + "  - {name: a, type: tcp, address: '127.0.0.1:1', when: second, action: stopstart}\n",
			[]wantErr{{4, "checkers[0].action", "nothing to hand over"}}},
		{"bad durations and failures", head + "  - {name: a, type: tcp, address: '127.0.0.1:1', interval: 1ms, timeout: 0s, failures: 0}\n",
			[]wantErr{{4, "checkers[0].interval", "at least 10ms"}, {4, "checkers[0].timeout", "greater than zero"}, {4, "checkers[0].failures", "out of range"}}},
		{"checkers not a list", baseModule + "checkers: {name: a}\n",
			[]wantErr{{3, "checkers", "expected a list"}}},
		{"loop limit out of range", baseModule + "loop_limit:\n  restarts: -1\n  failovers: 5000\n  window: 1 hour\n",
			[]wantErr{{4, "loop_limit.restarts", "out of range"}, {5, "loop_limit.failovers", "out of range"}, {6, "loop_limit.window", "invalid duration"}}},
		{"loop limit unknown field", baseModule + "loop_limit:\n  max: 3\n",
			[]wantErr{{4, "loop_limit.max", "unknown field"}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			file := e.module(t, "m", tc.text)
			_, err := LoadModule(filepath.Dir(file), e.c)
			checkErrors(t, err, file, tc.want)
		})
	}
}

func TestCustomCommandChecked(t *testing.T) {
	e := newEnv(t)
	file := e.module(t, "web", baseModule+"checkers:\n  - {name: a, type: custom, command: probe}\n  - {name: b, type: custom, command: /usr/bin/true}\n")
	_, err := LoadModule(filepath.Dir(file), e.c)
	checkErrors(t, err, file, []wantErr{{4, "checkers[0].command", "does not exist"}})

	probe := filepath.Join(e.mods, "web", "bin", "probe")
	writeFile(t, probe, "#!/bin/sh\n", 0o644)
	_, err = LoadModule(filepath.Dir(file), e.c)
	checkErrors(t, err, file, []wantErr{{4, "checkers[0].command", "chmod +x"}})

	if err := os.Chmod(probe, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadModule(filepath.Dir(file), e.c); err != nil {
		t.Fatal(err)
	}
}

// A checker that differs between the two nodes' copies is named when
// they are compared.
func TestCheckerDiff(t *testing.T) {
	e := newEnv(t)
	a := e.module(t, "a", baseModule+"checkers:\n  - {name: app, type: process, pidfile: app.pid}\n")
	b := e.module(t, "b", baseModule+"checkers:\n  - {name: app, type: process, pidfile: app.pid, interval: 3s}\n")
	ma, err := LoadModule(filepath.Dir(a), e.c)
	if err != nil {
		t.Fatal(err)
	}
	mb, err := LoadModule(filepath.Dir(b), e.c)
	if err != nil {
		t.Fatal(err)
	}
	var diff []string
	for _, l := range DiffFields(ma.Fields(), mb.Fields()) {
		if !strings.HasPrefix(l, "name:") {
			diff = append(diff, l)
		}
	}
	if len(diff) != 1 || diff[0] != "checkers.app.interval: here 1s, on peer 3s" {
		t.Errorf("diff %q", diff)
	}
}
