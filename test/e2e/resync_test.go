package e2e

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/api"
	"github.com/tandem-ha/tandem/internal/eventlog"
	"github.com/tandem-ha/tandem/internal/testbed/tcluster"
)

// resyncDone waits for the primary's "resync complete" event after since
// and returns its fields (kind, bytes_sent, bytes_examined, ...).
func resyncDone(t *testing.T, c *tcluster.Cluster, node string, since time.Time, within time.Duration) map[string]any {
	t.Helper()
	_, e := waitEvent(t, c, []string{node}, within, "resync complete", func(e eventlog.Event) bool {
		return e.Kind == "resync" && !e.Time.Before(since) && e.Fields["result"] == "complete"
	})
	return e.Fields
}

func num(v any) float64 {
	f, _ := v.(float64)
	return f
}

// TestIncrementalResyncAfterPeerAway: the secondary is away while the
// primary goes on writing (rewrites in a big file, files created, removed,
// renamed, a file moved over its twin of the same size and mtime, a file
// created again where it was with a hole in the middle); when it
// returns it gets only what changed, while the
// application keeps writing, and both copies end identical.
func TestIncrementalResyncAfterPeerAway(t *testing.T) {
	c := newCluster(t, tcluster.Options{Directories: []string{dataDir}})
	alpha := c.Node("alpha").Host
	c.StartPair()
	out, err := alpha.Run("sh", "-c", "cd "+dataDir+" && mkdir -p keep/sub && "+
		"dd if=/dev/urandom of=big bs=1M count=64 status=none && "+
		"for i in $(seq 1 200); do echo file $i > keep/f$i; done && echo gone > keep/sub/gone && echo old > moved && "+
		// Twins: same size, same first and last 128 KiB, same mtime,
		// different middles; one is moved over the other below.
		"dd if=/dev/zero of=twinA bs=64k count=16 status=none && cp twinA twinB && "+
		"dd if=/dev/urandom of=twinA bs=64k seek=2 count=12 conv=notrunc status=none && "+
		"dd if=/dev/urandom of=twinB bs=64k seek=2 count=12 conv=notrunc status=none && "+
		"touch -d '2020-01-02 03:04:05' twinA twinB && "+
		"dd if=/dev/urandom of=holey bs=64k count=3 status=none && sync")
	if err != nil {
		t.Fatalf("initial tree: %v\n%s", err, out)
	}
	waitSame(t, c, 30*time.Second)
	// Identical is not yet durable on beta: the periodic SyncAll (every
	// 0.5 s) acknowledges the tree; killed before, beta would rightly get
	// the unacknowledged extents again.
	time.Sleep(1500 * time.Millisecond)

	c.Kill9("beta")
	c.WaitState("alpha", "ALONE", 5*time.Second)
	// While beta is away: 1 % of big's 4 KiB blocks rewritten, files
	// created, removed, renamed, a mode changed.
	seed := time.Now().UnixNano()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(uint64(seed), 1))
	script := "cd " + dataDir + " && "
	for range 164 { // 1 % of 16384 blocks
		script += fmt.Sprintf("dd if=/dev/urandom of=big bs=4k count=1 seek=%d conv=notrunc status=none && ", rng.IntN(16384))
	}
	script += "for i in $(seq 1 20); do echo new $i > keep/n$i; done && rm keep/sub/gone && mv moved keep/sub/moved && mv twinA twinB && chmod 600 keep/f7 && "
	// Created again where it was, with a hole in the middle: the old
	// file's bytes there must not survive on beta.
	script += "rm holey && dd if=/dev/urandom of=holey bs=64k count=1 status=none && dd if=/dev/urandom of=holey bs=64k seek=2 count=1 conv=notrunc status=none && sync"
	if out, err := alpha.Run("sh", "-c", script); err != nil {
		t.Fatalf("changes while alone: %v\n%s", err, out)
	}

	// The application keeps writing while beta comes back.
	stop := make(chan struct{})
	writerDone := make(chan error, 1)
	go func() {
		var err error
		for i := 0; err == nil; i++ {
			select {
			case <-stop:
				writerDone <- nil
				return
			default:
			}
			_, err = alpha.Run("sh", "-c", fmt.Sprintf("cd %s && echo live %d >> live.log && dd if=/dev/urandom of=big bs=4k count=1 seek=%d conv=notrunc status=none", dataDir, i, i%16384))
			time.Sleep(20 * time.Millisecond)
		}
		writerDone <- err
	}()
	since := time.Now()
	c.Start("beta")
	f := resyncDone(t, c, "alpha", since, 60*time.Second)
	close(stop)
	if err := <-writerDone; err != nil {
		t.Fatalf("the application's writes failed during the resync: %v", err)
	}
	t.Logf("resync: %v", f)
	if f["kind"] != "incremental" {
		t.Fatalf("resync kind %v, want incremental (fields %v)", f["kind"], f)
	}
	// Changed: ~164 blocks of 4 KiB (zones of 64 KiB: at most 164 zones)
	// plus small files; the tree holds 64 MiB.
	if sent := num(f["bytes_sent"]); sent <= 0 || sent > 16<<20 {
		t.Fatalf("incremental resync sent %.0f bytes; want some, and far less than the 64 MiB tree", sent)
	}
	c.WaitState("beta", "SECOND", 10*time.Second)
	waitSame(t, c, 30*time.Second)
}

