package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeBackend serves a fixed set of modules.
type fakeBackend struct {
	mu      sync.Mutex
	mods    []ModuleStatus
	logs    map[string]string
	refuse  map[string]string // verb -> refusal message
	lastCmd string
	lastOpt CommandOptions
}

func newFake(t *testing.T) *fakeBackend {
	t.Helper()
	return &fakeBackend{
		mods: []ModuleStatus{{
			Module: "web", Mode: "mirror", Node: "alpha", State: "PRIM", Peer: "beta",
			PeerState: "SECOND", PeerAlive: true, Sync: "synced", UpToDate: true,
			DefaultPrimary: "alpha", VIPs: []string{"192.0.2.10/24"}, VIPHolder: "alpha",
			Epoch: 7, Started: true, Networks: map[string]bool{"lan": true},
			Since: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
		}, {
			Module: "db", Mode: "mirror", Node: "alpha", State: "WAIT", Reason: "data not known up to date",
			Peer: "beta", PeerState: "DOWN", Sync: "none",
		}},
		logs:   map[string]string{"web": filepath.Join(t.TempDir(), "web.log")},
		refuse: map[string]string{"prim": "refused: node alpha is not up to date; use --force"},
	}
}

func (f *fakeBackend) Status(module string) (Status, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	st := Status{Cluster: "c1", Node: "alpha"}
	for _, m := range f.mods {
		if module == "" || m.Module == module {
			st.Modules = append(st.Modules, m)
		}
	}
	if module != "" && len(st.Modules) == 0 {
		return Status{}, fmt.Errorf("%w %q", ErrUnknownModule, module)
	}
	return st, nil
}

func (f *fakeBackend) Command(module, verb string, opts CommandOptions) (string, error) {
	if _, err := f.Status(module); err != nil {
		return "", err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lastCmd, f.lastOpt = module+" "+verb, opts
	if msg, ok := f.refuse[verb]; ok && !opts.Force {
		return "", errors.New(msg)
	}
	return verb + " " + module + ": done", nil
}

func (f *fakeBackend) LogPath(module string) (string, error) {
	if _, err := f.Status(module); err != nil {
		return "", err
	}
	if p, ok := f.logs[module]; ok {
		return p, nil
	}
	return "/nonexistent/" + module + ".log", nil
}

func (f *fakeBackend) setState(module, state, target string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.mods {
		if f.mods[i].Module == module {
			f.mods[i].State, f.mods[i].Target = state, target
		}
	}
}

// sockPath returns a short socket path (Unix socket paths are limited).
func sockPath(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "tapi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return filepath.Join(dir, "run", "tandem.sock")
}

// startServer runs Serve until the test ends and waits for the socket.
func startServer(t *testing.T, b Backend) (*Client, string) {
	t.Helper()
	sock := sockPath(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, sock, b) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("Serve did not return after cancel")
		}
	})
	waitSocket(t, sock, done)
	return &Client{Socket: sock, Timeout: 5 * time.Second}, sock
}

func waitSocket(t *testing.T, sock string, done chan error) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-done:
			t.Fatalf("Serve returned early: %v", err)
		default:
		}
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("socket %s never answered", sock)
}

