package replication

import (
	"fmt"
	"slices"
	"strings"
)

// Workload names, as replwork's -w takes them.
const (
	Seq   = "seq"
	DSync = "dsync"
	Buf   = "buf"
	Files = "files"
	Storm = "storm"
)

// Workloads in report order.
var Workloads = []string{Seq, DSync, Buf, Files, Storm}

// Products, in report order.
const (
	Local1  = "local1"  // the workload once, on the local disk
	Local2  = "local2"  // the limit: the same workload twice at once, same disk
	Tandem  = "tandem"  // through Tandem's replicated directory
	Gluster = "gluster" // through a GlusterFS replica-2 FUSE mount
)

// Products in report order.
var Products = []string{Local1, Local2, Tandem, Gluster}

var productTitle = map[string]string{
	Local1:  "local ×1",
	Local2:  "limit: local ×2",
	Tandem:  "Tandem",
	Gluster: "GlusterFS replica 2",
}

// Run is one run of a workload, as replwork reports it (per copy).
type Run struct {
	Workload string  `json:"workload"`
	Copies   int     `json:"copies"`
	Seconds  float64 `json:"seconds"`
	Bytes    int64   `json:"bytes"`
	Ops      int64   `json:"ops"`
	P50us    float64 `json:"p50_us"`
	P99us    float64 `json:"p99_us"`
}

// Results collects the runs of every product and workload.
type Results struct {
	Runs map[string]map[string][]Run // product -> workload -> runs
	Errs map[string]string           // product -> why it has no (or fewer) figures
	// RSS is the agents' peak resident memory (VmHWM, KiB) while the
	// sequential workload streamed through Tandem, max over runs.
	RSS map[string]int64 // node -> KiB
	// RSSIdle is the agents' resident memory before the first run, KiB.
	RSSIdle map[string]int64
}

// NewResults returns empty Results.
func NewResults() *Results {
	return &Results{Runs: map[string]map[string][]Run{}, Errs: map[string]string{}, RSS: map[string]int64{}, RSSIdle: map[string]int64{}}
}

// Add records one run.
func (r *Results) Add(product string, run Run) {
	if r.Runs[product] == nil {
		r.Runs[product] = map[string][]Run{}
	}
	r.Runs[product][run.Workload] = append(r.Runs[product][run.Workload], run)
}

// metric is one row of the table: a figure derived from a run.
type metric struct {
	workload string
	name     string
	unit     string
	value    func(Run) float64
	latency  bool // lower is better
}

var metrics = []metric{
	{Seq, "sequential 1 MiB writes + fsync", "MB/s", func(r Run) float64 { return rate(float64(r.Bytes)/1e6, r.Seconds) }, false},
	{DSync, "4 KiB O_DSYNC write, p50", "µs", func(r Run) float64 { return r.P50us }, true},
	{DSync, "4 KiB O_DSYNC write, p99", "µs", func(r Run) float64 { return r.P99us }, true},
	{Buf, "4 KiB buffered writes + close", "MB/s", func(r Run) float64 { return rate(float64(r.Bytes)/1e6, r.Seconds) }, false},
	{Files, "small files: create+write+close", "files/s", func(r Run) float64 { return rate(float64(r.Ops), r.Seconds) }, false},
	{Storm, "mkdir/create/rename/unlink/rmdir storm", "ops/s", func(r Run) float64 { return rate(float64(r.Ops), r.Seconds) }, false},
}

func rate(n, secs float64) float64 {
	if secs <= 0 {
		return 0
	}
	return n / secs
}

// Median of xs (mean of the middle two for an even count); 0 when empty.
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	m := len(s) / 2
	if len(s)%2 == 1 {
		return s[m]
	}
	return (s[m-1] + s[m]) / 2
}

// values is the metric over every run of product.
func (r *Results) values(product string, m metric) []float64 {
	var out []float64
	for _, run := range r.Runs[product][m.workload] {
		out = append(out, m.value(run))
	}
	return out
}

func (r *Results) median(product string, m metric) (float64, bool) {
	v := r.values(product, m)
	return Median(v), len(v) > 0
}

