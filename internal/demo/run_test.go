package demo

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/testbed"
	"github.com/tandem-ha/tandem/internal/testbed/tcluster"
)

// buildTandem builds the tandem binary the demo runs (the test binary is
// not tandem, so the demo cannot run itself here).
func buildTandem(t *testing.T) string {
	t.Helper()
	if err := Check(); err != nil {
		t.Skipf("the demo cannot run here (CI runs it as root): %v", err)
	}
	bin := filepath.Join(t.TempDir(), "tandem")
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/tandem")
	cmd.Dir = tcluster.RepoRoot()
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/tandem: %v\n%s", err, out)
	}
	return bin
}

// leftovers lists what a bed left behind: namespaces, its run directory,
// its files, mounts, processes.
func leftovers(t *testing.T, bed string) []string {
	t.Helper()
	var out []string
	if ents, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), bed+"-") {
				out = append(out, "namespace "+e.Name())
			}
		}
	}
	for _, p := range []string{filepath.Join(testbed.RunRoot, bed), filepath.Join(os.TempDir(), "tandem-testbed-"+bed)} {
		if _, err := os.Lstat(p); err == nil {
			out = append(out, "path "+p)
		}
	}
	if mi, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, l := range strings.Split(string(mi), "\n") {
			if strings.Contains(l, bed) {
				out = append(out, "mount "+l)
			}
		}
	}
	procs, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, p := range procs {
		if b, err := os.ReadFile(p); err == nil && bytes.Contains(b, []byte(bed)) {
			out = append(out, "process "+strings.ReplaceAll(string(b), "\x00", " "))
		}
	}
	return out
}

func waitClean(t *testing.T, bed string) {
	t.Helper()
	// Close has returned when the demo exits; a short grace for reaping.
	deadline := time.Now().Add(3 * time.Second)
	for {
		l := leftovers(t, bed)
		if len(l) == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("bed %s left behind:\n%s", bed, strings.Join(l, "\n"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// `tandem demo --json` runs the whole story, loses nothing, fails over
// within 1.5 s and leaves nothing behind.
func TestDemoRun(t *testing.T) {
	bin := buildTandem(t)
	_, err := os.Stat(DataDir)
	had := err == nil
	t.Cleanup(func() {
		if _, err := os.Stat(DataDir); err == nil && !had {
			t.Errorf("%s left behind", DataDir)
			os.Remove(DataDir)
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, "demo", "--json")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err = cmd.Run()
	t.Logf("timeline:\n%s", stderr.String())
	var res Result
	if jerr := json.Unmarshal(stdout.Bytes(), &res); jerr != nil {
		t.Fatalf("tandem demo --json (%v): stdout is not one JSON object: %v\n%s", err, jerr, stdout.String())
	}
	if res.Dir != "" {
		// Kept after a failure: show why, then remove it (unless asked).
		if b, err := os.ReadFile(filepath.Join(res.Dir, "demo-failure.log")); err == nil {
			t.Logf("demo-failure.log:\n%s", b)
		}
		if os.Getenv(testbed.KeepEnv) != "1" {
			os.RemoveAll(res.Dir)
		} else {
			t.Logf("kept %s", res.Dir)
		}
	}
	if res.Bed != "" {
		waitClean(t, res.Bed)
	}
	if err != nil || !res.OK {
		t.Fatalf("tandem demo: %v, ok=%v, error %q", err, res.OK, res.Error)
	}
	if res.LostWrites != 0 || res.LostOnSecondary != 0 || res.AckedWrites == 0 || res.PresentWrites != res.AckedWrites {
		t.Errorf("acked %d, present %d, lost %d, lost on the secondary %d", res.AckedWrites, res.PresentWrites, res.LostWrites, res.LostOnSecondary)
	}
	if res.FailoverMS <= 0 || res.FailoverMS >= 1500 {
		t.Errorf("failover_ms %d, want 0 < x < 1500 with default heartbeats", res.FailoverMS)
	}
	if res.ClientGapMS <= 0 || res.ResyncMS <= 0 || res.FailbackMS <= 0 || !res.CopiesIdentical {
		t.Errorf("client_gap_ms %d, resync_ms %d, failback_ms %d, copies_identical %v", res.ClientGapMS, res.ResyncMS, res.FailbackMS, res.CopiesIdentical)
	}
	if len(res.Timeline) < 10 {
		t.Errorf("timeline has %d events", len(res.Timeline))
	}
}

var bedRE = regexp.MustCompile(`bed (tb[0-9a-f]{5})`)

// Ctrl-C in the middle (after the kill -9) removes everything and exits 130.
func TestDemoInterrupt(t *testing.T) {
	bin := buildTandem(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var stdout bytes.Buffer
	cmd := exec.CommandContext(ctx, bin, "demo", "--json")
	cmd.Stdout = &stdout
	errPipe, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var bed string
	var lines []string
	sc := bufio.NewScanner(errPipe)
	for sc.Scan() {
		l := sc.Text()
		lines = append(lines, l)
		if m := bedRE.FindStringSubmatch(l); m != nil && bed == "" {
			bed = m[1]
		}
		if strings.Contains(l, "took over") {
			if err := cmd.Process.Signal(syscall.SIGINT); err != nil {
				t.Fatal(err)
			}
		}
	}
	err = cmd.Wait()
	t.Logf("timeline:\n%s", strings.Join(lines, "\n"))
	if bed == "" {
		t.Fatal("no bed id in the timeline")
	}
	waitClean(t, bed)
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 130 {
		t.Errorf("exit: %v, want status 130", err)
	}
	var res Result
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil || !res.Interrupted || res.OK {
		t.Errorf("JSON after Ctrl-C: %v %+v", err, res)
	}
}
