package e2e

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/api"
	"github.com/tandem-ha/tandem/internal/eventlog"
	"github.com/tandem-ha/tandem/internal/testbed/tcluster"
)

// scriptNames are the eight module scripts of SPEC §9.
var scriptNames = []string{"prestart", "start_prim", "stop_prim", "start_both", "stop_both", "start_second", "stop_second", "poststop"}

// record appends "name current next action module node peer" to the
// node's calls file.
const record = `echo "$(basename "$0") $1 $2 $3 $TANDEM_MODULE $TANDEM_NODE $TANDEM_PEER" >>"$TANDEM_STATE_DIR/calls"
`

// tracedScripts records every call; prestart also saves its environment
// and working directory and prints a line; stop_prim hangs (until killed)
// while the file slow_stop exists in the state directory, unless forced.
func tracedScripts(b tcluster.Binaries) map[string]string {
	svc := tcluster.ServiceScripts(b)
	out := map[string]string{}
	for _, name := range scriptNames {
		body := "#!/bin/sh\n" + record
		switch name {
		case "prestart":
			body += `env | grep '^TANDEM_' | sort >"$TANDEM_STATE_DIR/env"
echo "PWD=$(pwd)" >>"$TANDEM_STATE_DIR/env"
echo "prestart says hello from $TANDEM_NODE"
`
		case "stop_prim":
			body += `if [ -e "$TANDEM_STATE_DIR/slow_stop" ] && [ "$3" != force ]; then sleep 30; fi
` + strings.TrimPrefix(svc[name], "#!/bin/sh\n")
		case "start_prim":
			body += strings.TrimPrefix(svc[name], "#!/bin/sh\n")
		}
		out[name] = body
	}
	return out
}

// calls returns the script calls recorded on node, without the module,
// node and peer (checked here against the node's own names).
func calls(t *testing.T, c *tcluster.Cluster, node string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(c.ModuleStateDir(node), "calls"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	peer := map[string]string{"alpha": "beta", "beta": "alpha"}[node]
	var out []string
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if l == "" {
			continue
		}
		f := strings.Fields(l)
		if len(f) != 7 || f[4] != tcluster.Module || f[5] != node || f[6] != peer {
			t.Errorf("%s: script call %q: want NAME CURRENT NEXT ACTION %s %s %s", node, l, tcluster.Module, node, peer)
			continue
		}
		out = append(out, strings.Join(f[:4], " "))
	}
	return out
}

