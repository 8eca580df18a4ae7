package resync

import (
	"fmt"
	"slices"
	"sort"
	"strings"
)

// Cases, in report order.
const (
	Incremental = "incremental" // (a) the secondary was down while the tree changed
	Full        = "full"        // (b) full resync into an empty secondary
	Compare     = "compare"     // (c) full compare of many small files, nothing to send
)

// Cases in report order.
var Cases = []string{Incremental, Full, Compare}

// Products.
const (
	Tandem       = "tandem"
	Limit        = "limit"         // copying only the changed bytes
	RsyncInplace = "rsync-inplace" // rsync -a --inplace --delete (whole files: local default)
	RsyncDelta   = "rsync-delta"   // rsync -a --inplace --no-whole-file --delete
	RsyncW       = "rsync-W"       // rsync -a -W into an empty directory
	RsyncN       = "rsync-n"       // rsync -a -n (dry run) between two identical copies
)

// Products in report order.
var Products = []string{Tandem, Limit, RsyncInplace, RsyncDelta, RsyncW, RsyncN}

var productTitle = map[string]string{
	Tandem:       "Tandem",
	Limit:        "limit: changed bytes only",
	RsyncInplace: "rsync -a --inplace --delete",
	RsyncDelta:   "rsync -a --inplace --no-whole-file --delete",
	RsyncW:       "rsync -a -W",
	RsyncN:       "rsync -a -n (dry run)",
}

// Run is one measured run of one product in one case.
type Run struct {
	// Seconds is the figure: Tandem's from the secondary's start (or the
	// second --full command) to the primary's "resync complete" event; a
	// reference's from its start until its copy is durable (syncfs).
	Seconds float64
	// Tandem only: the resync's own "seconds", from beta's start to its
	// "started" event, and the event's fields.
	Own, Started   float64
	Kind           string
	Examined, Sent int64
	Files          int64
	SyncedAfter    float64 // Tandem: from the start until beta said synced
	Bytes          int64   // limit: bytes copied
	// RSS: Tandem's agents' peak (node -> KiB); rsync's ("rsync").
	RSS map[string]int64
}

// Results collects every run.
type Results struct {
	Runs map[string]map[string][]Run // case -> product -> runs
	// Desc describes each case's data ("2.0 GiB in 2001 files ...").
	Desc map[string]string
	// Errs says why figures are missing.
	Errs []string
	// Notes are printed under the tables (odd behaviour seen).
	Notes []string
}

// NewResults returns empty Results.
func NewResults() *Results {
	return &Results{Runs: map[string]map[string][]Run{}, Desc: map[string]string{}}
}

