package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/api"
	"github.com/tandem-ha/tandem/internal/eventlog"
	"github.com/tandem-ha/tandem/internal/testbed/tcluster"
)

// readPID reads a pid file of node's module state directory (0 if none).
func readPID(c *tcluster.Cluster, node, file string) int {
	b, err := os.ReadFile(filepath.Join(c.ModuleStateDir(node), file))
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return pid
}

// killPID kills pid with SIGKILL, as a crash of the application.
func killPID(t *testing.T, pid int) {
	t.Helper()
	if pid <= 0 {
		t.Fatalf("no process to kill (pid %d)", pid)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill -9 %d: %v", pid, err)
	}
}

// waitStatus polls node's status until cond holds; it fails after within.
func waitStatus(t *testing.T, c *tcluster.Cluster, node string, within time.Duration, what string, cond func(api.ModuleStatus) bool) api.ModuleStatus {
	t.Helper()
	deadline := time.Now().Add(within)
	var st api.ModuleStatus
	var err error
	for time.Now().Before(deadline) {
		if st, err = c.Status(node); err == nil && cond(st) {
			return st
		}
		time.Sleep(20 * time.Millisecond)
	}
	evs, _ := c.Events(node)
	t.Logf("module log of %s (last 20 events):\n%s", node, formatEvents(evs, 20))
	t.Fatalf("%s: no %s within %s: state %s target %q reason %q loop %+v checkers %+v err %v", node, what, within,
		st.State, st.Target, st.Reason, st.Loop, st.Checkers, err)
	return st
}

func checkerOf(st api.ModuleStatus, name string) api.CheckerStatus {
	for _, c := range st.Checkers {
		if c.Name == name {
			return c
		}
	}
	return api.CheckerStatus{}
}

func wantLogged(t *testing.T, c *tcluster.Cluster, node, kind string, parts ...string) {
	t.Helper()
	waitEvent(t, c, []string{node}, 2*time.Second, fmt.Sprintf("%s %q", kind, parts), func(e eventlog.Event) bool {
		if kind != "" && e.Kind != kind {
			return false
		}
		for _, p := range parts {
			if !strings.Contains(e.Msg, p) {
				return false
			}
		}
		return true
	})
}

func cli(t *testing.T, c *tcluster.Cluster, node string, args ...string) string {
	t.Helper()
	code, out, errOut := tandemCLI(t, append([]string{"--api", c.Node(node).API().Socket}, args...)...)
	if code != 0 {
		t.Fatalf("tandem %s on %s: exit %d: %s%s", strings.Join(args, " "), node, code, out, errOut)
	}
	return out
}

const appChecker = `checkers:
  - name: app
    type: process
    pidfile: app.pid
    interval: 100ms
loop_limit:
  restarts: 2
  failovers: 1
  window: 10m
`

