package failover

import (
	"fmt"
	"strings"
	"time"
)

// Fault is what the benchmark does to the primary.
type Fault int

const (
	// Kill9 SIGKILLs the primary's daemon (for Tandem also its application,
	// as a crash of the server's processes would).
	Kill9 Fault = iota
	// LinkDown takes every cable of the primary down (carrier loss), as a
	// dead server or switch port looks to its peer.
	LinkDown
)

func (f Fault) String() string {
	if f == LinkDown {
		return "link down"
	}
	return "kill -9"
}

// Products.
const (
	Tandem     = "Tandem"
	Keepalived = "keepalived"
)

// VRRP priorities of alpha and beta in the keepalived cases.
const (
	PrioAlpha = 150
	PrioBeta  = 100
)

// Case is one benchmark configuration.
type Case struct {
	Name     string
	Product  string
	Fault    Fault
	Interval time.Duration // Tandem heartbeat.interval / keepalived advert_int
	Timeout  time.Duration // Tandem heartbeat.timeout (keepalived: derived)
	Refs     []string      // keepalived cases this one is compared with
}

func (c Case) heartbeat() string {
	if c.Product == Keepalived {
		return "advert_int " + secs(c.Interval)
	}
	return "interval " + c.Interval.String()
}

// budget is how long the backup waits without a heartbeat before it takes
// over: Tandem's timeout, VRRP's master-down interval (3 × advert + skew,
// skew depending on the backup's priority).
func (c Case) budget() string {
	if c.Product == Keepalived {
		lo, hi := MasterDown(c.Interval, PrioAlpha), MasterDown(c.Interval, PrioBeta)
		return fmt.Sprintf("%s-%s (master-down)", lo.Round(time.Millisecond), hi.Round(time.Millisecond))
	}
	d := "timeout " + c.Timeout.String()
	if c.Timeout == 6*c.Interval && c.Interval == 100*time.Millisecond {
		d += " (defaults)"
	}
	return d
}

// MasterDown is VRRPv3's Master_Down_Interval for a backup of priority
// prio: 3 × advert + (256 - prio) × advert / 256 (RFC 5798 6.1).
func MasterDown(advert time.Duration, prio int) time.Duration {
	return 3*advert + time.Duration(256-prio)*advert/256
}

// secs prints an advert interval as keepalived's config wants it.
func secs(d time.Duration) string {
	s := fmt.Sprintf("%.2f", d.Seconds())
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	return s + "s"
}

// DefaultCases: Tandem at its defaults and at keepalived's intervals with a
// 3 × interval timeout (the same detection budget as VRRP's 3 × advert,
// minus VRRP's skew), keepalived at its default 1 s and at 0.1 s and
// 0.03 s; each under kill -9 and under link down.
func DefaultCases() []Case {
	var out []Case
	for _, f := range []Fault{Kill9, LinkDown} {
		tag := "kill9"
		if f == LinkDown {
			tag = "linkdown"
		}
		ka := func(iv time.Duration) string { return fmt.Sprintf("keepalived-%s-%s", tag, iv) }
		out = append(out,
			Case{Name: "tandem-" + tag + "-default", Product: Tandem, Fault: f, Interval: 100 * time.Millisecond, Timeout: 600 * time.Millisecond, Refs: []string{ka(time.Second), ka(100 * time.Millisecond)}},
			Case{Name: "tandem-" + tag + "-100ms", Product: Tandem, Fault: f, Interval: 100 * time.Millisecond, Timeout: 300 * time.Millisecond, Refs: []string{ka(100 * time.Millisecond)}},
			Case{Name: "tandem-" + tag + "-30ms", Product: Tandem, Fault: f, Interval: 30 * time.Millisecond, Timeout: 90 * time.Millisecond, Refs: []string{ka(30 * time.Millisecond)}},
			Case{Name: ka(time.Second), Product: Keepalived, Fault: f, Interval: time.Second},
			Case{Name: ka(100 * time.Millisecond), Product: Keepalived, Fault: f, Interval: 100 * time.Millisecond},
			Case{Name: ka(30 * time.Millisecond), Product: Keepalived, Fault: f, Interval: 30 * time.Millisecond},
		)
	}
	return out
}
