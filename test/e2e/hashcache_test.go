package e2e

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/api"
	"github.com/tandem-ha/tandem/internal/eventlog"
	"github.com/tandem-ha/tandem/internal/replica/sumcache"
	"github.com/tandem-ha/tandem/internal/testbed/tcluster"
	"golang.org/x/sys/unix"
)

// TestFullCompareRemembersHashes: a full compare of unchanged files takes
// their hashes from memory on both nodes (replication.resync_hash_cache),
// still finds a file changed behind its back with its size and mtime put
// back, and the secondary's hashes survive a restart of its agent, clean
// or after kill -9 (saved when a resynchronisation ends).
func TestFullCompareRemembersHashes(t *testing.T) {
	c := newCluster(t, tcluster.Options{Directories: []string{dataDir}})
	alphaB, betaB := c.BackingDir("alpha", dataDir), c.BackingDir("beta", dataDir)
	const files = 1000
	fillTree(t, alphaB, 10, files/10, 700)
	if out, err := c.Node("alpha").Host.Run("cp", "-a", alphaB+"/.", betaB+"/"); err != nil {
		t.Fatalf("copy the tree to beta: %v\n%s", err, out)
	}
	fd, err := unix.Open(alphaB, unix.O_PATH|unix.O_DIRECTORY, 0)
	must(t, err)
	trusted := sumcache.Trusted(fd)
	unix.Close(fd)
	if !trusted {
		t.Skipf("%s: a filesystem whose ctimes the cache does not trust", alphaB)
	}
	// Only inodes unchanged for sumcache.Margin are remembered.
	time.Sleep(sumcache.Margin + 500*time.Millisecond)

	since := time.Now()
	c.StartModules()
	first := resyncDone(t, c, "alpha", since, 60*time.Second)
	t.Logf("first compare: %v", first)
	waitSynced(t, c, since)

	// A file changed on beta behind Tandem's back, as rsync's quick check
	// would miss it: same size, mtime put back.
	stopBeta(t, c)
	changed := filepath.Join(betaB, "d03", "f7")
	var st unix.Stat_t
	must(t, unix.Stat(changed, &st))
	b, err := os.ReadFile(changed)
	must(t, err)
	b[100] ^= 0xff
	must(t, os.WriteFile(changed, b, 0o644))
	must(t, unix.UtimesNano(changed, []unix.Timespec{st.Atim, st.Mtim}))

	f, n := secondFull(t, c)
	t.Logf("second compare: %v", f)
	if f["kind"] != "full" || num(f["hashes_reused"]) < files || num(f["bytes_sent"]) < 700 {
		t.Errorf("second --full: %v; want a full compare with every alpha file's hash remembered (%d) and the changed file sent", f, files)
	}
	if n < files-1 {
		t.Errorf("beta remembered %d hashes, want %d (all but the changed file)", n, files-1)
	}
	waitSame(t, c, 20*time.Second)

	// A clean restart of beta's agent saves its hashes and loads them.
	c.Sigterm("beta")
	if _, err := os.Stat(filepath.Join(c.ModuleStateDir("beta"), "hashes-0")); err != nil {
		t.Errorf("beta's agent stopped cleanly without saving its hashes: %v", err)
	}
	since = time.Now()
	c.Start("beta")
	waitSynced(t, c, since)
	stopBeta(t, c)
	f, n = secondFull(t, c)
	t.Logf("third compare: %v", f)
	if n < files-1 {
		t.Errorf("after its agent's restart beta remembered %d hashes, want at least %d", n, files-1)
	}
	if num(f["bytes_sent"]) != 0 {
		t.Errorf("identical copies, yet %v bytes sent", f["bytes_sent"])
	}
	waitSame(t, c, 20*time.Second)
	// The primary saved its hashes when its full compares ended, without
	// stopping.
	if _, err := os.Stat(filepath.Join(c.ModuleStateDir("alpha"), "hashes-0")); err != nil {
		t.Errorf("alpha did not save its hashes after its full compares: %v", err)
	}

	// Killed (no clean stop): beta still has the hashes it saved when the
	// last resynchronisation ended.
	saved := filepath.Join(c.ModuleStateDir("beta"), "hashes-0")
	must(t, os.Remove(saved))
	stopBeta(t, c)
	secondFull(t, c)
	deadline := time.Now().Add(15 * time.Second)
	for {
		if _, err := os.Stat(saved); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("beta did not save its hashes within 15 s of the resynchronisation's end")
		}
		time.Sleep(50 * time.Millisecond)
	}
	c.Kill9("beta")
	since = time.Now()
	c.Start("beta")
	waitSynced(t, c, since)
	stopBeta(t, c)
	if _, n := secondFull(t, c); n < files-1 {
		t.Errorf("after its agent was killed beta remembered %d hashes, want at least %d", n, files-1)
	}
	waitSame(t, c, 20*time.Second)
}

// secondFull runs `second --full` on beta (its module stopped) and waits
// for the full compare: alpha's resync complete fields, and how many
// files' hashes beta remembered.
func secondFull(t *testing.T, c *tcluster.Cluster) (map[string]any, int64) {
	t.Helper()
	since := time.Now()
	if _, err := c.Command("beta", "second", api.CommandOptions{Full: true}); err != nil {
		t.Fatalf("second --full on beta: %v", err)
	}
	f := resyncDone(t, c, "alpha", since, 60*time.Second)
	return f, waitSynced(t, c, since)
}

func stopBeta(t *testing.T, c *tcluster.Cluster) {
	t.Helper()
	if _, err := c.Command("beta", "stop", api.CommandOptions{}); err != nil {
		t.Fatalf("stop the module on beta: %v", err)
	}
	c.WaitState("beta", "STOP", 30*time.Second)
	c.WaitState("alpha", "ALONE", 15*time.Second)
}

// waitSynced waits for beta's "resynchronisation complete" event after
// since and returns how many files' hashes beta remembered in it.
func waitSynced(t *testing.T, c *tcluster.Cluster, since time.Time) int64 {
	t.Helper()
	_, e := waitEvent(t, c, []string{"beta"}, 60*time.Second, "resynchronisation complete on beta", func(e eventlog.Event) bool {
		return !e.Time.Before(since) && e.Kind == "info" && e.Fields["hashes_reused"] != nil
	})
	t.Logf("beta: %s", e.Msg)
	return int64(num(e.Fields["hashes_reused"]))
}