// num prints a figure with 3 significant digits at most (no exponent).
func num(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

// speed is how much faster a is than b (>1: a faster) for a rate or a
// latency.
func speed(a, b float64, latency bool) float64 {
	if a <= 0 || b <= 0 {
		return 0
	}
	if latency {
		return b / a
	}
	return a / b
}

func ratioCell(v float64) string {
	if v == 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", v)
}

// goal judges Tandem's figure of one row; "" when the row has no goal.
func (r *Results) goal(m metric) (goal, met string) {
	t, okT := r.median(Tandem, m)
	g, okG := r.median(Gluster, m)
	lim, okL := r.median(Local2, m)
	l1, okL1 := r.median(Local1, m)
	verdict := func(ok, pass bool, detail string) string {
		if !ok {
			return "not measured"
		}
		s := "**missed**"
		if pass {
			s = "met"
		}
		if detail != "" {
			s += " (" + detail + ")"
		}
		return s
	}
	// ahead: at least factor times GlusterFS's speed (strictly faster for 1).
	ahead := func(factor float64) (bool, bool) {
		s := speed(t, g, m.latency)
		if factor > 1 {
			return okT && okG, s >= factor
		}
		return okT && okG, s > 1
	}
	switch {
	case m.workload == Seq:
		ok1, pass1 := okT && okL, t >= 0.8*lim
		ok2, pass2 := ahead(1)
		return "≥ 80 % of the limit; ahead of GlusterFS",
			verdict(ok1, pass1, fmt.Sprintf("%.0f %%", 100*speed(t, lim, false))) + "; " + verdict(ok2, pass2, "")
	case m.workload == DSync && strings.Contains(m.name, "p50"):
		ok1, pass1 := okT && okL1, t <= l1+150
		ok2, pass2 := ahead(1)
		return "p50 ≤ local ×1 + 150 µs; ahead of GlusterFS",
			verdict(ok1, pass1, fmt.Sprintf("%+.0f µs", t-l1)) + "; " + verdict(ok2, pass2, "")
	case m.workload == Files:
		ok, pass := ahead(2)
		return "≥ 2× GlusterFS", verdict(ok, pass, "")
	default:
		ok, pass := ahead(1)
		return "ahead of GlusterFS", verdict(ok, pass, "")
	}
}

// Table renders the medians, the ratios and the goals as markdown, then
// every run's figure.
func (r *Results) Table() string {
	var b strings.Builder
	b.WriteString("| workload | unit | local ×1 | limit: local ×2 | Tandem | GlusterFS replica 2 | Tandem speed / limit | Tandem speed / GlusterFS | goal | goal met |\n")
	b.WriteString("|---|---|---:|---:|---:|---:|---:|---:|---|---|\n")
	for _, m := range metrics {
		cells := []string{m.name, m.unit}
		med := map[string]float64{}
		for _, p := range Products {
			v, ok := r.median(p, m)
			med[p] = v
			if !ok {
				cells = append(cells, "-")
				continue
			}
			cells = append(cells, num(v))
		}
		cells = append(cells, ratioCell(speed(med[Tandem], med[Local2], m.latency)), ratioCell(speed(med[Tandem], med[Gluster], m.latency)))
		g, met := r.goal(m)
		cells = append(cells, g, met)
		b.WriteString("| " + strings.Join(cells, " | ") + " |\n")
	}
	if len(r.RSS) > 0 {
		b.WriteString("\n")
		b.WriteString(r.rssLine())
	}
	var errs []string
	for _, p := range Products {
		if e := r.Errs[p]; e != "" {
			errs = append(errs, fmt.Sprintf("- %s: %s", productTitle[p], e))
		}
	}
	if len(errs) > 0 {
		b.WriteString("\nMissing figures:\n\n" + strings.Join(errs, "\n") + "\n")
	}
	b.WriteString("\nEvery run (in run order):\n\n| workload | unit | product | runs |\n|---|---|---|---|\n")
	for _, m := range metrics {
		for _, p := range Products {
			v := r.values(p, m)
			if len(v) == 0 {
				continue
			}
			s := make([]string, len(v))
			for i, x := range v {
				s[i] = num(x)
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", m.name, m.unit, productTitle[p], strings.Join(s, ", "))
		}
	}
	return b.String()
}

// rssLine reports the agents' memory against the 100 MiB goal.
func (r *Results) rssLine() string {
	var parts []string
	var peak int64
	for _, n := range []string{"alpha", "beta"} {
		if v, ok := r.RSS[n]; ok {
			peak = max(peak, v)
			idle := ""
			if i, ok := r.RSSIdle[n]; ok {
				idle = fmt.Sprintf(", %.1f MiB before the first run", float64(i)/1024)
			}
			parts = append(parts, fmt.Sprintf("%s %.1f MiB%s", n, float64(v)/1024, idle))
		}
	}
	met := "met"
	if peak >= 100<<10 {
		met = "**missed**"
	}
	return fmt.Sprintf("Agents' peak RSS (VmHWM, reset before each sequential run) while the sequential data streamed through Tandem: %s. Goal < 100 MiB: %s.\n",
		strings.Join(parts, "; "), met)
}
