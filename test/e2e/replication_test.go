package e2e

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/replica/treecmp"
	"github.com/tandem-ha/tandem/internal/testbed/tcluster"
)

const dataDir = "/srv/tandem-data"

// waitSame waits until both copies of the replicated directory are equal.
func waitSame(t *testing.T, c *tcluster.Cluster, within time.Duration) {
	t.Helper()
	a, b := c.BackingDir("alpha", dataDir), c.BackingDir("beta", dataDir)
	deadline := time.Now().Add(within)
	var diffs []treecmp.Diff
	var err error
	for time.Now().Before(deadline) {
		diffs, err = treecmp.Compare(a, b, treecmp.Options{MaxDiffs: 10})
		if err == nil && len(diffs) == 0 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("copies differ after %s: %v %v", within, diffs, err)
}

// Files written through the primary's directory appear on the secondary;
// a joining secondary gets the whole tree first.
func TestReplicationBasic(t *testing.T) {
	c := newCluster(t, tcluster.Options{Directories: []string{dataDir}})
	// Data that exists before the module starts is the primary's reference.
	must(t, os.WriteFile(filepath.Join(c.BackingDir("alpha", dataDir), "before.txt"), []byte("old data\n"), 0o644))
	must(t, os.WriteFile(filepath.Join(c.BackingDir("beta", dataDir), "stale.txt"), []byte("must go\n"), 0o644))
	c.StartPair()
	alpha := c.Node("alpha").Host
	out, err := alpha.Run("sh", "-c", "cd "+dataDir+" && mkdir -p d/e && echo hello > d/e/f && ln d/e/f hard && ln -s d/e/f soft && "+
		"dd if=/dev/urandom of=big bs=1M count=8 status=none && mv big big2 && chmod 600 big2 && sync")
	if err != nil {
		t.Fatalf("writes through the mount: %v\n%s", err, out)
	}
	waitSame(t, c, 10*time.Second)
	// The secondary's directory is read-only to everything but the agent.
	if out, err := c.Node("beta").Host.Run("sh", "-c", "echo x > "+dataDir+"/intruder"); err == nil {
		t.Errorf("secondary directory writable: %s", out)
	}
}

// The no-loss proof in its simplest form: a writer acknowledges durable
// records, the primary is killed, and every acknowledged record is on the
// new primary.
func TestReplicationNoLossOnKill(t *testing.T) {
	c := newCluster(t, tcluster.Options{Directories: []string{dataDir}})
	c.StartPair()
	ack := filepath.Join(c.Dir(), "acks.log")
	w, err := c.Node("alpha").Host.Start(bins.Writer, "run", "--dir", dataDir, "--ack-log", ack, "--duration", "30s", "--size", "512")
	must(t, err)
	time.Sleep(1500 * time.Millisecond)
	c.Kill9("alpha", w)
	c.WaitState("beta", "ALONE", 5*time.Second)
	out, err := c.Node("beta").Host.Run(bins.Writer, "verify", "--dir", dataDir, "--ack-log", ack)
	t.Logf("verify on beta: %s", out)
	if err != nil {
		t.Fatalf("acknowledged writes lost: %v", err)
	}
}
