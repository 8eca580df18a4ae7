package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/api"
	"github.com/tandem-ha/tandem/internal/testbed/tcluster"
)

// The tandem binary against real agents: exit codes of `state`, an agent
// that is not running, the status JSON fields of SPEC §3, logs and logs -f.
func TestCLI(t *testing.T) {
	c := newCluster(t, tcluster.Options{DefaultPrimary: "alpha"})
	c.StartPair()
	sockA := c.Node("alpha").API().Socket
	sockB := c.Node("beta").API().Socket

	// state: one word and its exit code.
	for _, tc := range []struct {
		sock, state string
		code        int
	}{{sockA, "PRIM", 3}, {sockB, "SECOND", 4}} {
		code, out, errs := tandemCLI(t, "--api", tc.sock, "state", "web")
		if code != tc.code || strings.TrimSpace(out) != tc.state {
			t.Errorf("tandem state web on %s: exit %d, out %q, err %q; want %s and exit %d", tc.sock, code, out, errs, tc.state, tc.code)
		}
	}
	code, out, errs := tandemCLI(t, "--api", sockA, "state", "nosuch")
	if code != 11 || out != "" || !strings.Contains(errs, "nosuch") || !strings.Contains(errs, "web") {
		t.Errorf("tandem state nosuch: exit %d, out %q, err %q; want exit 11 and a message naming the module and the known ones", code, out, errs)
	}
	code, _, errs = tandemCLI(t, "--api", sockA, "stop", "nosuch")
	if code != 1 || !strings.Contains(errs, "nosuch") {
		t.Errorf("tandem stop nosuch: exit %d, err %q; want exit 1 naming the module", code, errs)
	}

	// No agent behind the socket.
	none := filepath.Join(t.TempDir(), "nonexistent.sock")
	for _, args := range [][]string{{"status"}, {"state", "web"}, {"logs", "web"}, {"swap", "web"}} {
		code, out, errs := tandemCLI(t, append([]string{"--api", none}, args...)...)
		if code != 10 || out != "" || !strings.Contains(errs, none) || !strings.Contains(errs, "tandem agent") || !strings.Contains(errs, "systemctl start tandem") {
			t.Errorf("tandem %s with no agent: exit %d, out %q, err %q; want exit 10 and how to start the agent", args[0], code, out, errs)
		}
	}

	// status --json has the contract's fields with their types.
	code, out, errs = tandemCLI(t, "--api", sockA, "status", "--json")
	if code != 0 {
		t.Fatalf("tandem status --json: exit %d: %s", code, errs)
	}
	var st struct {
		Node    string           `json:"node"`
		Modules []map[string]any `json:"modules"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil || len(st.Modules) != 1 {
		t.Fatalf("tandem status --json: %v, %d modules:\n%s", err, len(st.Modules), out)
	}
	m := st.Modules[0]
	want := map[string]any{
		"module": "web", "mode": "mirror", "node": "alpha", "state": "PRIM", "peer": "beta",
		"peer_state": "SECOND", "uptodate": true, "default_primary": "alpha",
		"vips": []any{"192.0.2.100/24"},
	}
	for k, v := range want {
		if fmt.Sprint(m[k]) != fmt.Sprint(v) {
			t.Errorf("status --json: %s = %#v, want %#v", k, m[k], v)
		}
	}
	for _, k := range []string{"reason", "sync"} {
		if _, ok := m[k].(string); !ok {
			t.Errorf("status --json: %s = %#v, want a string", k, m[k])
		}
	}
	for _, k := range []string{"resync_percent", "epoch"} {
		if _, ok := m[k].(float64); !ok {
			t.Errorf("status --json: %s = %#v, want a number", k, m[k])
		}
	}
	if s := m["sync"]; s != "synced" && s != "resyncing" && s != "none" {
		t.Errorf("status --json: sync = %#v", s)
	}
	if e, _ := m["epoch"].(float64); e < 1 || e != float64(int(e)) {
		t.Errorf("status --json: epoch = %v, want an integer >= 1 on a serving node", m["epoch"])
	}

	// status as a table.
	code, out, errs = tandemCLI(t, "--api", sockB, "status")
	if code != 0 || !strings.Contains(out, "MODULE") || !strings.Contains(out, "SECOND") || !strings.Contains(out, "192.0.2.100/24(alpha)") {
		t.Errorf("tandem status on beta: exit %d, err %q:\n%s", code, errs, out)
	}

	// logs: state changes and script output.
	code, out, errs = tandemCLI(t, "--api", sockA, "logs", "web", "-n", "-1")
	if code != 0 || !strings.Contains(out, "WAIT -> ") || !strings.Contains(out, "service started on alpha") {
		t.Errorf("tandem logs web: exit %d, err %q; want state changes and start_prim's output:\n%s", code, errs, out)
	}

	// logs -f prints new events as they come, and exits 0 on SIGINT.
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bins.Tandem, "--api", sockA, "logs", "web", "-f", "-n", "1")
	stdout, err := cmd.StdoutPipe()
	must(t, err)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	must(t, cmd.Start())
	lines := make(chan string, 100)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	// The first line (the last past event) says the follow has begun.
	select {
	case l := <-lines:
		t.Logf("logs -f: %s", l)
	case <-time.After(5 * time.Second):
		t.Fatalf("tandem logs -f -n 1 printed nothing within 5s (stderr %q)", stderr.String())
	}
	asked := time.Now()
	if _, err := c.Command("alpha", "restart", api.CommandOptions{}); err != nil {
		t.Fatal(err)
	}
	seen := false
	timeout := time.After(5 * time.Second)
	for !seen {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("tandem logs -f ended early: %v %q", cmd.Wait(), stderr.String())
			}
			if strings.Contains(l, "restart") {
				seen = true
				t.Logf("logs -f showed %q %s after the restart", l, time.Since(asked).Round(time.Millisecond))
			}
		case <-timeout:
			t.Fatalf("tandem logs -f showed no restart event within 5s")
		}
	}
	must(t, cmd.Process.Signal(syscall.SIGINT))
	go func() {
		for range lines {
		}
	}()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("tandem logs -f after SIGINT: %v (stderr %q), want exit 0", err, stderr.String())
		}
	case <-time.After(5 * time.Second):
		t.Errorf("tandem logs -f still running 5s after SIGINT")
	}
	c.WaitState("alpha", "PRIM", 10*time.Second)
}

// healthClient makes HTTP requests from the client host.
func healthClient(c *tcluster.Cluster) *http.Client {
	return &http.Client{
		Timeout: 2 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				return c.Client.Dial(ctx, network, addr)
			},
			DisableKeepAlives: true,
		},
	}
}

func probe(t *testing.T, hc *http.Client, url string) (int, string) {
	t.Helper()
	resp, err := hc.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, strings.TrimSpace(string(b))
}

// Cloud mode: the health listener answers 200 on the node that should get
// the traffic and 503 on the other, follows a swap, and 404 for an unknown
// module.
func TestHealthProbe(t *testing.T) {
	c := newCluster(t, tcluster.Options{HealthListen: ":9453"})
	c.StartPair()
	hc := healthClient(c)
	url := func(node, module string) string {
		return fmt.Sprintf("http://%s:9453/health/%s", c.Node(node).Host.Addr("lan"), module)
	}
	expect := func(node string, code int, body string) {
		t.Helper()
		got, b := probe(t, hc, url(node, "web"))
		if got != code || b != body {
			t.Errorf("health of web on %s: %d %q, want %d %q", node, got, b, code, body)
		}
	}
	expect("alpha", 200, "PRIM")
	expect("beta", 503, "SECOND")
	for _, n := range []string{"alpha", "beta"} {
		if code, b := probe(t, hc, url(n, "nosuch")); code != 404 {
			t.Errorf("health of an unknown module on %s: %d %q, want 404", n, code, b)
		}
	}

	// During a swap, never both 200: a 200 from beta between two 200s from
	// alpha would mean both took traffic at once.
	if _, err := c.Command("beta", "swap", api.CommandOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	prevA := 200
	for {
		b, _ := probe(t, hc, url("beta", "web"))
		a, _ := probe(t, hc, url("alpha", "web"))
		if b == 200 && a == 200 && prevA == 200 {
			t.Errorf("during the swap both nodes answered 200")
		}
		prevA = a
		if a == 503 && b == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("health did not follow the swap within 10s: alpha %d, beta %d", a, b)
		}
	}
	c.WaitState("beta", "PRIM", 5*time.Second)
	c.WaitState("alpha", "SECOND", 5*time.Second)
	expect("alpha", 503, "SECOND")
	expect("beta", 200, "PRIM")

	// A failover: the survivor answers 200 (ALONE).
	c.Kill9("beta")
	c.WaitState("alpha", "ALONE", 5*time.Second)
	expect("alpha", 200, "ALONE")
	if _, err := hc.Get(url("beta", "web")); err == nil || !isConnRefused(err) {
		t.Errorf("health of the killed node: %v, want connection refused", err)
	}
}

func isConnRefused(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || strings.Contains(err.Error(), "connection refused")
}
