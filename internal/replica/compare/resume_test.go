package compare

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/replica/treecmp"
)

// TestResumeFrom: a resumed full compare trusts the entries before From
// (a content difference there stays), compares what the scope records
// there, and everything from From on.
func TestResumeFrom(t *testing.T) {
	pr := newPair(t, 21, 100*time.Microsecond, Options{BlockSize: 4096})
	for _, d := range []string{"a", "b", "c/x"} {
		for i := range 4 {
			write(t, filepath.Join(pr.p, d, fmt.Sprint("f", i)), randBytes(uint64(len(d)*10+i), 100<<10))
		}
	}
	copyTree(t, pr.p, pr.s)
	sameTrees(t, pr.p, pr.s, treecmp.Options{})
	// Differences on the secondary, each keeping its size and mtime.
	flip := func(p string, off int64) {
		t.Helper()
		f, err := os.OpenFile(filepath.Join(pr.s, p), os.O_WRONLY, 0)
		must(t, err)
		var st os.FileInfo
		if st, err = f.Stat(); err != nil {
			t.Fatal(err)
		}
		_, err = f.WriteAt([]byte("different"), off)
		must(t, err)
		f.Close()
		must(t, os.Chtimes(filepath.Join(pr.s, p), st.ModTime(), st.ModTime()))
	}
	flip("a/f1", 5000)  // before From, not recorded: trusted, stays
	flip("a/f2", 70000) // before From, recorded: compared
	flip("b/f0", 1000)  // From on: compared whole
	flip("c/x/f3", 90000)
	must(t, os.Remove(filepath.Join(pr.s, "c/x/f2")))
	write(t, filepath.Join(pr.s, "b/extra"), []byte("not on the primary"))

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st := pr.run(t, ctx, Scope{Full: true, From: "b", Files: map[string][]Zone{"a/f2": {{69632, 4096}}}})
	diffs, err := treecmp.Compare(pr.p, pr.s, treecmp.Options{})
	must(t, err)
	if len(diffs) != 1 || diffs[0].Path != "a/f1" {
		t.Fatalf("diffs %v: want only a/f1 (before From, not recorded)", diffs)
	}
	// b and c whole (8 files less the one missing, sent), a/f2's zone and
	// its probes (hashed).
	if st.Examined > 8*100<<10+64<<10 {
		t.Errorf("examined %d bytes: the part before From was read", st.Examined)
	}
	t.Logf("%+v", st)
}

// TestCheckpointResume interrupts full compares and resumes each from the
// checkpoint it gave: the copies end identical, and the resumed run reads
// less than the whole tree. A checkpoint past an entry not yet compared
// leaves that entry different.
func TestCheckpointResume(t *testing.T) {
	for round, stopAfter := range []time.Duration{150 * time.Millisecond, 450 * time.Millisecond, 750 * time.Millisecond} {
		t.Run(fmt.Sprint(round), func(t *testing.T) {
			pr := newPair(t, uint64(30+round), 50*time.Microsecond, Options{Bandwidth: 8 << 20, Parallel: 3})
			var total int64
			for d := range 12 {
				for i := range 6 {
					n := 80<<10 + (d*6+i)*1500
					total += int64(n)
					write(t, filepath.Join(pr.p, fmt.Sprintf("d%02d/s/f%d", d, i)), randBytes(uint64(d*100+i), n))
				}
			}
			// Hard links keep the checkpoint behind them until the walk ends.
			write(t, filepath.Join(pr.p, "z/h1"), randBytes(999, 70<<10))
			must(t, os.Link(filepath.Join(pr.p, "z/h1"), filepath.Join(pr.p, "z/h2")))
			// Half the secondary's files exist, with other content.
			for d := 0; d < 12; d += 2 {
				write(t, filepath.Join(pr.s, fmt.Sprintf("d%02d/s/f1", d)), randBytes(uint64(d), 90<<10))
			}

			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() {
				_, err := pr.e.Run(ctx, Scope{Full: true})
				done <- err
			}()
			time.Sleep(stopAfter)
			from, ok := pr.e.Checkpoint()
			cancel()
			if err := <-done; err == nil {
				t.Skip("the run ended before the interruption (machine too fast for this round)")
			} else if !errors.Is(err, context.Canceled) {
				t.Fatalf("interrupted run: %v", err)
			}
			pr.f.drain()
			if !ok {
				t.Fatalf("no checkpoint after %v", stopAfter)
			}
			if _, ok := pr.e.Checkpoint(); ok {
				t.Error("a checkpoint with no run in progress")
			}
			rctx, rcancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer rcancel()
			st := pr.run(t, rctx, Scope{Full: true, From: from})
			sameTrees(t, pr.p, pr.s, treecmp.Options{})
			if from > "d01" && st.Examined >= total {
				t.Errorf("resumed from %q, examined %d of %d bytes", from, st.Examined, total)
			}
			t.Logf("interrupted after %v at %q; the resumed run examined %d of %d bytes", stopAfter, from, st.Examined, total)
		})
	}
}
