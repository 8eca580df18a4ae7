package e2e

import (
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/testbed"
	"github.com/tandem-ha/tandem/internal/testbed/tcluster"
)

// A real SQLite application on the replicated directory, in both journal
// modes: it commits transactions and acknowledges each one outside the
// cluster once COMMIT returned; the primary (agent and application) is
// killed at a random moment; on the new primary SQLite recovers the
// database (WAL replay, hot-journal rollback), which must pass
// integrity_check and hold every acknowledged transaction. The application
// then goes on, on the new primary, from where the database ends.
func TestSQLiteFailover(t *testing.T) {
	for _, journal := range []string{"wal", "delete"} {
		t.Run(journal, func(t *testing.T) { sqliteFailover(t, journal) })
	}
}

func sqliteFailover(t *testing.T, journal string) {
	begin := time.Now()
	c := newCluster(t, tcluster.Options{Directories: []string{dataDir}})
	c.StartPair()
	alpha, beta := c.Node("alpha").Host, c.Node("beta").Host
	ack := filepath.Join(c.Dir(), "sqlite-acks.log")
	w, err := alpha.Start(bins.SQLiteWriter, "run", "--dir", dataDir, "--ack-log", ack, "--journal", journal, "--duration", "60s")
	must(t, err)
	writing := time.Now()
	waitAcks(t, w, ack, 20, 15*time.Second)
	time.Sleep(time.Duration(300+mrand.IntN(2000)) * time.Millisecond)
	select {
	case <-w.Done():
		log, _ := os.ReadFile(w.LogPath)
		t.Fatalf("the SQLite writer stopped before the kill:\n%s", log)
	default:
	}
	c.Kill9("alpha", w)
	killed := time.Now()
	acked := countLines(ack)
	t.Logf("%s: kill -9 of alpha (agent and SQLite writer) after %d acknowledged transactions in %s (%.0f tx/s)",
		journal, acked, killed.Sub(writing).Round(time.Millisecond), float64(acked)/killed.Sub(writing).Seconds())

	c.WaitState("beta", "ALONE", 5*time.Second)
	out, err := beta.Run(bins.SQLiteWriter, "verify", "--dir", dataDir, "--ack-log", ack)
	t.Logf("verify on beta after failover: %s", strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("%s: the database on beta after failover lost acknowledged transactions or is damaged: %v", journal, err)
	}
	if !strings.Contains(out, "journal "+journal) {
		t.Errorf("verify on beta: journal mode not %s: %s", journal, out)
	}

	// The application goes on on the new primary.
	out, err = beta.Run(bins.SQLiteWriter, "run", "--dir", dataDir, "--ack-log", ack, "--journal", journal, "--duration", "1s")
	if err != nil {
		t.Fatalf("the SQLite writer does not go on on beta: %v", err)
	}
	t.Logf("writer on beta: %s", strings.Join(strings.Fields(out), " "))
	out, err = beta.Run(bins.SQLiteWriter, "verify", "--dir", dataDir, "--ack-log", ack)
	if err != nil {
		t.Fatalf("verify after writing on beta: %v\n%s", err, out)
	}
	t.Logf("%s: test took %s", journal, time.Since(begin).Round(time.Millisecond))
}

// waitAcks waits until the ack log has n lines; it fails early with the
// writer's log when the writer died.
func waitAcks(t *testing.T, w *testbed.Proc, ack string, n int, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	for countLines(ack) < n {
		select {
		case <-w.Done():
			log, _ := os.ReadFile(w.LogPath)
			t.Fatalf("the writer exited after %d acknowledgements; its log:\n%s", countLines(ack), log)
		default:
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(w.LogPath)
			t.Fatalf("fewer than %d acknowledgements in %s after %s; writer log:\n%s", n, ack, within, log)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func countLines(path string) int {
	b, _ := os.ReadFile(path)
	return strings.Count(string(b), "\n")
}