// TestResyncTakesBackCrashedPrimaryWrites: the primary is killed during a
// heavy write load; writes it made locally but its peer never
// acknowledged must not survive on it. The new primary writes on; the old
// one comes back as SECOND and ends identical to it.
func TestResyncTakesBackCrashedPrimaryWrites(t *testing.T) {
	c := newCluster(t, tcluster.Options{Directories: []string{dataDir}})
	alpha, beta := c.Node("alpha").Host, c.Node("beta").Host
	c.StartPair()
	if out, err := alpha.Run("sh", "-c", "cd "+dataDir+" && dd if=/dev/urandom of=big bs=1M count=32 status=none && sync"); err != nil {
		t.Fatalf("initial file: %v\n%s", err, out)
	}
	waitSame(t, c, 30*time.Second)
	// Heavy writes: random blocks rewritten and files appended, no fsync.
	w, err := alpha.Start("sh", "-c", "cd "+dataDir+" && i=0; while true; do i=$((i+1)); "+
		"dd if=/dev/urandom of=big bs=64k count=4 seek=$((i % 500)) conv=notrunc status=none; echo $i >> seq.log; done")
	must(t, err)
	time.Sleep(1500 * time.Millisecond)
	c.Kill9("alpha", w)
	c.WaitState("beta", "ALONE", 5*time.Second)
	if out, err := beta.Run("sh", "-c", "cd "+dataDir+" && echo after >> seq.log && dd if=/dev/urandom of=big bs=64k count=2 seek=100 conv=notrunc status=none && sync"); err != nil {
		t.Fatalf("writes on the new primary: %v\n%s", err, out)
	}
	since := time.Now()
	c.Start("alpha")
	f := resyncDone(t, c, "beta", since, 60*time.Second)
	t.Logf("resync: %v", f)
	c.WaitState("alpha", "SECOND", 10*time.Second)
	waitSame(t, c, 30*time.Second)
	if f["kind"] != "incremental" {
		t.Errorf("resync kind %v, want incremental: the old primary's in-flight zones are known", f["kind"])
	}
}