func TestStatusJSONFieldNames(t *testing.T) {
	f := newFake(t)
	c, sock := startServer(t, f)

	st, err := c.Status("")
	if err != nil {
		t.Fatal(err)
	}
	if st.Cluster != "c1" || st.Node != "alpha" || len(st.Modules) != 2 {
		t.Fatalf("status = %+v", st)
	}
	if got, want := st.Modules[0], f.mods[0]; fmt.Sprint(got) != fmt.Sprint(want) || !got.Since.Equal(want.Since) {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, want)
	}

	// Raw JSON: the SPEC §3 names must be there, even for zero values.
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return net.Dial("unix", sock)
	}}}
	resp, err := hc.Get("http://x/v1/status")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var raw map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&raw); err != nil {
		t.Fatal(err)
	}
	mods, ok := raw["modules"].([]any)
	if !ok || len(mods) != 2 {
		t.Fatalf("modules = %v", raw["modules"])
	}
	for _, m := range mods {
		obj := m.(map[string]any)
		for _, k := range []string{"module", "mode", "node", "state", "reason", "peer", "peer_state", "sync", "resync_percent", "uptodate", "default_primary", "vips", "epoch"} {
			if _, ok := obj[k]; !ok {
				t.Errorf("module %v: JSON field %q missing", obj["module"], k)
			}
		}
	}
	if e, ok := mods[0].(map[string]any)["epoch"].(float64); !ok || e != 7 {
		t.Errorf("epoch = %v", mods[0].(map[string]any)["epoch"])
	}

	one, err := c.Status("db")
	if err != nil || len(one.Modules) != 1 || one.Modules[0].State != "WAIT" {
		t.Fatalf("Status(db) = %+v, %v", one, err)
	}
}

func TestUnknownModule(t *testing.T) {
	c, _ := startServer(t, newFake(t))
	_, err := c.Status("nope")
	if !errors.Is(err, ErrUnknownModule) {
		t.Fatalf("err = %v, want ErrUnknownModule", err)
	}
	if !strings.Contains(err.Error(), `"nope"`) || !strings.Contains(err.Error(), "db, web") {
		t.Errorf("message should name the module and list the known ones: %q", err)
	}
	if _, err := c.Command("nope", "start", CommandOptions{}); !errors.Is(err, ErrUnknownModule) {
		t.Errorf("Command: err = %v, want ErrUnknownModule", err)
	}
	err = c.Logs(context.Background(), "nope", 10, false, func([]byte) error { return nil })
	if !errors.Is(err, ErrUnknownModule) {
		t.Errorf("Logs: err = %v, want ErrUnknownModule", err)
	}
}

func TestCommand(t *testing.T) {
	f := newFake(t)
	c, _ := startServer(t, f)

	msg, err := c.Command("web", "second", CommandOptions{Full: true})
	if err != nil || msg != "second web: done" {
		t.Fatalf("Command = %q, %v", msg, err)
	}
	if f.lastCmd != "web second" || !f.lastOpt.Full {
		t.Errorf("backend got %q %+v", f.lastCmd, f.lastOpt)
	}

	_, err = c.Command("web", "prim", CommandOptions{})
	var ae *Error
	if !errors.Is(err, ErrRefused) || !errors.As(err, &ae) || ae.Code != http.StatusConflict {
		t.Fatalf("refused: err = %#v", err)
	}
	if err.Error() != f.refuse["prim"] {
		t.Errorf("refusal message = %q, want the backend's", err)
	}
	if _, err := c.Command("web", "prim", CommandOptions{Force: true}); err != nil {
		t.Errorf("prim --force: %v", err)
	}

	_, err = c.Command("web", "explode", CommandOptions{})
	if !errors.As(err, &ae) || ae.Code != http.StatusBadRequest || !strings.Contains(err.Error(), "swap") {
		t.Errorf("bad verb: err = %v", err)
	}
}

func TestCommandBadBody(t *testing.T) {
	_, sock := startServer(t, newFake(t))
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return net.Dial("unix", sock)
	}}}
	for _, body := range []string{`{"forse":true}`, `not json`} {
		resp, err := hc.Post("http://x/v1/modules/web/prim", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest || !strings.Contains(string(b), `"error"`) {
			t.Errorf("body %s: %d %s", body, resp.StatusCode, b)
		}
	}
	// No body at all is fine.
	resp, err := hc.Post("http://x/v1/modules/web/start", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("empty body: %d", resp.StatusCode)
	}
}

func logLine(i int) string {
	return fmt.Sprintf(`{"time":"2026-01-02T03:04:%02dZ","module":"web","node":"alpha","kind":"state","msg":"event %d"}`, i%60, i) + "\n"
}

