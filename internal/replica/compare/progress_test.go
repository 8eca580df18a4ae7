package compare

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"
)

// TestProgressEstimate: a full compare's total comes from the listings
// and the prescan's count of the files (no stat of its own): with
// listings answered slowly, it is the tree's size once a quarter is examined.
func TestProgressEstimate(t *testing.T) {
	pr := newPair(t, 16, 50*time.Millisecond, Options{})
	for d := range 40 {
		for f := range 10 {
			write(t, filepath.Join(pr.p, fmt.Sprintf("d%02d/f%02d", d, f)), randBytes(uint64(d*10+f), 1000))
		}
	}
	done := make(chan Stats)
	go func() { done <- fullRun(t, pr) }()
	var mid Progress
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(2 * time.Millisecond) {
		// Mid-run only: a busy machine may first sample after the last
		// listing, which says nothing of the estimate.
		if p := pr.e.Progress(); p.Running && p.Examined >= 100*1000 && p.Examined < 400*1000 {
			mid = p
			break
		}
	}
	st := <-done
	if st.Examined != 400*1000 {
		t.Fatalf("examined %d bytes, want 400000", st.Examined)
	}
	if mid.Total != 400*1000 || mid.Percent <= 0 || mid.Percent >= 100 {
		t.Fatalf("progress with a quarter examined: %+v", mid)
	}
	if p := pr.e.Progress(); p.Percent != 100 || p.Running {
		t.Errorf("progress at the end: %+v", p)
	}
}
