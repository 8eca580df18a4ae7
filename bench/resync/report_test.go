package resync

import (
	"strings"
	"testing"
)

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{
		{nil, 0},
		{[]float64{3}, 3},
		{[]float64{5, 1, 3}, 3},
		{[]float64{4, 1, 3, 2}, 2.5},
	} {
		if got := Median(c.in); got != c.want {
			t.Errorf("Median(%v) = %v, want %v", c.in, got, c.want)
		}
	}
}

func rowOf(t *testing.T, table, prefix string) string {
	t.Helper()
	for _, l := range strings.Split(table, "\n") {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	t.Fatalf("no row starting %q in:\n%s", prefix, table)
	return ""
}

// TestTableGoals: the verdicts follow the goals.
func TestTableGoals(t *testing.T) {
	r := NewResults()
	r.Desc[Incremental] = "tree"
	for _, s := range []float64{1.0, 1.2, 5} {
		r.Add(Incremental, Tandem, Run{Seconds: s, Own: s / 2, Kind: "incremental", Sent: 30 << 20, RSS: map[string]int64{"alpha": 40 << 10}})
	}
	for _, s := range []float64{1, 1, 1} {
		r.Add(Incremental, Limit, Run{Seconds: s, Bytes: 25 << 20})
		r.Add(Incremental, RsyncInplace, Run{Seconds: 10 * s})
	}
	r.Add(Full, Tandem, Run{Seconds: 20, Own: 19, Kind: "full"})
	r.Add(Full, RsyncW, Run{Seconds: 18})
	r.Add(Compare, Tandem, Run{Seconds: 30, Own: 29, Kind: "full", RSS: map[string]int64{"alpha": 600 << 10, "beta": 100 << 10}})
	r.Add(Compare, RsyncN, Run{Seconds: 40, RSS: map[string]int64{"rsync": 300 << 10}})
	tab := r.Table()

	// Tandem 1.2 s median, limit 1 s, rsync 10 s: 1.2× the limit (met),
	// 8.3× faster than rsync (met).
	inc := rowOf(t, tab, "| (a) incremental")
	for _, want := range []string{"| 1.20 |", "| 1.00 |", "| 10.0 |", "met (1.20× the limit); met (8.3× faster than rsync)"} {
		if !strings.Contains(inc, want) {
			t.Errorf("incremental row lacks %q:\n%s", want, inc)
		}
	}
	// The resync's own time: 0.6 s.
	if own := rowOf(t, tab, "|  | the resync's own time | 0.600"); !strings.Contains(own, "met (0.60× the limit)") {
		t.Errorf("own row: %s", own)
	}
	if full := rowOf(t, tab, "| (b) full"); !strings.Contains(full, "**missed** (1.11× rsync's time)") {
		t.Errorf("full row: %s", full)
	}
	if cmp := rowOf(t, tab, "| (c) full compare"); !strings.Contains(cmp, "met (0.75× rsync's time)") {
		t.Errorf("compare row: %s", cmp)
	}
	if !strings.Contains(tab, "Goal < 500 MiB: **missed**") {
		t.Errorf("alpha's 600 MiB should miss the memory goal:\n%s", tab)
	}
	if !strings.Contains(tab, "| incremental | incremental ×3 |") {
		t.Errorf("details lack the kinds:\n%s", tab)
	}
	if !strings.Contains(tab, "| incremental | Tandem | 1.00 (own 0.500), 1.20 (own 0.600), 5.00 (own 2.50) |") {
		t.Errorf("every-run table:\n%s", tab)
	}
}

// TestTableMissing: a case without its reference says so rather than
// judging.
func TestTableMissing(t *testing.T) {
	r := NewResults()
	r.Add(Full, Tandem, Run{Seconds: 20, Own: 19, Kind: "full"})
	tab := r.Table()
	if row := rowOf(t, tab, "| (b) full"); !strings.Contains(row, "not measured") {
		t.Errorf("full row without rsync: %s", row)
	}
	if strings.Contains(tab, "(a)") || strings.Contains(tab, "(c)") {
		t.Errorf("cases not run appear:\n%s", tab)
	}
}