// TestChangeRecordsSurviveAgentCrash: the ALONE node's agent is killed
// (kill -9, like a power cut of the agent) after changes; on restart its
// records still name them and the returning peer gets them incrementally.
func TestChangeRecordsSurviveAgentCrash(t *testing.T) {
	c := newCluster(t, tcluster.Options{Directories: []string{dataDir}})
	alpha := c.Node("alpha").Host
	c.StartPair()
	if out, err := alpha.Run("sh", "-c", "cd "+dataDir+" && dd if=/dev/urandom of=big bs=1M count=32 status=none && sync"); err != nil {
		t.Fatalf("initial file: %v\n%s", err, out)
	}
	waitSame(t, c, 30*time.Second)
	// The records drop what the peer made durable within a few seconds
	// (a SyncAll every 0.5 s, a checkpoint every 2 s).
	time.Sleep(3 * time.Second)
	c.Sigterm("beta")
	c.WaitState("alpha", "ALONE", 10*time.Second)
	if out, err := alpha.Run("sh", "-c", "cd "+dataDir+" && dd if=/dev/urandom of=big bs=4k count=3 seek=777 conv=notrunc status=none && echo x > newfile && sync"); err != nil {
		t.Fatalf("changes while alone: %v\n%s", err, out)
	}
	c.Kill9("alpha")
	// alpha restarts first: it was the last primary and knows it is up to date.
	c.Start("alpha")
	c.WaitState("alpha", "ALONE", 30*time.Second)
	since := time.Now()
	c.Start("beta")
	f := resyncDone(t, c, "alpha", since, 60*time.Second)
	t.Logf("resync: %v", f)
	if f["kind"] != "incremental" {
		t.Fatalf("resync kind %v after an agent crash, want incremental (records lost?)", f["kind"])
	}
	if sent := num(f["bytes_sent"]); sent > 8<<20 {
		t.Fatalf("sent %.0f bytes for 12 KiB of changes", sent)
	}
	waitSame(t, c, 30*time.Second)
	b, err := os.ReadFile(filepath.Join(c.BackingDir("beta", dataDir), "newfile"))
	if err != nil || string(b) != "x\n" {
		t.Fatalf("newfile on beta: %q %v", b, err)
	}
}