// The application killed is restarted where it runs; killed a third time
// within the loop window, the module fails over to the peer. Then the
// administrator's switches: reset-loop, checkers off/on, failover off/on,
// boot start off (persisted across an agent restart).
func TestCheckerProcessRestartAndLoopLimit(t *testing.T) {
	c := newCluster(t, tcluster.Options{ModuleExtra: appChecker})
	c.StartPair()
	c.WaitReach(vip4, "alpha", 5*time.Second)
	waitStatus(t, c, "alpha", 3*time.Second, "app verdict ok", func(s api.ModuleStatus) bool {
		return checkerOf(s, "app").Verdict == "ok" && checkerOf(s, "app").Active
	})
	if ch := checkerOf(nodeStatus(t, c, "beta"), "app"); ch.Active {
		t.Errorf("the prim checker runs on the SECOND: %+v", ch)
	}

	// Killed twice: restarted on alpha each time, no failover.
	for k := 1; k <= 2; k++ {
		pid := readPID(c, "alpha", "app.pid")
		start := time.Now()
		killPID(t, pid)
		waitStatus(t, c, "alpha", 5*time.Second, fmt.Sprintf("restart %d", k), func(s api.ModuleStatus) bool {
			np := readPID(c, "alpha", "app.pid")
			return s.Loop.Restarts == k && s.State == "PRIM" && s.Target == "" && np != 0 && np != pid
		})
		took := c.WaitReach(vip4, "alpha", 3*time.Second)
		t.Logf("kill %d: application restarted on alpha, client served again after %s", k, (time.Since(start)).Round(time.Millisecond))
		_ = took
		if b := nodeStatus(t, c, "beta"); b.State != "SECOND" {
			t.Errorf("beta is %s after a local restart on alpha", b.State)
		}
	}
	wantLogged(t, c, "alpha", eventlog.KindChecker, "checker app failed: process", "app.pid")
	wantLogged(t, c, "alpha", "warn", "restarting on alpha (restart 1 of 2 within 10m0s)")
	wantLogged(t, c, "alpha", "warn", "restarting on alpha (restart 2 of 2 within 10m0s)")

	// Third kill within the window: failover to beta, data in sync (no new
	// epoch), alpha becomes its SECOND.
	a0 := nodeStatus(t, c, "alpha")
	start := time.Now()
	killPID(t, readPID(c, "alpha", "app.pid"))
	c.WaitState("beta", "PRIM", 10*time.Second)
	c.WaitReach(vip4, "beta", 3*time.Second)
	t.Logf("kill 3: failover to beta, client served by beta after %s", time.Since(start).Round(time.Millisecond))
	a := c.WaitState("alpha", "SECOND", 5*time.Second)
	if a.Loop.Restarts != 2 || a.Loop.Failovers != 1 || a.Loop.MaxRestarts != 2 || a.Loop.MaxFailovers != 1 || a.Loop.Window != "10m0s" {
		t.Errorf("alpha loop status %+v", a.Loop)
	}
	if b := nodeStatus(t, c, "beta"); b.Epoch != a0.Epoch {
		t.Errorf("a checker failover to a synced SECOND started a new epoch: %d -> %d", a0.Epoch, b.Epoch)
	}
	wantLogged(t, c, "alpha", "warn", "failing over to beta (failover 1 of 1 within 10m0s, after 2 restarts)")
	if ch := checkerOf(a, "app"); ch.Actions != 3 || ch.Failures < 3 || ch.Checks < 3 || ch.Type != "process" || ch.When != "prim" || ch.Action != "restart" {
		t.Errorf("alpha's app checker counters: %+v", ch)
	}

	// The administrator resets alpha's counts.
	out := cli(t, c, "alpha", "reset-loop", "web")
	if !strings.Contains(out, "counted from zero") {
		t.Errorf("reset-loop said %q", out)
	}
	if a := nodeStatus(t, c, "alpha"); a.Loop.Restarts != 0 || a.Loop.Failovers != 0 {
		t.Errorf("after reset-loop: %+v", a.Loop)
	}
	wantLogged(t, c, "alpha", "info", "loop counts reset by the administrator (were 2 restarts and 1 failovers)")

	// Checkers off on beta: the application may die, nothing reacts.
	out = cli(t, c, "beta", "maintenance", "web", "--checkers", "off")
	if !strings.Contains(out, "checkers off") {
		t.Errorf("maintenance said %q", out)
	}
	killPID(t, readPID(c, "beta", "app.pid"))
	time.Sleep(time.Second) // 10 checker intervals
	b := nodeStatus(t, c, "beta")
	if b.State != "PRIM" || b.Loop.Restarts != 0 || checkerOf(b, "app").Active || b.Maintenance.Checkers != "off" {
		t.Errorf("with checkers off: %s loop %+v checker %+v maintenance %+v", b.State, b.Loop, checkerOf(b, "app"), b.Maintenance)
	}
	if _, err := c.Reach(vip4, 300*time.Millisecond); err == nil {
		t.Errorf("the killed application answers")
	}
	// Back on: the checker sees the dead application and restarts it.
	cli(t, c, "beta", "maintenance", "web", "--checkers", "on")
	waitStatus(t, c, "beta", 5*time.Second, "restart after checkers on", func(s api.ModuleStatus) bool { return s.Loop.Restarts == 1 })
	c.WaitReach(vip4, "beta", 3*time.Second)

	// Failover off on alpha: beta's death does not make alpha take over.
	cli(t, c, "alpha", "maintenance", "web", "--failover", "off")
	c.Kill9("beta")
	st := c.WaitReason("alpha", "SECOND", "failover is off on alpha", 5*time.Second)
	time.Sleep(time.Second)
	if st = nodeStatus(t, c, "alpha"); st.State != "SECOND" || st.Maintenance.Failover != "off" {
		t.Errorf("alpha with failover off and its peer dead: %s (%s) %+v", st.State, st.Reason, st.Maintenance)
	}
	start = time.Now()
	cli(t, c, "alpha", "maintenance", "web", "--failover", "on")
	c.WaitState("alpha", "ALONE", 5*time.Second)
	c.WaitReach(vip4, "alpha", 3*time.Second)
	t.Logf("failover on -> alpha serves after %s", time.Since(start).Round(time.Millisecond))

	// Boot start off survives an agent restart: the module stays stopped.
	out = cli(t, c, "alpha", "maintenance", "web", "--boot-start", "off")
	if !strings.Contains(out, "boot start off") {
		t.Errorf("maintenance said %q", out)
	}
	c.Sigterm("alpha")
	c.Start("alpha")
	c.WaitAgent("alpha")
	st = c.WaitReason("alpha", "STOP", "boot start is off", 5*time.Second)
	if st.Maintenance != (api.Maintenance{Checkers: "on", Failover: "on", BootStart: "off"}) || st.Started {
		t.Errorf("after the agent restart: started %v maintenance %+v", st.Started, st.Maintenance)
	}
	out = cli(t, c, "alpha", "maintenance", "web")
	for _, w := range []string{"checkers on, failover on, boot start off", "app", "process", "restart"} {
		if !strings.Contains(out, w) {
			t.Errorf("tandem maintenance web: no %q in\n%s", w, out)
		}
	}
}

