package compare

import (
	"strings"
	"sync"

	"github.com/tandem-ha/tandem/internal/replica/op"
)

// nsEvent is one namespace change that went into the stream after a
// compare asked its question: it may make the answer stale.
type nsEvent struct {
	a, b  string // entries created, removed or replaced (b: a rename's target)
	nl    string // entry whose link count changed (a link's source)
	owner uint64 // engine task that sent it; 0: a live op
}

// nsRing events are kept; a compare older than that counts as touched.
const nsRing = 1 << 14

// nsLog numbers the namespace changes of the stream. An event is added
// after its op was submitted, so a compare that reads now() before sending
// its query sees every change ordered after the query (and perhaps a few
// before: a needless retry, never a missed change).
type nsLog struct {
	mu   sync.Mutex
	gen  uint64
	ring [nsRing]nsEvent // event number i (from 1) at ring[(i-1)%nsRing]
}

func (l *nsLog) add(ev nsEvent) {
	l.mu.Lock()
	l.ring[l.gen%nsRing] = ev
	l.gen++
	l.mu.Unlock()
}

func (l *nsLog) now() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.gen
}

// noOwner excludes no event in touched.
const noOwner = ^uint64(0)

// touched reports whether an event numbered after g, not sent by task
// self, matches.
func (l *nsLog) touched(g, self uint64, match func(*nsEvent) bool) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.gen-g > nsRing {
		return true // forgotten: assume the worst
	}
	for i := g; i < l.gen; i++ {
		ev := &l.ring[i%nsRing]
		if ev.owner != self && match(ev) {
			return true
		}
	}
	return false
}

// event describes o's namespace change; ok is false for other ops.
func event(o *op.Op) (ev nsEvent, ok bool) {
	switch o.Kind {
	case op.Create, op.Mknod, op.Mkdir, op.Symlink, op.Unlink, op.Rmdir, op.RemoveTree:
		return nsEvent{a: o.Path}, true
	case op.Rename:
		return nsEvent{a: o.Path, b: o.Path2}, true
	case op.Link:
		return nsEvent{a: o.Path2, nl: o.Path}, true
	}
	return nsEvent{}, false
}

func parent(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[:i]
	}
	return ""
}

func base(p string) string { return p[strings.LastIndexByte(p, '/')+1:] }

func join(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

// within reports whether p is x or below x (x non-empty).
func within(p, x string) bool {
	return x != "" && (p == x || strings.HasPrefix(p, x) && p[len(x)] == '/')
}

// matchDir: the event changes directory d's entries, or what d names.
func matchDir(d string) func(*nsEvent) bool {
	return func(ev *nsEvent) bool {
		for _, x := range [3]string{ev.a, ev.b, ev.nl} {
			if x != "" && (parent(x) == d || within(d, x)) {
				return true
			}
		}
		return false
	}
}

// matchPath: the event changes what path p names.
func matchPath(p string) func(*nsEvent) bool {
	return func(ev *nsEvent) bool { return within(p, ev.a) || within(p, ev.b) }
}
