package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/api"
)

type fakeBackend struct {
	mu      sync.Mutex
	mods    []api.ModuleStatus
	logPath string
	lastCmd string
	lastOpt api.CommandOptions
}

func (f *fakeBackend) Status(module string) (api.Status, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := api.Status{Cluster: "prod", Node: "alpha"}
	for _, m := range f.mods {
		if module == "" || m.Module == module {
			st.Modules = append(st.Modules, m)
		}
	}
	if module != "" && len(st.Modules) == 0 {
		return api.Status{}, fmt.Errorf("%w %q", api.ErrUnknownModule, module)
	}
	return st, nil
}

func (f *fakeBackend) Command(module, verb string, opts api.CommandOptions) (string, error) {
	if _, err := f.Status(module); err != nil {
		return "", err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastCmd, f.lastOpt = module+" "+verb, opts
	if verb == "prim" && !opts.Force {
		return "", errors.New("prim web refused: node alpha is not up to date (epoch 3 < 4); tandem prim web --force would lose the writes made on beta since epoch 4")
	}
	return verb + " " + module + ": done", nil
}

func (f *fakeBackend) LogPath(module string) (string, error) {
	if _, err := f.Status(module); err != nil {
		return "", err
	}
	return f.logPath, nil
}

func (f *fakeBackend) setState(state string) {
	f.mu.Lock()
	f.mods[0].State = state
	f.mu.Unlock()
}

func newFake(t *testing.T) *fakeBackend {
	return &fakeBackend{
		mods: []api.ModuleStatus{{
			Module: "web", Mode: "mirror", Node: "alpha", State: "PRIM", Peer: "beta",
			PeerState: "SECOND", PeerAlive: true, Sync: "resyncing", ResyncPercent: 42.5, UpToDate: true,
			DefaultPrimary: "alpha", VIPs: []string{"192.0.2.100/24"}, VIPHolder: "alpha", Epoch: 4,
			Networks: map[string]bool{"lan": true}, Since: time.Now(),
		}, {
			Module: "db", Mode: "mirror", Node: "alpha", State: "WAIT", Target: "PRIM",
			Reason: "data not known\nup to date", Peer: "beta", PeerState: "DOWN", Sync: "none",
		}},
		logPath: filepath.Join(t.TempDir(), "events.log"),
	}
}

// startAPI serves b on a fresh socket until the test ends.
func startAPI(t *testing.T, b api.Backend) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "tcli")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "tandem.sock")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- api.Serve(ctx, sock, b) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("api.Serve did not stop")
		}
		os.RemoveAll(dir)
	})
	deadline := time.Now().Add(5 * time.Second)
	for {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return sock
		}
		if time.Now().After(deadline) {
			t.Fatal("API socket never answered")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func runCtx(ctx context.Context, args ...string) (int, string, string) {
	var out, errb bytes.Buffer
	code := run(ctx, args, &out, &errb)
	return code, out.String(), errb.String()
}

func runCLI(args ...string) (int, string, string) {
	return runCtx(context.Background(), args...)
}

func TestStateExitCodes(t *testing.T) {
	f := newFake(t)
	sock := startAPI(t, f)
	for state, want := range map[string]int{"STOP": 0, "WAIT": 1, "ALONE": 2, "UP": 2, "PRIM": 3, "SECOND": 4, "FLYING": 12} {
		f.setState(state)
		code, out, errs := runCLI("--api", sock, "state", "web")
		if code != want || strings.TrimSpace(out) != state {
			t.Errorf("state %s: exit %d out %q err %q; want exit %d", state, code, out, errs, want)
		}
	}
	f.setState("SECOND")
	code, out, _ := runCLI("--api", sock, "state", "web", "--json")
	var j map[string]string
	if err := json.Unmarshal([]byte(out), &j); err != nil || code != 4 || j["module"] != "web" || j["state"] != "SECOND" {
		t.Errorf("state --json: exit %d %q %v", code, out, err)
	}
	code, out, errs := runCLI("--api", sock, "state", "nope")
	if code != exitUnknownModule || out != "" || !strings.Contains(errs, `"nope"`) || !strings.Contains(errs, "db, web") {
		t.Errorf("unknown module: exit %d out %q err %q", code, out, errs)
	}
	if code, _, _ := runCLI("--api", sock, "state"); code != exitUsage {
		t.Errorf("state without module: exit %d, want %d", code, exitUsage)
	}
}

func TestAgentDown(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	for _, args := range [][]string{
		{"state", "web"}, {"status"}, {"status", "web", "--json"}, {"start", "web"},
		{"prim", "web", "--force"}, {"swap", "web"}, {"logs", "web"}, {"logs", "web", "-f"},
	} {
		code, out, errs := runCLI(append([]string{"--api", sock}, args...)...)
		if code != exitAgentDown || out != "" || !strings.Contains(errs, "cannot reach the tandem agent at "+sock) || !strings.Contains(errs, "systemctl start tandem") {
			t.Errorf("%v: exit %d out %q err %q", args, code, out, errs)
		}
	}
	// TANDEM_API is the default of --api.
	t.Setenv("TANDEM_API", sock)
	if code, _, errs := runCLI("status"); code != exitAgentDown || !strings.Contains(errs, sock) {
		t.Errorf("TANDEM_API: exit %d err %q", code, errs)
	}
}

func TestStatus(t *testing.T) {
	sock := startAPI(t, newFake(t))
	code, out, errs := runCLI("--api", sock, "status", "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	var raw map[string]any
	if err := json.Unmarshal([]byte(out), &raw); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	mods, _ := raw["modules"].([]any)
	if len(mods) != 2 {
		t.Fatalf("modules: %v", raw["modules"])
	}
	for _, m := range mods {
		for _, k := range []string{"module", "mode", "node", "state", "reason", "peer", "peer_state", "sync", "resync_percent", "uptodate", "default_primary", "vips", "epoch"} {
			if _, ok := m.(map[string]any)[k]; !ok {
				t.Errorf("field %q missing in %v", k, m)
			}
		}
	}

	code, out, _ = runCLI("--api", sock, "status")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 3 {
		t.Fatalf("status table: exit %d\n%s", code, out)
	}
	header := strings.Fields(lines[0])
	if strings.Join(header, " ") != "MODULE STATE SYNC PEER PEER_STATE UPTODATE EPOCH VIPS(holder) REASON" {
		t.Errorf("header %q", lines[0])
	}
	if got := strings.Fields(lines[1]); strings.Join(got, " ") != "web PRIM resyncing(42.5%) beta SECOND yes 4 192.0.2.100/24(alpha) -" {
		t.Errorf("web row %q", lines[1])
	}
	if got := strings.Fields(lines[2]); strings.Join(got, " ") != "db WAIT->PRIM none beta DOWN no 0 - data not known up to date" {
		t.Errorf("db row %q", lines[2])
	}

	code, out, _ = runCLI("--api", sock, "status", "db")
	if code != 0 || strings.Count(out, "\n") != 2 || !strings.Contains(out, "db") {
		t.Errorf("status db: exit %d\n%s", code, out)
	}
	if code, _, errs := runCLI("--api", sock, "status", "nope"); code != exitFailed || !strings.Contains(errs, `unknown module "nope"`) {
		t.Errorf("status nope: exit %d err %q", code, errs)
	}
}

func TestCommands(t *testing.T) {
	f := newFake(t)
	sock := startAPI(t, f)
	code, out, errs := runCLI("--api", sock, "prim", "web")
	if code != exitFailed || out != "" || !strings.Contains(errs, "refused: node alpha is not up to date") {
		t.Errorf("refused prim: exit %d out %q err %q", code, out, errs)
	}
	code, out, _ = runCLI("--api", sock, "prim", "web", "--force")
	if code != 0 || strings.TrimSpace(out) != "prim web: done" || !f.lastOpt.Force {
		t.Errorf("prim --force: exit %d out %q opts %+v", code, out, f.lastOpt)
	}
	code, _, _ = runCLI("--api", sock, "second", "web", "--full")
	if code != 0 || f.lastCmd != "web second" || !f.lastOpt.Full || f.lastOpt.Force {
		t.Errorf("second --full: exit %d %q %+v", code, f.lastCmd, f.lastOpt)
	}
	for _, v := range []string{"start", "stop", "restart", "swap"} {
		code, out, _ := runCLI("--api", sock, v, "db")
		if code != 0 || f.lastCmd != "db "+v || strings.TrimSpace(out) != v+" db: done" {
			t.Errorf("%s: exit %d out %q last %q", v, code, out, f.lastCmd)
		}
	}
	code, out, _ = runCLI("--api", sock, "--json", "swap", "web")
	if code != 0 || !strings.Contains(out, `"message": "swap web: done"`) {
		t.Errorf("swap --json: exit %d %q", code, out)
	}
	if code, _, errs := runCLI("--api", sock, "stop", "nope"); code != exitFailed || !strings.Contains(errs, "nope") {
		t.Errorf("stop nope: exit %d err %q", code, errs)
	}
	for _, args := range [][]string{{"start"}, {"stop", "a", "b"}, {"second", "web", "--force"}, {"frobnicate"}} {
		if code, _, errs := runCLI(append([]string{"--api", sock}, args...)...); code != exitUsage || !strings.Contains(errs, "--help") {
			t.Errorf("%v: exit %d err %q, want usage error", args, code, errs)
		}
	}
}

func TestVersion(t *testing.T) {
	code, out, _ := runCLI("--version")
	if code != 0 || strings.TrimSpace(out) != "tandem dev" {
		t.Errorf("--version: exit %d %q", code, out)
	}
}

func appendLog(t *testing.T, path string, i int) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	fmt.Fprintf(f, `{"time":"2026-11-25T14:%02d:%02d.123Z","module":"web","node":"alpha","kind":"state","msg":"PRIM -> ALONE %d","fields":{"peer":"beta","reason":"peer down"}}`+"\n", i/60, i%60, i)
}

func TestLogs(t *testing.T) {
	f := newFake(t)
	sock := startAPI(t, f)
	for i := range 60 {
		appendLog(t, f.logPath, i)
	}
	code, out, errs := runCLI("--api", sock, "logs", "web")
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 50 {
		t.Fatalf("logs: exit %d, %d lines, err %q", code, len(lines), errs)
	}
	want := `^2026-11-25 14:00:59\.123 state +PRIM -> ALONE 59 +peer=beta reason="peer down"$`
	if !regexp.MustCompile(want).MatchString(lines[49]) {
		t.Errorf("last line %q does not match %s", lines[49], want)
	}
	code, out, _ = runCLI("--api", sock, "logs", "web", "-n", "2", "--json")
	lines = strings.Split(strings.TrimSpace(out), "\n")
	if code != 0 || len(lines) != 2 || !json.Valid([]byte(lines[0])) || !strings.Contains(lines[1], `"msg":"PRIM -> ALONE 59"`) {
		t.Errorf("logs --json: exit %d\n%s", code, out)
	}
	if code, out, _ := runCLI("--api", sock, "logs", "web", "-n", "-1"); code != 0 || strings.Count(out, "\n") != 60 {
		t.Errorf("logs -n -1: exit %d, %d lines", code, strings.Count(out, "\n"))
	}

	// -f: new events appear until the command is interrupted.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out2 bytes.Buffer
	var mu sync.Mutex
	done := make(chan int, 1)
	go func() {
		var errb bytes.Buffer
		done <- run(ctx, []string{"--api", sock, "logs", "web", "-f", "-n", "0"}, lockedWriter{&mu, &out2}, &errb)
	}()
	deadline := time.Now().Add(10 * time.Second)
	next := 60
	for {
		appendLog(t, f.logPath, next)
		next++
		time.Sleep(50 * time.Millisecond)
		mu.Lock()
		got := out2.String()
		mu.Unlock()
		if strings.Contains(got, "ALONE 6") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("logs -f printed nothing new: %q", got)
		}
	}
	cancel()
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("logs -f interrupted: exit %d", code)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("logs -f did not stop when interrupted")
	}
	mu.Lock()
	if strings.Contains(out2.String(), "ALONE 59") {
		t.Errorf("logs -f -n 0 printed past events: %q", out2.String())
	}
	mu.Unlock()
}

