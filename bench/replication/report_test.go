package replication

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

func TestSpeed(t *testing.T) {
	if got := speed(200, 100, false); got != 2 {
		t.Errorf("rate speed = %v, want 2", got)
	}
	if got := speed(100, 200, true); got != 2 {
		t.Errorf("latency speed = %v, want 2 (half the latency)", got)
	}
	if got := speed(0, 100, false); got != 0 {
		t.Errorf("speed of a missing figure = %v, want 0", got)
	}
}

// run builds a Run whose rate metrics equal v (1e6 bytes or ops per second)
// and whose latencies are p50/p99.
func run(w string, v, p50, p99 float64) Run {
	return Run{Workload: w, Copies: 1, Seconds: 1, Bytes: int64(v * 1e6), Ops: int64(v), P50us: p50, P99us: p99}
}

func TestTableGoals(t *testing.T) {
	r := NewResults()
	for _, p := range []struct {
		name                    string
		seq, p50, p99, files, x float64
	}{
		{Local1, 400, 250, 600, 40000, 30000},
		{Local2, 350, 300, 700, 30000, 20000},
		{Tandem, 300, 380, 900, 1000, 5000},  // 86 % of the limit; +130 µs
		{Gluster, 160, 1500, 4000, 600, 900}, // files: Tandem only 1.67×
	} {
		for range 3 {
			r.Add(p.name, run(Seq, p.seq, 0, 0))
			r.Add(p.name, run(DSync, 0, p.p50, p.p99))
			r.Add(p.name, run(Files, p.files, 0, 0))
			r.Add(p.name, run(Storm, p.x, 0, 0))
			r.Add(p.name, run(Buf, p.x, 0, 0))
		}
	}
	r.RSS["alpha"], r.RSS["beta"] = 50<<10, 120<<10
	out := r.Table()
	row := func(prefix string) string {
		for _, l := range strings.Split(out, "\n") {
			if strings.HasPrefix(l, "| "+prefix) {
				return l
			}
		}
		t.Fatalf("no row %q in\n%s", prefix, out)
		return ""
	}
	for _, c := range []struct{ row, want string }{
		{"sequential", "| 300 | 160 | 0.86 | 1.88 |"},
		{"sequential", "met (86 %); met"},
		{"4 KiB O_DSYNC write, p50", "met (+130 µs); met"},
		{"4 KiB O_DSYNC write, p99", "| 4.44 | ahead of GlusterFS | met |"},
		{"small files", "| 1.67 | ≥ 2× GlusterFS | **missed** |"},
	} {
		if l := row(c.row); !strings.Contains(l, c.want) {
			t.Errorf("row %q: want %q in\n%s", c.row, c.want, l)
		}
	}
	if !strings.Contains(out, "beta 120.0 MiB") || !strings.Contains(out, "Goal < 100 MiB: **missed**") {
		t.Errorf("RSS line wrong:\n%s", out)
	}
	if !strings.Contains(out, "| sequential 1 MiB writes + fsync | MB/s | Tandem | 300, 300, 300 |") {
		t.Errorf("per-run table wrong:\n%s", out)
	}
}

func TestTableMissingProduct(t *testing.T) {
	r := NewResults()
	r.Add(Tandem, run(Seq, 300, 0, 0))
	r.Errs[Gluster] = "not measured: glusterd exited"
	out := r.Table()
	if !strings.Contains(out, "not measured") || !strings.Contains(out, "GlusterFS replica 2: not measured: glusterd exited") {
		t.Errorf("missing product not reported:\n%s", out)
	}
}
