package failover

import (
	"strings"
	"testing"
	"time"
)

func TestPercentileNearestRank(t *testing.T) {
	var d []time.Duration
	for i := 1; i <= 20; i++ {
		d = append(d, time.Duration(i)*time.Millisecond)
	}
	cases := []struct {
		p    float64
		want time.Duration
	}{{50, 10 * time.Millisecond}, {95, 19 * time.Millisecond}, {100, 20 * time.Millisecond}, {0, time.Millisecond}, {1, time.Millisecond}}
	for _, c := range cases {
		if got := Percentile(d, c.p); got != c.want {
			t.Errorf("p%v of 1..20 ms = %v, want %v", c.p, got, c.want)
		}
	}
	if got := Percentile(nil, 50); got != 0 {
		t.Errorf("p50 of nothing = %v, want 0", got)
	}
	if got := Percentile([]time.Duration{7}, 95); got != 7 {
		t.Errorf("p95 of one sample = %v, want it", got)
	}
}

func TestSummarizeLeavesInputAlone(t *testing.T) {
	in := []time.Duration{30, 10, 20}
	s := Summarize(in)
	if s.N != 3 || s.Min != 10 || s.P50 != 20 || s.Max != 30 || s.P95 != 30 {
		t.Errorf("summary %+v", s)
	}
	if in[0] != 30 {
		t.Error("Summarize sorted its input in place")
	}
	if (Summarize(nil) != Summary{}) {
		t.Error("summary of nothing is not zero")
	}
}

func TestMasterDown(t *testing.T) {
	// RFC 5798: 3 × advert + (256 - prio) × advert / 256.
	if got := MasterDown(time.Second, 100); got != 3*time.Second+609375*time.Microsecond {
		t.Errorf("master-down at 1s, prio 100 = %v", got)
	}
	if got := MasterDown(100*time.Millisecond, 150); got.Round(time.Millisecond) != 341*time.Millisecond {
		t.Errorf("master-down at 0.1s, prio 150 = %v", got)
	}
}

func TestSecs(t *testing.T) {
	for d, want := range map[time.Duration]string{time.Second: "1s", 100 * time.Millisecond: "0.1s", 30 * time.Millisecond: "0.03s", 1500 * time.Millisecond: "1.5s"} {
		if got := secs(d); got != want {
			t.Errorf("secs(%v) = %q, want %q", d, got, want)
		}
	}
}

func TestDefaultCases(t *testing.T) {
	all := DefaultCases()
	names := map[string]bool{}
	for _, c := range all {
		if names[c.Name] {
			t.Errorf("case %s twice", c.Name)
		}
		names[c.Name] = true
	}
	for _, c := range all {
		for _, r := range c.Refs {
			if !names[r] {
				t.Errorf("case %s compares with unknown case %s", c.Name, r)
			}
		}
		if c.Product == Tandem && c.Timeout < 3*c.Interval {
			t.Errorf("case %s: timeout %v below 3 × interval, the agent would refuse it", c.Name, c.Timeout)
		}
	}
}

func TestTable(t *testing.T) {
	ms := time.Millisecond
	ka := Case{Name: "ka", Product: Keepalived, Fault: LinkDown, Interval: 100 * ms}
	td := Case{Name: "td", Product: Tandem, Fault: LinkDown, Interval: 100 * ms, Timeout: 300 * ms, Refs: []string{"ka", "missing"}}
	out := Table([]Result{
		{Case: td, Took: []time.Duration{200 * ms, 220 * ms}, Moved: []time.Duration{190 * ms, 210 * ms}, Dual: []time.Duration{0, 0}},
		{Case: ka, Took: []time.Duration{400 * ms, 300 * ms}, Moved: []time.Duration{390 * ms, 290 * ms}, Dual: []time.Duration{0, 12 * ms}, Stale: 1},
		{Case: Case{Name: "broken", Product: Keepalived, Fault: Kill9, Interval: time.Second}, Err: "a|b"},
	})
	for _, want := range []string{
		"| Tandem | link down | interval 100ms | timeout 300ms | 2 | 200 | 220 | 200 | 220 | 190 | never (0/2) | 0/2 |",
		"| keepalived | link down | advert_int 0.1s | 341ms-361ms (master-down) | 2 | 300 | 400 | 300 | 400 | 290 | 1/2 faults, up to 12 ms | 1/2 |",
		"stopped early: a/b",
		"| link down | interval 100ms, timeout 300ms | advert_int 0.1s | 200 | 300 | 0.67 | 0.55 |",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "missing") {
		t.Errorf("table compares with a case that did not run:\n%s", out)
	}
}