// TestResyncProgressAndBandwidthCap: a full compare (second --full) of a
// SECOND whose copy lacks a file runs under resync_bandwidth; while it
// runs, status shows its progress on both nodes (kind, bytes, rate, ETA,
// resync_percent), and the data sent respects the cap.
func TestResyncProgressAndBandwidthCap(t *testing.T) {
	c := newCluster(t, tcluster.Options{Directories: []string{dataDir},
		ModuleExtra: "replication:\n  resync_bandwidth: 2MiB\n"})
	alpha := c.Node("alpha").Host
	c.StartPair()
	if out, err := alpha.Run("sh", "-c", "cd "+dataDir+" && echo x > small && sync"); err != nil {
		t.Fatalf("initial file: %v\n%s", err, out)
	}
	waitSame(t, c, 30*time.Second)
	c.Sigterm("beta")
	c.WaitState("alpha", "ALONE", 10*time.Second)
	// 8 MiB written while beta is away: at 2 MiB/s about 4 s to resend.
	if out, err := alpha.Run("sh", "-c", "cd "+dataDir+" && dd if=/dev/urandom of=big bs=1M count=8 status=none && sync"); err != nil {
		t.Fatalf("changes while alone: %v\n%s", err, out)
	}
	since := time.Now()
	c.Start("beta")
	var sawPrim, sawSecond bool
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) && !(sawPrim && sawSecond) {
		if st, err := c.Status("alpha"); err == nil && st.Resync != nil && st.Resync.BytesDone > 0 && st.Resync.RateBps > 0 {
			t.Logf("alpha: %s resync %.1f%%: %d of %d bytes, %d left, %d sent, %.0f B/s, ETA %.1fs",
				st.Resync.Kind, st.ResyncPercent, st.Resync.BytesDone, st.Resync.BytesTotal, st.Resync.BytesLeft, st.Resync.BytesSent, st.Resync.RateBps, st.Resync.ETASeconds)
			if st.Sync != "resyncing" || st.ResyncPercent <= 0 || st.ResyncPercent >= 100 || st.Resync.BytesLeft <= 0 {
				t.Errorf("alpha status during the resync: sync %q, %.1f%%, %d bytes left", st.Sync, st.ResyncPercent, st.Resync.BytesLeft)
			}
			sawPrim = true
		}
		if st, err := c.Status("beta"); err == nil && st.Resync != nil && st.State == "SECOND" && st.Sync == "resyncing" {
			sawSecond = true
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !sawPrim || !sawSecond {
		t.Fatalf("progress not seen in status during the resync (primary %v, SECOND %v)", sawPrim, sawSecond)
	}
	f := resyncDone(t, c, "alpha", since, 60*time.Second)
	t.Logf("resync: %v", f)
	sent, secs := num(f["bytes_sent"]), num(f["seconds"])
	if sent < 8<<20 || secs <= 0 {
		t.Fatalf("resync sent %.0f bytes in %.2fs: want the 8 MiB file", sent, secs)
	}
	if rate := sent / secs; rate > 3<<20 {
		t.Fatalf("resync ran at %.0f B/s: the 2 MiB/s cap was not applied", rate)
	}
	waitSame(t, c, 30*time.Second)
}

// TestResyncFileComparedTwice: the returning node was a crashed primary
// (so the primary compares rather than trusts the recorded zones), the
// writer creates and removes checkpoints meanwhile (so directories are in
// the incremental scope), and 12 MiB of a 32 MiB file changed while it was
// away. The file must be compared once, on its zones: it was compared
// twice at once, by its zones and whole by a second listing of its
// directory (its mtime differs; both nodes' records named the directory),
// so 47 MB were hashed instead of ~13, and under resync_bandwidth
// (4 MiB/s) the changed blocks were sent twice (about 25 MB instead of
// 12.6, 11.8 s instead of 3 s).
func TestResyncFileComparedTwice(t *testing.T) {
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

// TestFullResyncResumes: a full resync interrupted by the SECOND's crash
// resumes where it was, not from zero. Changes made meanwhile, before
// and after that point, arrive through the records; the copies end
// identical.
func TestFullResyncResumes(t *testing.T) {
	c := newCluster(t, tcluster.Options{Directories: []string{dataDir},
		ModuleExtra: "replication:\n  resync_bandwidth: 8MiB\n"})
	// 96 MiB in 12 directories, there before the module starts: about
	// 12 s at the cap.
	const total = 12 * 4 * 2 << 20
	fillTree(t, c.BackingDir("alpha", dataDir), 12, 4, 2<<20)
	c.StartModules()
	c.WaitState("beta", "SECOND", 15*time.Second)
	// Wait until the primary recorded a point past a quarter of the tree.
	point := filepath.Join(c.ModuleStateDir("alpha"), "changes", "0", "resume")
	var from string
	for deadline := time.Now().Add(20 * time.Second); from < "d03"; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no resume point past d03 within 20s (last %q)", from)
		}
		var rp struct{ From string }
		if b, err := os.ReadFile(point); err == nil && json.Unmarshal(b, &rp) == nil && rp.From != from {
			from = rp.From
			t.Logf("resume point %q", from)
		}
	}
	t.Logf("resume point %q; killing beta", from)
	c.Kill9("beta")
	c.WaitState("alpha", "ALONE", 10*time.Second)
	alpha := c.Node("alpha").Host
	if out, err := alpha.Run("sh", "-c", "cd "+dataDir+" && echo early > d00/new && dd if=/dev/zero of=d01/f2 bs=4k count=2 seek=100 conv=notrunc status=none && "+
		"echo late > d11/new && rm d10/f1 && sync"); err != nil {
		t.Fatalf("changes while beta is away: %v\n%s", err, out)
	}
	since := time.Now()
	c.Start("beta")
	_, started := waitEvent(t, c, []string{"alpha"}, 30*time.Second, "resync started", func(e eventlog.Event) bool {
		return e.Kind == "resync" && !e.Time.Before(since) && e.Fields["result"] == "started"
	})
	if rf, _ := started.Fields["resumed_from"].(string); rf < from {
		t.Errorf("the resync after the crash started with %v, want it resumed from %q or later", started.Fields, from)
	}
	f := resyncDone(t, c, "alpha", since, 60*time.Second)
	t.Logf("resumed resync: %v", f)
	if ex := num(f["bytes_examined"]); ex <= 0 || ex > 0.85*total {
		t.Errorf("the resumed resync examined %.0f of %d bytes", ex, total)
	}
	waitSame(t, c, 30*time.Second)
	if st := c.WaitState("beta", "SECOND", 10*time.Second); st.Sync != "synced" {
		t.Errorf("beta after the resync: %s %s", st.State, st.Sync)
	}
}