func appendFile(t *testing.T, path, s string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(s); err != nil {
		t.Fatal(err)
	}
}

func msgOf(t *testing.T, line []byte) string {
	t.Helper()
	var e struct{ Msg string }
	if err := json.Unmarshal(line, &e); err != nil {
		t.Fatalf("line %q: %v", line, err)
	}
	return e.Msg
}

func TestLogsLast(t *testing.T) {
	f := newFake(t)
	c, _ := startServer(t, f)
	for i := range 10 {
		appendFile(t, f.logs["web"], logLine(i))
	}
	var got []string
	err := c.Logs(context.Background(), "web", 3, false, func(l []byte) error {
		got = append(got, msgOf(t, l))
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, ",") != "event 7,event 8,event 9" {
		t.Errorf("last 3 = %q", got)
	}
	got = nil
	if err := c.Logs(context.Background(), "web", -1, false, func(l []byte) error { got = append(got, msgOf(t, l)); return nil }); err != nil || len(got) != 10 {
		t.Errorf("all: %d lines, %v", len(got), err)
	}
	// A module whose log does not exist yet reads as empty.
	got = nil
	if err := c.Logs(context.Background(), "db", 5, false, func(l []byte) error { got = append(got, string(l)); return nil }); err != nil || len(got) != 0 {
		t.Errorf("empty log: %q, %v", got, err)
	}
}

func TestLogsFollow(t *testing.T) {
	f := newFake(t)
	c, _ := startServer(t, f)
	path := f.logs["web"]
	for i := range 3 {
		appendFile(t, path, logLine(i))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	lines := make(chan string, 100)
	done := make(chan error, 1)
	go func() {
		done <- c.Logs(ctx, "web", 2, true, func(l []byte) error {
			lines <- msgOf(t, l)
			return nil
		})
	}()
	expect := func(want ...string) {
		t.Helper()
		for _, w := range want {
			select {
			case got := <-lines:
				if got != w {
					t.Fatalf("got %q, want %q", got, w)
				}
			case <-ctx.Done():
				t.Fatalf("timed out waiting for %q", w)
			}
		}
	}
	expect("event 1", "event 2")
	appendFile(t, path, logLine(3))
	appendFile(t, path, logLine(4))
	expect("event 3", "event 4")
	// Truncation: the follower starts again from the file's beginning.
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	appendFile(t, path, logLine(5))
	expect("event 5")
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Logs after cancel: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Logs did not return after cancel")
	}
}

func TestSocketMode(t *testing.T) {
	_, sock := startServer(t, newFake(t))
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode = %v, want socket 0600", fi.Mode())
	}
	di, err := os.Stat(filepath.Dir(sock))
	if err != nil || di.Mode().Perm() != 0o755 {
		t.Errorf("socket dir mode = %v, %v; want 0755", di.Mode(), err)
	}
}