func nodeStatus(t *testing.T, c *tcluster.Cluster, node string) api.ModuleStatus {
	t.Helper()
	st, err := c.Status(node)
	if err != nil {
		t.Fatalf("status of %s: %v", node, err)
	}
	return st
}

// flapScript is a custom checker that fails every other check until the
// file "healthy" exists in the module's state directory.
const flapScript = `#!/bin/sh
[ -e "$TANDEM_STATE_DIR/healthy" ] && { echo healthy; exit 0; }
f="$TANDEM_STATE_DIR/flap"
if [ -e "$f" ]; then rm -f "$f"; echo "flap: down"; exit 1; fi
: >"$f"; echo "flap: up"; exit 0
`

// A flapping checker on both nodes does not cause a failover storm: each
// node restarts at most loop_limit.restarts times and fails over at most
// loop_limit.failovers times per window, then stops; so the service moves
// at most 2×failovers+1 times and the module ends STOP on both nodes with
// the loop limit as reason. reset-loop and start bring it back.
func TestCheckerFlappingNoStorm(t *testing.T) {
	c := newCluster(t, tcluster.Options{
		Scripts: map[string]string{"flap": flapScript},
		ModuleExtra: `checkers:
  - name: flap
    type: custom
    command: flap
    interval: 100ms
loop_limit:
  restarts: 2
  failovers: 1
  window: 10m
`})
	for _, n := range []string{"alpha", "beta"} {
		must(t, os.MkdirAll(c.ModuleStateDir(n), 0o700))
		must(t, os.WriteFile(filepath.Join(c.ModuleStateDir(n), "healthy"), nil, 0o644))
	}
	c.StartPair()
	c.WaitReach(vip4, "alpha", 5*time.Second)

	// Let it flap everywhere and follow the VIP.
	start := time.Now()
	for _, n := range []string{"alpha", "beta"} {
		must(t, os.Remove(filepath.Join(c.ModuleStateDir(n), "healthy")))
	}
	var holders []string
	stopped := time.Time{}
	for time.Since(start) < 30*time.Second {
		if h := c.Holder(vip4); h != "" && (len(holders) == 0 || holders[len(holders)-1] != h) {
			holders = append(holders, h)
		}
		a, _ := c.Status("alpha")
		b, _ := c.Status("beta")
		if a.State == "STOP" && b.State == "STOP" && a.Target == "" && b.Target == "" {
			if stopped.IsZero() {
				stopped = time.Now()
			}
			if time.Since(stopped) > 2*time.Second {
				break // and stays so
			}
		} else if !stopped.IsZero() {
			t.Fatalf("the module restarted after stopping: alpha %s beta %s", a.State, b.State)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if stopped.IsZero() {
		t.Fatalf("the flapping module did not stop on both nodes within 30s (VIP holders %v)", holders)
	}
	moves := len(holders) - 1
	t.Logf("flapping checker: VIP holders %v (%d moves), both STOP after %s", holders, moves, stopped.Sub(start).Round(time.Millisecond))
	if moves > 3 {
		t.Errorf("%d moves of the service, want at most 2×failovers+1 = 3", moves)
	}
	for _, n := range []string{"alpha", "beta"} {
		st := nodeStatus(t, c, n)
		if !strings.Contains(st.Reason, "loop limit") || st.Started {
			t.Errorf("%s: %s started %v reason %q, want the loop limit", n, st.State, st.Started, st.Reason)
		}
		if st.Loop.Restarts > 2 || st.Loop.Failovers > 1 {
			t.Errorf("%s: loop counts beyond the limit: %+v", n, st.Loop)
		}
		wantLogged(t, c, n, "error", "loop limit: checker flap failed (flap exited 1: flap: down)")
		wantLogged(t, c, n, eventlog.KindChecker, "checker flap failed: flap exited 1: flap: down")
	}
	if h := c.Holder(vip4); h != "" {
		t.Errorf("VIP still on %s with the module stopped on both nodes", h)
	}

	// Fixed: the administrator resets the counts and starts the module.
	for _, n := range []string{"alpha", "beta"} {
		must(t, os.WriteFile(filepath.Join(c.ModuleStateDir(n), "healthy"), nil, 0o644))
		cli(t, c, n, "reset-loop", "web")
		cli(t, c, n, "start", "web")
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		a, _ := c.Status("alpha")
		b, _ := c.Status("beta")
		if a.Target == "" && b.Target == "" && ((a.State == "PRIM" && b.State == "SECOND") || (a.State == "SECOND" && b.State == "PRIM")) {
			prim := "alpha"
			if b.State == "PRIM" {
				prim = "beta"
			}
			c.WaitReach(vip4, prim, 3*time.Second)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after reset-loop and start: alpha %s (%s), beta %s (%s)", a.State, a.Reason, b.State, b.Reason)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// An interface checker (when: pre, action: wait): the primary's VIP
// interface loses its link (heartbeats go on over the other network), it
// leaves the service and waits, the peer takes over; the link back, it
// rejoins as SECOND.
func TestCheckerInterfaceDownFailover(t *testing.T) {
	c := newCluster(t, tcluster.Options{ModuleExtra: `checkers:
  - name: lan
    type: interface
    interface: eth0
    interval: 100ms
`})
	c.StartPair()
	c.WaitReach(vip4, "alpha", 5*time.Second)
	for _, n := range []string{"alpha", "beta"} {
		waitStatus(t, c, n, 3*time.Second, "lan verdict ok", func(s api.ModuleStatus) bool {
			ch := checkerOf(s, "lan")
			return ch.Verdict == "ok" && ch.Active && ch.When == "pre" && ch.Action == "wait"
		})
	}

	alpha := c.Node("alpha").Host
	start := time.Now()
	must(t, alpha.LinkDown("lan"))
	defer alpha.LinkUp("lan")
	c.WaitState("beta", "ALONE", 5*time.Second)
	c.WaitReach(vip4, "beta", 5*time.Second)
	t.Logf("interface down on alpha -> client served by beta after %s", time.Since(start).Round(time.Millisecond))
	a := c.WaitReason("alpha", "WAIT", "checker lan failed: interface eth0 has no carrier", 3*time.Second)
	// Its view of beta follows beta's next heartbeat (over the backup
	// network): serving, ALONE or already PRIM with alpha as its copy.
	waitStatus(t, c, "alpha", 3*time.Second, "alpha hearing beta serve over the backup network", func(s api.ModuleStatus) bool {
		return s.PeerAlive && (s.PeerState == "ALONE" || s.PeerState == "PRIM")
	})
	if a.Loop.Failovers != 1 {
		t.Errorf("leaving the service for a checker must count as a failover: %+v", a.Loop)
	}
	wantLogged(t, c, "alpha", eventlog.KindChecker, "checker lan failed: interface eth0 has no carrier")

	start = time.Now()
	must(t, alpha.LinkUp("lan"))
	c.WaitState("alpha", "SECOND", 10*time.Second)
	c.WaitState("beta", "PRIM", 5*time.Second)
	t.Logf("interface up on alpha -> alpha SECOND after %s", time.Since(start).Round(time.Millisecond))
	wantLogged(t, c, "alpha", eventlog.KindChecker, "checker lan recovered")
	c.WaitReach(vip4, "beta", 3*time.Second)
}

// The other checker kinds and actions with real processes: a process
// pattern on the SECOND (restart of its scripts), TCP (stopstart: hand
// over), HTTP (stop) and ping (wait).
func TestCheckerKinds(t *testing.T) {
	helper := 86000 + os.Getpid()%400 // a unique "sleep N" command line
	svc := tcluster.ServiceScripts(bins)
	c := newCluster(t, tcluster.Options{
		Scripts: map[string]string{
			"start_second": fmt.Sprintf("#!/bin/sh\nsetsid sleep %d >/dev/null 2>&1 </dev/null &\necho $! >\"$TANDEM_STATE_DIR/helper.pid\"\n", helper),
			"stop_second":  "#!/bin/sh\n[ -s \"$TANDEM_STATE_DIR/helper.pid\" ] && kill -9 \"$(cat \"$TANDEM_STATE_DIR/helper.pid\")\" 2>/dev/null\nrm -f \"$TANDEM_STATE_DIR/helper.pid\"\nexit 0\n",
			"start_prim":   svc["start_prim"],
		},
		ModuleExtra: fmt.Sprintf(`checkers:
  - name: helper
    type: process
    pattern: '^sleep %d$'
    atleast: 1
    when: second
    interval: 100ms
  - name: port
    type: tcp
    address: 127.0.0.1:%d
    action: stopstart
    interval: 100ms
    timeout: 300ms
    failures: 2
  - name: web
    type: http
    url: http://127.0.0.1:8080/health
    body: 'status: up'
    action: stop
    interval: 100ms
    timeout: 300ms
    failures: 1
  - name: gw
    type: ping
    address: %s
    interval: 100ms
    timeout: 300ms
    failures: 2
`, helper, tcluster.AppPort, c0ClientAddr)})
	if got := c.Client.Addr("lan").String(); got != c0ClientAddr {
		t.Fatalf("the client's lan address is %s, the test assumes %s", got, c0ClientAddr)
	}
	// An HTTP health endpoint in each node's namespace, served by the test.
	var healthy [2]atomic.Bool
	for i, n := range []string{"alpha", "beta"} {
		healthy[i].Store(true)
		ln, err := c.Node(n).Host.Listen("tcp", "127.0.0.1:8080")
		must(t, err)
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if healthy[i].Load() {
				fmt.Fprintln(w, "status: up")
				return
			}
			http.Error(w, "status: down", http.StatusServiceUnavailable)
		})}
		go srv.Serve(ln)
		t.Cleanup(func() { srv.Shutdown(context.Background()) })
	}
	c.StartPair()
	c.WaitReach(vip4, "alpha", 5*time.Second)
	waitStatus(t, c, "alpha", 3*time.Second, "checkers ok", func(s api.ModuleStatus) bool {
		return checkerOf(s, "port").Verdict == "ok" && checkerOf(s, "web").Verdict == "ok" && checkerOf(s, "gw").Verdict == "ok"
	})
	waitStatus(t, c, "beta", 3*time.Second, "checkers ok", func(s api.ModuleStatus) bool {
		return checkerOf(s, "helper").Verdict == "ok" && checkerOf(s, "gw").Verdict == "ok" && !checkerOf(s, "port").Active
	})

	// process pattern, when: second, action restart: the SECOND's scripts
	// run again and bring the helper back; no role change.
	old := readPID(c, "beta", "helper.pid")
	killPID(t, old)
	waitStatus(t, c, "beta", 5*time.Second, "helper restarted", func(s api.ModuleStatus) bool {
		np := readPID(c, "beta", "helper.pid")
		return s.State == "SECOND" && s.Target == "" && s.Loop.Restarts == 1 && np != 0 && np != old
	})
	wantLogged(t, c, "beta", eventlog.KindChecker, "checker helper failed: 0 process(es) match")
	wantLogged(t, c, "beta", "warn", "restarting on beta (restart 1 of 2")
	if a := nodeStatus(t, c, "alpha"); a.State != "PRIM" {
		t.Errorf("alpha is %s after a restart on beta's SECOND", a.State)
	}

	// tcp, action stopstart: the service stops listening, the module is
	// handed over to beta at once.
	start := time.Now()
	killPID(t, readPID(c, "alpha", "app.pid"))
	c.WaitState("beta", "PRIM", 5*time.Second)
	c.WaitReach(vip4, "beta", 3*time.Second)
	t.Logf("tcp checker (stopstart): client served by beta %s after the kill", time.Since(start).Round(time.Millisecond))
	c.WaitState("alpha", "SECOND", 5*time.Second)
	wantLogged(t, c, "alpha", eventlog.KindChecker, "checker port failed: connect to 127.0.0.1:7000")
	wantLogged(t, c, "alpha", "warn", "failing over to beta (failover 1 of 1")

	// http, action stop: beta's health answer goes bad; beta stops the
	// module with the reason, alpha takes over.
	healthy[1].Store(false)
	st := c.WaitReason("beta", "STOP", "checker web failed", 5*time.Second)
	if !strings.Contains(st.Reason, "status 503, want 200") || !strings.Contains(st.Reason, "action stop") {
		t.Errorf("beta's reason %q", st.Reason)
	}
	c.WaitState("alpha", "ALONE", 5*time.Second)
	c.WaitReach(vip4, "alpha", 3*time.Second)
	healthy[1].Store(true)
	cli(t, c, "beta", "start", "web")
	c.WaitState("beta", "SECOND", 10*time.Second)
	c.WaitState("alpha", "PRIM", 5*time.Second)

	// ping, when: pre, action wait: alpha can no longer reach the client
	// (its gateway here); it leaves the service, beta takes over. Alpha
	// used its one failover of the window (tcp above): without a reset
	// the loop limit would stop it instead.
	cli(t, c, "alpha", "reset-loop", "web")
	alpha := c.Node("alpha").Host
	start = time.Now()
	must(t, alpha.DropFrom(c.Client))
	c.WaitState("beta", "ALONE", 5*time.Second)
	t.Logf("ping checker (wait): beta serves %s after alpha lost the client", time.Since(start).Round(time.Millisecond))
	c.WaitReach(vip4, "beta", 3*time.Second)
	a := c.WaitReason("alpha", "WAIT", "checker gw failed", 3*time.Second)
	if !strings.Contains(a.Reason, "ping 192.0.2.12") {
		t.Errorf("alpha's reason %q", a.Reason)
	}
	must(t, alpha.Undrop(c.Client))
	c.WaitState("alpha", "SECOND", 10*time.Second)
	wantLogged(t, c, "alpha", eventlog.KindChecker, "checker gw recovered", "answered")
	c.WaitState("beta", "PRIM", 5*time.Second)

	// tandem checkers shows them all.
	out := cli(t, c, "alpha", "checkers", "web")
	for _, w := range []string{"helper", "port", "web", "gw", "ping", "stopstart", "VERDICT"} {
		if !strings.Contains(out, w) {
			t.Errorf("tandem checkers: no %q in\n%s", w, out)
		}
	}
}

// c0ClientAddr is the client host's lan address in tcluster's bed (the
// third host: offset 12).
const c0ClientAddr = "192.0.2.12"
