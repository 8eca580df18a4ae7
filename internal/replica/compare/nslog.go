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

// nsStamp is the latest change of one path: its number, who made it,
// and the latest change by someone else (so that a task can ignore its
// own).
type nsStamp struct {
	gen, others uint64
	owner       uint64
}

func (s nsStamp) after(g, self uint64) bool {
	if s.owner != self {
		return s.gen > g
	}
	return s.others > g
}

// nsKeys bounds the paths remembered; past it the log forgets them and
// answers "changed" for any compare that began before.
var nsKeys = 1 << 20

// nsLog numbers the namespace changes of the stream and remembers, per
// path, the latest that made it name something else (at) or changed its
// entries (in). An event is added after its op was submitted, so a
// compare that reads now() before sending its query sees every change
// ordered after the query (and perhaps a few before: a needless retry,
// never a missed change).
type nsLog struct {
	mu    sync.Mutex
	gen   uint64
	floor uint64 // compares older than this count as changed
	at    map[string]nsStamp
	in    map[string]nsStamp
}

func stamp(m map[string]nsStamp, p string, gen, owner uint64) {
	s := m[p]
	if s.owner != owner {
		s.others = s.gen
	}
	s.gen, s.owner = gen, owner
	m[p] = s
}

func (l *nsLog) add(ev nsEvent) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.at == nil || len(l.at)+len(l.in) > nsKeys {
		l.at, l.in = make(map[string]nsStamp), make(map[string]nsStamp)
		l.floor = l.gen
	}
	l.gen++
	for _, x := range [2]string{ev.a, ev.b} {
		if x != "" {
			stamp(l.at, x, l.gen, ev.owner)
			stamp(l.in, parent(x), l.gen, ev.owner)
		}
	}
	if ev.nl != "" {
		stamp(l.in, parent(ev.nl), l.gen, ev.owner)
	}
}

func (l *nsLog) now() uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.gen
}

// noOwner excludes no event.
const noOwner = ^uint64(0)

// touchedPath: since g, did a change not made by task self make p (or
// one of its parents) name something else?
func (l *nsLog) touchedPath(g, self uint64, p string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if g < l.floor {
		return true
	}
	for q := p; q != ""; q = parent(q) {
		if l.at[q].after(g, self) {
			return true
		}
	}
	return false
}

// touchedDir: since g, did a change not made by task self change
// directory d's entries, or what d (or one of its parents) names?
func (l *nsLog) touchedDir(g, self uint64, d string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if g < l.floor {
		return true
	}
	if l.in[d].after(g, self) {
		return true
	}
	for q := d; q != ""; q = parent(q) {
		if l.at[q].after(g, self) {
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
