package main

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/api"
)

func TestMaintenanceVerbs(t *testing.T) {
	f := newFake(t)
	f.mods[0].Maintenance = api.Maintenance{Checkers: "on", Failover: "off", BootStart: "on"}
	f.mods[0].Loop = api.LoopStatus{Restarts: 1, MaxRestarts: 2, MaxFailovers: 1, Window: "1h0m0s", Since: time.Now()}
	f.mods[0].Checkers = []api.CheckerStatus{{Name: "app", Type: "process", When: "prim", Action: "restart", Active: true,
		Verdict: "ok", Detail: "process 42 is running", Since: time.Now(), Checks: 10, Failures: 1, Actions: 1}}
	sock := startAPI(t, f)

	code, out, errs := runCLI("--api", sock, "maintenance", "web", "--checkers", "off", "--boot-start", "on")
	if code != 0 || f.lastCmd != "web maintenance" || f.lastOpt != (api.CommandOptions{Checkers: "off", BootStart: "on"}) {
		t.Errorf("maintenance: exit %d out %q err %q; sent %q %+v", code, out, errs, f.lastCmd, f.lastOpt)
	}
	if code, _, errs := runCLI("--api", sock, "maintenance", "web", "--failover", "maybe"); code != exitUsage || !strings.Contains(errs, "give on or off") {
		t.Errorf("bad value: exit %d err %q", code, errs)
	}

	code, out, _ = runCLI("--api", sock, "maintenance", "web")
	for _, w := range []string{"web on alpha (PRIM): checkers on, failover off, boot start on", "loop: 1 of 2 restarts, 0 of 1 failovers within 1h0m0s",
		"CHECKER", "app", "process 42 is running"} {
		if code != 0 || !strings.Contains(out, w) {
			t.Errorf("maintenance web (exit %d): no %q in\n%s", code, w, out)
		}
	}
	code, out, _ = runCLI("--api", sock, "checkers", "--json")
	var j struct {
		Modules []struct {
			Module      string
			Checkers    []api.CheckerStatus
			Maintenance api.Maintenance
		}
	}
	if err := json.Unmarshal([]byte(out), &j); code != 0 || err != nil || len(j.Modules) != 2 || len(j.Modules[0].Checkers) != 1 ||
		j.Modules[0].Maintenance.Failover != "off" || j.Modules[1].Checkers == nil {
		t.Errorf("checkers --json: exit %d err %v\n%s", code, err, out)
	}
	code, out, _ = runCLI("--api", sock, "checkers", "db")
	if code != 0 || !strings.Contains(out, "no checkers") {
		t.Errorf("checkers db: exit %d\n%s", code, out)
	}

	code, out, _ = runCLI("--api", sock, "reset-loop", "web")
	if code != 0 || f.lastCmd != "web reset-loop" || !strings.Contains(out, "reset-loop web: done") {
		t.Errorf("reset-loop: exit %d out %q sent %q", code, out, f.lastCmd)
	}
	if code, _, _ := runCLI("--api", sock, "reset-loop", "nope"); code != exitFailed {
		t.Errorf("reset-loop of an unknown module: exit %d", code)
	}
}