// TestResumeDroppedWhenRolesChange: after an interrupted full resync the
// primary keeps a resume point and the SECOND the run's mark. Once the
// SECOND serves (prim --force), neither may be used: the mark goes when
// it serves, the point when the old primary becomes SECOND, and the
// resync that follows starts from the beginning.
func TestResumeDroppedWhenRolesChange(t *testing.T) {
	c := newCluster(t, tcluster.Options{Directories: []string{dataDir},
		ModuleExtra: "replication:\n  resync_bandwidth: 4MiB\n"})
	fillTree(t, c.BackingDir("alpha", dataDir), 6, 4, 2<<20)
	c.StartModules()
	point := filepath.Join(c.ModuleStateDir("alpha"), "changes", "0", "resume")
	mark := filepath.Join(c.ModuleStateDir("beta"), "changes", "0", "resume-token")
	exists := func(p string) bool { _, err := os.Stat(p); return err == nil }
	for deadline := time.Now().Add(20 * time.Second); !exists(point) || !exists(mark); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no resume point (%v) and mark (%v) within 20s", exists(point), exists(mark))
		}
	}
	c.Kill9("beta")
	c.WaitState("alpha", "ALONE", 10*time.Second)
	c.Sigterm("alpha")
	c.Start("beta")
	c.WaitAgent("beta")
	c.Command("beta", "start", api.CommandOptions{}) // may be starting already
	c.WaitReason("beta", "WAIT", "--force", 15*time.Second)
	if _, err := c.Command("beta", "prim", api.CommandOptions{Force: true}); err != nil {
		t.Fatalf("prim --force on beta: %v", err)
	}
	c.WaitState("beta", "ALONE", 10*time.Second)
	if exists(mark) {
		t.Error("beta serves and still keeps the mark of alpha's full compare")
	}
	since := time.Now()
	c.Start("alpha")
	c.WaitAgent("alpha")
	c.Command("alpha", "start", api.CommandOptions{})
	c.WaitState("alpha", "SECOND", 15*time.Second)
	f := resyncDone(t, c, "beta", since, 60*time.Second)
	t.Logf("resync back to alpha: %v", f)
	if f["kind"] != "full" {
		t.Errorf("resync kind %v after prim --force, want full", f["kind"])
	}
	if exists(point) {
		t.Error("alpha is SECOND and still keeps the resume point of its own full compare")
	}
	_, started := waitEvent(t, c, []string{"beta"}, time.Second, "resync started", func(e eventlog.Event) bool {
		return e.Kind == "resync" && !e.Time.Before(since) && e.Fields["result"] == "started"
	})
	if rf, ok := started.Fields["resumed_from"]; ok {
		t.Errorf("the resync after the roles changed resumed from %v", rf)
	}
	waitSame(t, c, 30*time.Second)
}

// fillTree writes dirs directories d00, d01... of files f0, f1... of size
// random bytes each below root.
func fillTree(t *testing.T, root string, dirs, files, size int) {
	t.Helper()
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 9))
	buf := make([]byte, size)
	for d := range dirs {
		dir := filepath.Join(root, fmt.Sprintf("d%02d", d))
		must(t, os.MkdirAll(dir, 0o755))
		for i := range files {
			for j := range buf {
				buf[j] = byte(rng.Uint32())
			}
			must(t, os.WriteFile(filepath.Join(dir, fmt.Sprint("f", i)), buf, 0o644))
		}
	}
}