// expectCalls checks the calls recorded on node since index from against
// want, where "|" separates accepted alternatives of one call; it returns
// the new index.
func expectCalls(t *testing.T, c *tcluster.Cluster, node, phase string, from int, want ...string) int {
	t.Helper()
	got := calls(t, c, node)
	if from > len(got) {
		from = len(got)
	}
	got = got[from:]
	ok := len(got) == len(want)
	for i := 0; ok && i < len(want); i++ {
		ok = false
		for _, alt := range strings.Split(want[i], "|") {
			if got[i] == alt {
				ok = true
			}
		}
	}
	if !ok {
		t.Errorf("%s on %s: scripts called\n  %s\nwant\n  %s", phase, node, strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
	return from + len(got)
}

// The eight scripts run in the documented order with (current state, next
// state, action) and the module's environment, on start, swap, failover
// and stop; a stop script that hangs past stop_timeout is killed and run
// again with "force".
func TestScriptSequence(t *testing.T) {
	c := newCluster(t, tcluster.Options{Scripts: tracedScripts(bins), StopTimeout: "1s"})
	c.StartPair()
	c.WaitReach(vip4, "alpha", 5*time.Second)

	na := expectCalls(t, c, "alpha", "start", 0,
		"prestart STOP WAIT start",
		"start_both WAIT ALONE start|start_both WAIT PRIM start",
		"start_prim WAIT ALONE start|start_prim WAIT PRIM start")
	nb := expectCalls(t, c, "beta", "start", 0,
		"prestart STOP WAIT start",
		"start_both WAIT SECOND start",
		"start_second WAIT SECOND start")

	for _, n := range []string{"alpha", "beta"} {
		b, err := os.ReadFile(filepath.Join(c.ModuleStateDir(n), "env"))
		must(t, err)
		env := string(b)
		for _, want := range []string{
			"TANDEM_MODULE=web\n", "TANDEM_NODE=" + n + "\n",
			"TANDEM_PEER=" + map[string]string{"alpha": "beta", "beta": "alpha"}[n] + "\n",
			"TANDEM_MODULE_DIR=" + c.ModuleDir() + "\n", "TANDEM_STATE_DIR=" + c.ModuleStateDir(n) + "\n",
			"TANDEM_VIPS=192.0.2.100/24\n", "PWD=" + c.ModuleDir() + "\n",
		} {
			if !strings.Contains(env, want) {
				t.Errorf("%s: script environment lacks %q:\n%s", n, strings.TrimSpace(want), env)
			}
		}
		waitEvent(t, c, []string{n}, 2*time.Second, "with prestart's output", func(e eventlog.Event) bool {
			return e.Kind == eventlog.KindOutput && e.Msg == "prestart says hello from "+n
		})
	}

	// Swap asked on the secondary: the primary's scripts stop first.
	if _, err := c.Command("beta", "swap", api.CommandOptions{}); err != nil {
		t.Fatal(err)
	}
	c.WaitState("beta", "PRIM", 10*time.Second)
	c.WaitState("alpha", "SECOND", 10*time.Second)
	c.WaitReach(vip4, "beta", 3*time.Second)
	na = expectCalls(t, c, "alpha", "swap", na,
		"stop_prim PRIM SECOND stop",
		"start_second PRIM SECOND start")
	nb = expectCalls(t, c, "beta", "swap", nb,
		"stop_second SECOND PRIM stop|stop_second SECOND ALONE stop",
		"start_prim SECOND PRIM start|start_prim SECOND ALONE start")

	// Stop on the primary: its module stops, the secondary takes over.
	if _, err := c.Command("beta", "stop", api.CommandOptions{}); err != nil {
		t.Fatal(err)
	}
	c.WaitState("beta", "STOP", 10*time.Second)
	c.WaitState("alpha", "ALONE", 10*time.Second)
	c.WaitReach(vip4, "alpha", 3*time.Second)
	expectCalls(t, c, "beta", "stop", nb,
		"stop_prim PRIM STOP stop",
		"stop_both PRIM STOP stop",
		"poststop PRIM STOP stop")
	na = expectCalls(t, c, "alpha", "failover", na,
		"stop_second SECOND ALONE stop",
		"start_prim SECOND ALONE start")

	// A stop_prim that hangs past stop_timeout (1s) is killed and run
	// again with action "force"; the stop goes on.
	must(t, os.WriteFile(filepath.Join(c.ModuleStateDir("alpha"), "slow_stop"), nil, 0o644))
	start := time.Now()
	if _, err := c.Command("alpha", "stop", api.CommandOptions{}); err != nil {
		t.Fatal(err)
	}
	c.WaitState("alpha", "STOP", 15*time.Second)
	t.Logf("stop with a hanging stop_prim took %s", time.Since(start).Round(time.Millisecond))
	expectCalls(t, c, "alpha", "stop with a hanging stop_prim", na,
		"stop_prim ALONE STOP stop",
		"stop_prim ALONE STOP force",
		"stop_both ALONE STOP stop",
		"poststop ALONE STOP stop")
	waitEvent(t, c, []string{"alpha"}, time.Second, "saying stop_prim was forced", func(e eventlog.Event) bool {
		return e.Kind == eventlog.KindScript && strings.Contains(e.Msg, "stop_prim timed out") && strings.Contains(e.Msg, "force")
	})
	if h := c.Holder(vip4); h != "" {
		t.Errorf("VIP still on %s with the module stopped on both nodes", h)
	}
}

const failingStartPrim = `#!/bin/sh
if [ -e "$TANDEM_STATE_DIR/fail" ]; then
  echo "starting the service on $TANDEM_NODE"
  echo "cannot bind port 7000: address already in use"
  exit 1
fi
`

// A start_prim that fails on the primary (here on a restart) stops the
// module there with a reason naming the script, its exit code and its last
// output line; the secondary takes over and serves the client.
func TestStartPrimFails(t *testing.T) {
	start := failingStartPrim + strings.TrimPrefix(tcluster.ServiceScripts(bins)["start_prim"], "#!/bin/sh\n")
	c := newCluster(t, tcluster.Options{Scripts: map[string]string{"start_prim": start}})
	c.StartPair()
	c.WaitReach(vip4, "alpha", 5*time.Second)

	must(t, os.WriteFile(filepath.Join(c.ModuleStateDir("alpha"), "fail"), nil, 0o644))
	if _, err := c.Command("alpha", "restart", api.CommandOptions{}); err != nil {
		t.Fatal(err)
	}
	st := c.WaitReason("alpha", "STOP", "start_prim exited 1", 10*time.Second)
	t.Logf("alpha: %s (%s)", st.State, st.Reason)
	if !strings.Contains(st.Reason, "cannot bind port 7000: address already in use") {
		t.Errorf("alpha's reason %q does not show start_prim's last output line", st.Reason)
	}
	if st.Started {
		t.Errorf("alpha still marked started after its start failed")
	}
	b := c.WaitState("beta", "ALONE", 5*time.Second)
	c.WaitReach(vip4, "beta", 3*time.Second)
	if b.VIPHolder != "beta" {
		t.Errorf("beta after takeover: %+v", b)
	}
	waitEvent(t, c, []string{"alpha"}, time.Second, `of kind "error" naming start_prim`, func(e eventlog.Event) bool {
		return e.Kind == eventlog.KindError && strings.Contains(e.Msg, "start_prim exited 1")
	})
	if h := c.Holder(vip4); h != "beta" {
		t.Errorf("VIP holder %q, want beta", h)
	}
}

// On a first start, a start_prim that fails on the default primary stops
// the module there; the other node either takes over or waits and says how
// to proceed (its copy was never synchronised with alpha's).
func TestStartPrimFailsFirstStart(t *testing.T) {
	start := failingStartPrim + strings.TrimPrefix(tcluster.ServiceScripts(bins)["start_prim"], "#!/bin/sh\n")
	c := newCluster(t, tcluster.Options{Scripts: map[string]string{"start_prim": start}})
	must(t, os.MkdirAll(c.ModuleStateDir("alpha"), 0o700))
	must(t, os.WriteFile(filepath.Join(c.ModuleStateDir("alpha"), "fail"), nil, 0o644))
	c.Start("alpha")
	c.Start("beta")
	for _, n := range []string{"alpha", "beta"} {
		c.WaitAgent(n)
		if _, err := c.Command(n, "start", api.CommandOptions{}); err != nil {
			t.Fatalf("start module on %s: %v", n, err)
		}
	}
	st := c.WaitReason("alpha", "STOP", "start_prim exited 1", 10*time.Second)
	t.Logf("alpha: %s (%s)", st.State, st.Reason)
	deadline := time.Now().Add(5 * time.Second)
	var b api.ModuleStatus
	for time.Now().Before(deadline) {
		b, _ = c.Status("beta")
		if b.Target == "" && (b.State == "ALONE" || (b.State == "WAIT" && strings.Contains(b.Reason, "--force"))) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("beta: %s (%s)", b.State, b.Reason)
	switch {
	case b.State == "ALONE":
		c.WaitReach(vip4, "beta", 3*time.Second)
	case b.State == "WAIT" && strings.Contains(b.Reason, "--force"):
	default:
		t.Errorf("beta after alpha's failed first start: %s (%q), want ALONE or WAIT saying what to do", b.State, b.Reason)
	}
}