func TestStaleSocketReplaced(t *testing.T) {
	sock := sockPath(t)
	if err := os.MkdirAll(filepath.Dir(sock), 0o755); err != nil {
		t.Fatal(err)
	}
	// A socket file nobody listens on, as a killed agent leaves behind.
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	if _, err := os.Stat(sock); err != nil {
		t.Fatalf("stale socket not left behind: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- Serve(ctx, sock, newFake(t)) }()
	waitSocket(t, sock, done)
	c := &Client{Socket: sock}
	if _, err := c.Status(""); err != nil {
		t.Errorf("Status on the new socket: %v", err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return")
	}
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file not removed on exit: %v", err)
	}
}

func TestSecondServeRefused(t *testing.T) {
	c, sock := startServer(t, newFake(t))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := Serve(ctx, sock, newFake(t))
	if err == nil || !strings.Contains(err.Error(), "another agent already serves "+sock) {
		t.Fatalf("second Serve: %v", err)
	}
	// The first server is untouched.
	if _, err := c.Status(""); err != nil {
		t.Errorf("first server broken: %v", err)
	}
}

func TestLiveSocketOfAnotherProcessRefused(t *testing.T) {
	// Something else answers on the path (no lock held): refuse, keep it.
	sock := sockPath(t)
	if err := os.MkdirAll(filepath.Dir(sock), 0o755); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	err = Serve(context.Background(), sock, newFake(t))
	if err == nil || !strings.Contains(err.Error(), "another agent already serves") {
		t.Fatalf("Serve: %v", err)
	}
	if _, err := os.Lstat(sock); err != nil {
		t.Errorf("live socket removed: %v", err)
	}
}

func TestNotASocketRefused(t *testing.T) {
	sock := sockPath(t)
	os.MkdirAll(filepath.Dir(sock), 0o755)
	if err := os.WriteFile(sock, []byte("data"), 0o600); err != nil {
		t.Fatal(err)
	}
	err := Serve(context.Background(), sock, newFake(t))
	if err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("Serve: %v", err)
	}
}

func TestClientAgentDown(t *testing.T) {
	sock := sockPath(t)
	c := &Client{Socket: sock}
	_, err := c.Status("")
	if !errors.Is(err, ErrAgentDown) {
		t.Fatalf("missing socket: err = %v, want ErrAgentDown", err)
	}
	for _, want := range []string{"cannot reach the tandem agent at " + sock, "is it running?", `"systemctl start tandem"`, `"tandem agent --config /etc/tandem/cluster.yaml"`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("message %q lacks %q", err, want)
		}
	}
	if _, err := c.Command("web", "start", CommandOptions{}); !errors.Is(err, ErrAgentDown) {
		t.Errorf("Command: %v", err)
	}
	if err := c.Logs(context.Background(), "web", 1, true, func([]byte) error { return nil }); !errors.Is(err, ErrAgentDown) {
		t.Errorf("Logs: %v", err)
	}

	// A socket file nobody listens on: connection refused.
	os.MkdirAll(filepath.Dir(sock), 0o755)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	if _, err := c.Status(""); !errors.Is(err, ErrAgentDown) || !strings.Contains(err.Error(), "refused") {
		t.Errorf("refused socket: %v", err)
	}
}

func TestHealth(t *testing.T) {
	f := newFake(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeHealth(ctx, addr, f) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("ServeHealth: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("ServeHealth did not return")
		}
	})
	get := func(module string) (int, string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			resp, err := http.Get("http://" + addr + "/health/" + module)
			if err != nil {
				if time.Now().After(deadline) {
					t.Fatal(err)
				}
				time.Sleep(10 * time.Millisecond)
				continue
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			return resp.StatusCode, strings.TrimSpace(string(b))
		}
	}
	cases := []struct {
		state, target string
		code          int
	}{
		{"PRIM", "", 200}, {"ALONE", "", 200}, {"UP", "", 200},
		{"SECOND", "", 503}, {"WAIT", "", 503}, {"STOP", "", 503},
		{"PRIM", "SECOND", 503}, // swap in progress: already leaving
		{"WAIT", "PRIM", 503},   // start_prim still running
	}
	for _, tc := range cases {
		f.setState("web", tc.state, tc.target)
		code, body := get("web")
		if code != tc.code || body != tc.state {
			t.Errorf("state %s target %q: %d %q, want %d %q", tc.state, tc.target, code, body, tc.code, tc.state)
		}
	}
	if code, _ := get("nope"); code != 404 {
		t.Errorf("unknown module: %d, want 404", code)
	}
}

// TestPprof: the agent's Go profiles are served on the control socket.
func TestPprof(t *testing.T) {
	_, sock := startServer(t, newFake(t))
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
	resp, err := hc.Get("http://agent/debug/pprof/goroutine?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(b), "goroutine profile:") {
		t.Fatalf("GET /debug/pprof/goroutine: %d\n%.300s", resp.StatusCode, b)
	}
}
