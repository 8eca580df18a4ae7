package e2e

import (
	"os"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/api"
	"github.com/tandem-ha/tandem/internal/testbed/tcluster"
)

// Reproductions of bugs the resynchronisation tests found, skipped until
// they are fixed (the fix belongs to the agent, the state machine or the
// compare engine); TANDEM_KNOWN_BUGS=1 runs them.

func knownBug(t *testing.T, what string) {
	t.Helper()
	if os.Getenv("TANDEM_KNOWN_BUGS") == "" {
		t.Skip("known bug: " + what + "; set TANDEM_KNOWN_BUGS=1 to reproduce")
	}
}

// TestResyncFileComparedTwice: the returning node was a crashed primary
// (so the primary compares rather than trusts the recorded zones), the
// writer creates and removes checkpoints meanwhile (so directories are in
// the incremental scope), and 12 MiB of a 32 MiB file changed while it was
// away. The file is compared twice at once: once by its zones and once
// whole by the directory pass (its mtime differs), so 47 MB are hashed
// instead of ~13, and under resync_bandwidth (4 MiB/s) the changed blocks
// are sent twice (about 25 MB instead of 12.6, 11.8 s instead of 3 s).
func TestResyncFileComparedTwice(t *testing.T) {
	knownBug(t, "an incremental compare runs a file's zone task and a whole-file task from the directory pass in parallel")
	c := newCluster(t, tcluster.Options{Directories: []string{dataDir}, DefaultPrimary: tcluster.NoDefaultPrimary,
		Scripts:     writerAppKill(web, dataDir, tcluster.AppPort, "--rate 300"),
		ModuleExtra: "replication:\n  resync_bandwidth: 4MiB\n"})
	c.StartPair()
	waitPair(t, c, "alpha", "beta", 30*time.Second)
	alpha := c.Node("alpha").Host
	if out, err := alpha.Run("dd", "if=/dev/urandom", "of="+dataDir+"/ballast", "bs=1M", "count=32", "status=none"); err != nil {
		t.Fatalf("ballast: %v\n%s", err, out)
	}
	time.Sleep(time.Second)
	if _, err := c.Command("alpha", "swap", api.CommandOptions{}); err != nil {
		t.Fatal(err)
	}
	waitPair(t, c, "beta", "alpha", 30*time.Second)
	time.Sleep(time.Second)
	c.Kill9("beta") // a crashed primary: it returns with in-flight zones
	waitServing(t, c, "alpha", 0, 10*time.Second)
	if out, err := alpha.Run("sh", "-c", "cd "+dataDir+" && dd if=/dev/urandom of=ballast bs=1M count=12 seek=3 conv=notrunc status=none"); err != nil {
		t.Fatalf("rewrite: %v\n%s", err, out)
	}
	since := time.Now()
	c.Start("beta")
	ev := waitResync(t, c, "alpha", web, "complete", since, 60*time.Second)
	t.Logf("beta back: %s", resyncSummary(ev))
	waitPair(t, c, "alpha", "beta", 30*time.Second)
	checkWriter(t, c, "alpha", web, dataDir, true, "after the resync")
	// 12 MiB changed, plus the writer's few hundred KiB.
	if ex, sent := num(ev.Fields["bytes_examined"]), num(ev.Fields["bytes_sent"]); ex > 20e6 || sent > 16e6 {
		t.Errorf("for 12 MiB changed in a 32 MiB file the resync examined %.0f bytes and sent %.0f", ex, sent)
	}
}