// Add records one run.
func (r *Results) Add(cs, product string, run Run) {
	if r.Runs[cs] == nil {
		r.Runs[cs] = map[string][]Run{}
	}
	r.Runs[cs][product] = append(r.Runs[cs][product], run)
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

func (r *Results) values(cs, product string, f func(Run) float64) []float64 {
	var out []float64
	for _, run := range r.Runs[cs][product] {
		out = append(out, f(run))
	}
	return out
}

func seconds(r Run) float64 { return r.Seconds }
func own(r Run) float64     { return r.Own }

// num prints a figure with 3 significant digits at most (no exponent).
func num(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	case v >= 1:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}

func cell(xs []float64) string {
	if len(xs) == 0 {
		return "-"
	}
	return num(Median(xs))
}

func ratio(a, b []float64) (float64, bool) {
	if len(a) == 0 || len(b) == 0 || Median(b) <= 0 {
		return 0, false
	}
	return Median(a) / Median(b), true
}

func ratioCell(a, b []float64) string {
	v, ok := ratio(a, b)
	if !ok {
		return "-"
	}
	return fmt.Sprintf("%.2f", v)
}

func verdict(ok, pass bool, detail string) string {
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

// row is one line of the main table.
type row struct {
	cs, what, figure string
	ours, limit, ref []float64
	refName          string
	goal             string
	judge            func(ours, limit, ref []float64) string
}

// MiB is 2^20 bytes, for the agents' memory goal.
const MiB = 1 << 20

// RSSGoalMiB is the agents' memory goal of the compare case.
const RSSGoalMiB = 500

func (r *Results) rows() []row {
	var rows []row
	incGoal := func(ours, limit, ref []float64) string {
		l, okL := ratio(ours, limit)
		s, okS := ratio(ref, ours)
		return verdict(okL, okL && l <= 1.5, fmt.Sprintf("%.2f× the limit", l)) + "; " +
			verdict(okS, okS && s >= 5, fmt.Sprintf("%.1f× faster than rsync", s))
	}
	fasterOrEqual := func(ours, _, ref []float64) string {
		v, ok := ratio(ours, ref)
		return verdict(ok, ok && v <= 1, fmt.Sprintf("%.2f× rsync's time", v))
	}
	faster := func(ours, _, ref []float64) string {
		v, ok := ratio(ours, ref)
		return verdict(ok, ok && v < 1, fmt.Sprintf("%.2f× rsync's time", v))
	}
	if _, ok := r.Runs[Incremental]; ok {
		ours := r.values(Incremental, Tandem, seconds)
		mine := r.values(Incremental, Tandem, own)
		lim := r.values(Incremental, Limit, seconds)
		rs := r.values(Incremental, RsyncInplace, seconds)
		rows = append(rows,
			row{Incremental, "(a) incremental: " + r.Desc[Incremental], "beta's start → resync complete", ours, lim, rs, productTitle[RsyncInplace],
				"≤ 1.5× the limit; ≥ 5× faster than rsync", incGoal},
			row{Incremental, "", "the resync's own time", mine, lim, rs, productTitle[RsyncInplace], "(same, for information)", incGoal})
		if d := r.values(Incremental, RsyncDelta, seconds); len(d) > 0 {
			rows = append(rows, row{Incremental, "", "beta's start → resync complete", ours, nil, d, productTitle[RsyncDelta], "-", nil})
		}
	}
	if _, ok := r.Runs[Full]; ok {
		ours := r.values(Full, Tandem, seconds)
		rs := r.values(Full, RsyncW, seconds)
		rows = append(rows,
			row{Full, "(b) full resync into an empty secondary: " + r.Desc[Full], "beta's start → resync complete", ours, nil, rs, productTitle[RsyncW],
				"at least as fast as rsync", fasterOrEqual},
			row{Full, "", "the resync's own time", r.values(Full, Tandem, own), nil, rs, productTitle[RsyncW], "(same, for information)", fasterOrEqual})
	}
	if _, ok := r.Runs[Compare]; ok {
		ours := r.values(Compare, Tandem, seconds)
		rs := r.values(Compare, RsyncN, seconds)
		rows = append(rows,
			row{Compare, "(c) full compare, nothing to send: " + r.Desc[Compare], "second --full → resync complete", ours, nil, rs, productTitle[RsyncN],
				"faster than rsync", faster},
			row{Compare, "", "the resync's own time", r.values(Compare, Tandem, own), nil, rs, productTitle[RsyncN], "(same, for information)", faster})
	}
	return rows
}

// Table renders the medians, ratios and goals, Tandem's details, the
// memory, then every run, as markdown.
func (r *Results) Table() string {
	var b strings.Builder
	b.WriteString("| case | Tandem's time | Tandem s | limit s | reference | reference s | Tandem / limit | Tandem / reference | goal | goal met |\n")
	b.WriteString("|---|---|---:|---:|---|---:|---:|---:|---|---|\n")
	for _, rw := range r.rows() {
		met := "-"
		if rw.judge != nil {
			met = rw.judge(rw.ours, rw.limit, rw.ref)
		}
		limit := "-"
		if rw.limit != nil {
			limit = cell(rw.limit)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", rw.what, rw.figure, cell(rw.ours), limit,
			rw.refName, cell(rw.ref), ratioCell(rw.ours, rw.limit), ratioCell(rw.ours, rw.ref), rw.goal, met)
	}

	// Tandem's own account of its resyncs.
	var det []string
	for _, cs := range Cases {
		runs := r.Runs[cs][Tandem]
		if len(runs) == 0 {
			continue
		}
		kinds := map[string]int{}
		for _, run := range runs {
			kinds[run.Kind]++
		}
		var ks []string
		for k, n := range kinds {
			ks = append(ks, fmt.Sprintf("%s ×%d", k, n))
		}
		sort.Strings(ks)
		f := func(g func(Run) float64) string { return cell(r.values(cs, Tandem, g)) }
		mib := func(g func(Run) int64) string {
			return num(Median(r.values(cs, Tandem, func(x Run) float64 { return float64(g(x)) / MiB })))
		}
		lim := "-"
		if l := r.values(cs, Limit, func(x Run) float64 { return float64(x.Bytes) / MiB }); len(l) > 0 {
			lim = num(Median(l))
		}
		det = append(det, fmt.Sprintf("| %s | %s | %s | %s | %s | %s | %s | %s | %s |", cs, strings.Join(ks, ", "),
			f(func(x Run) float64 { return x.Started }), f(own), f(func(x Run) float64 { return x.SyncedAfter }),
			mib(func(x Run) int64 { return x.Examined }), mib(func(x Run) int64 { return x.Sent }), lim,
			fmt.Sprintf("%.0f", Median(r.values(cs, Tandem, func(x Run) float64 { return float64(x.Files) })))))
	}
	if len(det) > 0 {
		b.WriteString("\nTandem's resyncs (medians; from the primary's module log):\n\n")
		b.WriteString("| case | kind | start → \"started\" s | resync's own s | start → beta synced s | MiB examined | MiB sent | MiB the limit copied | files |\n")
		b.WriteString("|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
		b.WriteString(strings.Join(det, "\n") + "\n")
	}

	if mem := r.memLines(); mem != "" {
		b.WriteString("\n" + mem)
	}
	if len(r.Notes) > 0 {
		b.WriteString("\nNotes:\n\n")
		for _, n := range r.Notes {
			b.WriteString("- " + n + "\n")
		}
	}
	if len(r.Errs) > 0 {
		b.WriteString("\nMissing figures:\n\n")
		for _, e := range r.Errs {
			b.WriteString("- " + e + "\n")
		}
	}
	b.WriteString("\nEvery run, seconds (in run order):\n\n| case | product | runs |\n|---|---|---|\n")
	for _, cs := range Cases {
		for _, p := range Products {
			v := r.values(cs, p, seconds)
			if len(v) == 0 {
				continue
			}
			s := make([]string, len(v))
			for i, x := range v {
				s[i] = num(x)
				if p == Tandem {
					s[i] += fmt.Sprintf(" (own %s)", num(r.Runs[cs][p][i].Own))
				}
			}
			fmt.Fprintf(&b, "| %s | %s | %s |\n", cs, productTitle[p], strings.Join(s, ", "))
		}
	}
	return b.String()
}

// peak is the highest RSS of key over the runs, KiB.
func (r *Results) peak(cs, product, key string) (int64, bool) {
	var p int64
	ok := false
	for _, run := range r.Runs[cs][product] {
		if v, has := run.RSS[key]; has {
			p, ok = max(p, v), true
		}
	}
	return p, ok
}

func mibs(kb int64) string { return fmt.Sprintf("%.1f MiB", float64(kb)/1024) }

// memLines reports the agents' peak memory per case, and the goal of (c).
func (r *Results) memLines() string {
	var b strings.Builder
	for _, cs := range Cases {
		var parts []string
		var top int64
		for _, n := range []string{"alpha", "beta"} {
			if v, ok := r.peak(cs, Tandem, n); ok {
				parts = append(parts, n+" "+mibs(v))
				top = max(top, v)
			}
		}
		if len(parts) == 0 {
			continue
		}
		line := fmt.Sprintf("Agents' peak RSS (VmHWM, highest over the runs) during the %s resyncs: %s", cs, strings.Join(parts, ", "))
		for _, p := range Products {
			if v, ok := r.peak(cs, p, "rsync"); ok {
				line += fmt.Sprintf("; %s: %s (its largest process)", productTitle[p], mibs(v))
			}
		}
		if cs == Compare {
			line += fmt.Sprintf(". Goal < %d MiB: %s", RSSGoalMiB, verdict(true, top < RSSGoalMiB<<10, ""))
		}
		b.WriteString(line + ".\n\n")
	}
	return strings.TrimSuffix(b.String(), "\n")
}
