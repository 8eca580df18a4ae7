package failover

import (
	"fmt"
	"slices"
	"strings"
	"time"
)

// Summary condenses one case's samples.
type Summary struct {
	N                  int
	Min, P50, P95, Max time.Duration
}

// Summarize sorts a copy of d and takes nearest-rank percentiles.
func Summarize(d []time.Duration) Summary {
	if len(d) == 0 {
		return Summary{}
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return Summary{N: len(s), Min: s[0], P50: Percentile(s, 50), P95: Percentile(s, 95), Max: s[len(s)-1]}
}

// Percentile is the nearest-rank p-th percentile of sorted (ascending): the
// smallest sample with at least p % of the samples at or below it.
func Percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(p/100*float64(len(sorted)) + 0.999999)
	rank = max(1, min(rank, len(sorted)))
	return sorted[rank-1]
}

// ms prints a duration in milliseconds, with one decimal below 10 ms.
func ms(d time.Duration) string {
	v := float64(d) / float64(time.Millisecond)
	if v < 10 {
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.0f", v)
}

// ratio is a/b with two decimals, or "n/a".
func ratio(a, b time.Duration) string {
	if a <= 0 || b <= 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2f", float64(a)/float64(b))
}

// Result is what one case measured.
type Result struct {
	Case
	Took  []time.Duration // fault -> first answer from the other node
	Moved []time.Duration // fault -> VIP seen on the other node
	Dual  []time.Duration // time the VIP was on both nodes, per fault
	Stale int             // faults after which the failed node still held the VIP at repair time
	App   []time.Duration // Tandem: start_prim run time, inside Took
	Err   string          // why the case stopped early, if it did
}

// Table renders results as markdown: one row per case, then the ratios of
// each Tandem case to its keepalived reference of the same run.
func Table(results []Result) string {
	var b strings.Builder
	b.WriteString("| product | fault | heartbeat | peer declared down after | n | p50 ms | p95 ms | min ms | max ms | VIP moved p50 ms | VIP on both nodes | VIP still on the failed node at repair |\n")
	b.WriteString("|---|---|---|---|---:|---:|---:|---:|---:|---:|---|---|\n")
	byName := map[string]Result{}
	for _, r := range results {
		byName[r.Name] = r
		s := Summarize(r.Took)
		mv := Summarize(r.Moved)
		row := []string{r.Product, r.Fault.String(), r.heartbeat(), r.budget(), fmt.Sprint(s.N)}
		if s.N == 0 {
			row = append(row, "-", "-", "-", "-", "-")
		} else {
			row = append(row, ms(s.P50), ms(s.P95), ms(s.Min), ms(s.Max), ms(mv.P50))
		}
		row = append(row, dualCell(r.Dual), fmt.Sprintf("%d/%d", r.Stale, len(r.Took)))
		if r.Err != "" {
			row[len(row)-1] += " (stopped early: " + strings.ReplaceAll(r.Err, "|", "/") + ")"
		}
		b.WriteString("| " + strings.Join(row, " | ") + " |\n")
	}
	var app []time.Duration
	for _, r := range results {
		app = append(app, r.App...)
	}
	if len(app) > 0 {
		a := Summarize(app)
		fmt.Fprintf(&b, "\nTandem's times include starting the service (start_prim, after the VIP is up): p50 %s ms, p95 %s ms, max %s ms over %d failovers; keepalived's service was running all along.\n",
			ms(a.P50), ms(a.P95), ms(a.Max), a.N)
	}
	var cmp strings.Builder
	for _, r := range results {
		for _, name := range r.Refs {
			ref, ok := byName[name]
			if !ok {
				continue
			}
			a, k := Summarize(r.Took), Summarize(ref.Took)
			fmt.Fprintf(&cmp, "| %s | %s, %s | %s | %s | %s | %s | %s |\n", r.Fault, r.heartbeat(), r.budget(), ref.heartbeat(),
				msOr(a.P50, a.N), msOr(k.P50, k.N), ratio(a.P50, k.P50), ratio(a.P95, k.P95))
		}
	}
	if cmp.Len() > 0 {
		b.WriteString("\n| fault | Tandem | keepalived advert_int | Tandem p50 ms | keepalived p50 ms | p50 ratio Tandem/keepalived | p95 ratio |\n")
		b.WriteString("|---|---|---|---:|---:|---:|---:|\n")
		b.WriteString(cmp.String())
	}
	return b.String()
}

func msOr(d time.Duration, n int) string {
	if n == 0 {
		return "-"
	}
	return ms(d)
}

// dualCell says in how many faults the VIP was seen on both nodes, and for
// how long at most.
func dualCell(d []time.Duration) string {
	n := 0
	var longest time.Duration
	for _, x := range d {
		if x > 0 {
			n++
			longest = max(longest, x)
		}
	}
	if n == 0 {
		return fmt.Sprintf("never (0/%d)", len(d))
	}
	return fmt.Sprintf("%d/%d faults, up to %s ms", n, len(d), ms(longest))
}