type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

const testCluster = `name: prod
key_file: cluster.key
networks: [lan]
modules_dir: modules
nodes:
  - name: alpha
    addresses: {lan: 192.0.2.11}
  - name: beta
    addresses: {lan: 192.0.2.12}
`

func writeCluster(t *testing.T) (dir, file string) {
	t.Helper()
	dir = t.TempDir()
	file = filepath.Join(dir, "cluster.yaml")
	if err := os.WriteFile(file, []byte(testCluster), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cluster.key"), bytes.Repeat([]byte("k"), 64), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir, file
}

func TestModuleNewListCheck(t *testing.T) {
	dir, file := writeCluster(t)
	code, out, errs := runCLI("module", "new", "web", "--config", file, "--node", "alpha")
	if code != 0 || !strings.Contains(out, "created module web in "+filepath.Join(dir, "modules", "web")) {
		t.Fatalf("module new: exit %d out %q err %q", code, out, errs)
	}
	if code, _, errs := runCLI("module", "new", "web", "--config", file, "--node", "alpha"); code != exitFailed || !strings.Contains(errs, "not empty") {
		t.Errorf("module new twice: exit %d err %q", code, errs)
	}
	code, out, errs = runCLI("module", "check", "--config", file)
	if code != 0 || strings.TrimSpace(out) != "ok: 1 module" {
		t.Fatalf("module check: exit %d out %q err %q", code, out, errs)
	}
	code, out, errs = runCLI("module", "list", "--config", file, "--node", "beta")
	if code != 0 || !regexp.MustCompile(`(?m)^web +mirror +alpha,beta +-$`).MatchString(out) {
		t.Errorf("module list: exit %d out %q err %q", code, out, errs)
	}
	code, out, _ = runCLI("module", "list", "--config", file, "--node", "beta", "--json")
	var infos []moduleInfo
	if err := json.Unmarshal([]byte(out), &infos); err != nil || code != 0 || len(infos) != 1 || infos[0].Name != "web" {
		t.Errorf("module list --json: exit %d %q %v", code, out, err)
	}

	// A broken module: every problem is reported with file:line.
	broken := filepath.Join(dir, "modules", "bad", "module.yaml")
	os.MkdirAll(filepath.Dir(broken), 0o755)
	if err := os.WriteFile(broken, []byte("kind: mirror\nnodes: [alpha, gamma]\nvipz: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, errs = runCLI("module", "check", "--config", file)
	if code != exitFailed || out != "" {
		t.Fatalf("broken module check: exit %d out %q err %q", code, out, errs)
	}
	for _, want := range []string{broken + ":2:", broken + ":3:", "vipz"} {
		if !strings.Contains(errs, want) {
			t.Errorf("module check output lacks %q:\n%s", want, errs)
		}
	}
	// By name, and by directory.
	if code, _, errs := runCLI("module", "check", "bad", "--config", file); code != exitFailed || !strings.Contains(errs, broken+":2:") {
		t.Errorf("module check bad: exit %d err %q", code, errs)
	}
	if code, out, _ := runCLI("module", "check", filepath.Join(dir, "modules", "web"), "--config", file); code != 0 || strings.TrimSpace(out) != "ok: 1 module" {
		t.Errorf("module check DIR: exit %d out %q", code, out)
	}
	// module list still lists the good one, and fails for the bad one.
	code, out, errs = runCLI("module", "list", "--config", file, "--node", "alpha")
	if code != exitFailed || !strings.Contains(out, "web") || !strings.Contains(errs, broken) {
		t.Errorf("module list with a broken module: exit %d out %q err %q", code, out, errs)
	}

	// A broken cluster file is reported the same way.
	if err := os.WriteFile(file, []byte(testCluster+"colour: blue\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, _, errs = runCLI("module", "check", "--config", file)
	if code != exitFailed || !strings.Contains(errs, file+":10:") {
		t.Errorf("broken cluster: exit %d err %q", code, errs)
	}
}

func TestModuleNewDir(t *testing.T) {
	parent := t.TempDir()
	code, out, errs := runCLI("module", "new", "app", "--dir", parent, "--config", filepath.Join(parent, "missing.yaml"))
	if code != 0 {
		t.Fatalf("exit %d out %q err %q", code, out, errs)
	}
	if _, err := os.Stat(filepath.Join(parent, "app", "module.yaml")); err != nil {
		t.Error(err)
	}
	if !strings.Contains(errs, "note:") {
		t.Errorf("expected a note about the unreadable cluster file: %q", errs)
	}
	if code, _, errs := runCLI("module", "new", "x", "--config", filepath.Join(parent, "missing.yaml")); code != exitFailed || !strings.Contains(errs, "--dir") {
		t.Errorf("no dir, no config: exit %d err %q", code, errs)
	}
	if code, _, errs := runCLI("module", "new", "y", "--dir", parent, "--template", "nope"); code != exitFailed || !strings.Contains(errs, "unknown template") {
		t.Errorf("bad template: exit %d err %q", code, errs)
	}
}
