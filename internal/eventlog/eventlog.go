// Package eventlog is the per-module structured event log: one JSON object
// per line in one file per module (what `tandem logs` shows). Writers append
// each event with a single write(2) under a mutex, so a reader never sees two
// events interleaved; readers tolerate a torn last line (crash mid-write).
//
// The file is rotated once it exceeds MaxSize: events.log becomes
// events.log.1 (one old file kept) and a new events.log is started.
package eventlog

import (
	"bytes"
	"context"
	"encoding"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"
)

// MaxSize is the size past which Add rotates the file.
const MaxSize = 10 << 20

// Event kinds used across Tandem.
const (
	KindState   = "state"
	KindScript  = "script"
	KindOutput  = "output"
	KindVIP     = "vip"
	KindPeer    = "peer"
	KindAdmin   = "admin"
	KindError   = "error"
	KindChecker = "checker"
	KindInfo    = "info"
)

// Event is one line of the log.
type Event struct {
	Time   time.Time      `json:"time"`
	Module string         `json:"module"`
	Node   string         `json:"node"`
	Kind   string         `json:"kind"`
	Msg    string         `json:"msg"`
	Fields map[string]any `json:"fields,omitempty"`
}

// Log appends events to one module's file. Its methods are safe for
// concurrent use, and a nil *Log accepts Add (and drops the event), so
// callers need no nil checks.
type Log struct {
	path, module, node string

	mu      sync.Mutex
	f       *os.File
	size    int64
	closed  bool
	mirror  *slog.Logger
	maxSize int64
	now     func() time.Time
	lastErr string // last write error reported, to avoid repeating it per event
}

// Open opens (creating it and its directories) the log file at path for
// appending events of module on node.
func Open(path, module, node string) (*Log, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("eventlog %s: create directory: %w", path, err)
	}
	l := &Log{path: path, module: module, node: node, maxSize: MaxSize, now: time.Now}
	if err := l.openFile(); err != nil {
		return nil, err
	}
	return l, nil
}

// openFile opens l.path for appending; if a previous writer crashed
// mid-line, it ends that torn line so the next event starts on its own line.
func (l *Log) openFile() error {
	f, err := os.OpenFile(l.path, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("eventlog %s: open: %w", l.path, err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("eventlog %s: stat: %w", l.path, err)
	}
	size := st.Size()
	if size > 0 {
		var b [1]byte
		if _, err := f.ReadAt(b[:], size-1); err == nil && b[0] != '\n' {
			if n, err := f.Write([]byte{'\n'}); err == nil {
				size += int64(n)
			}
		}
	}
	l.f, l.size = f, size
	return nil
}

// Path returns the file the log writes to.
func (l *Log) Path() string {
	if l == nil {
		return ""
	}
	return l.path
}

// SetMirror makes every later event also go to logger (Info level, Warn for
// kind "error"); nil stops mirroring.
func (l *Log) SetMirror(logger *slog.Logger) {
	if l == nil {
		return
	}
	l.mu.Lock()
	l.mirror = logger
	l.mu.Unlock()
}

// Add records an event. kv are slog-style key/value pairs (or slog.Attr);
// errors, durations and fmt.Stringers are stored as strings. Add never fails:
// a write error is reported once on the mirror (or slog's default logger).
func (l *Log) Add(kind, msg string, kv ...any) Event {
	e := Event{Kind: kind, Msg: msg, Fields: fields(kv)}
	if l == nil {
		e.Time = time.Now()
		return e
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	e.Time, e.Module, e.Node = l.now(), l.module, l.node
	if l.closed {
		return e
	}
	line := encode(e)
	// A failed rotation is reported, but the event still goes to the
	// current file rather than being lost.
	rerr := l.rotateIfNeeded()
	n, err := l.f.Write(line)
	l.size += int64(n)
	if err == nil {
		err = rerr
	}
	if l.mirror != nil {
		lvl := slog.LevelInfo
		if kind == KindError {
			lvl = slog.LevelWarn
		}
		args := append([]any{"module", l.module, "kind", kind}, kv...)
		l.mirror.Log(context.Background(), lvl, msg, args...)
	}
	l.reportErr(err)
	return e
}

func (l *Log) reportErr(err error) {
	if err == nil {
		l.lastErr = ""
		return
	}
	if err.Error() == l.lastErr {
		return
	}
	l.lastErr = err.Error()
	logger := l.mirror
	if logger == nil {
		logger = slog.Default()
	}
	logger.Warn("event log write failed; events are being lost until it recovers",
		"module", l.module, "path", l.path, "err", err)
}

func (l *Log) rotateIfNeeded() error {
	if l.size <= l.maxSize {
		return nil
	}
	if err := os.Rename(l.path, l.path+".1"); err != nil {
		return fmt.Errorf("eventlog %s: rotate: %w", l.path, err)
	}
	old := l.f
	if err := l.openFile(); err != nil {
		return err // keep writing to the renamed file meanwhile
	}
	old.Close()
	return nil
}

// Close closes the file; later Adds are dropped.
func (l *Log) Close() error {
	if l == nil {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return nil
	}
	l.closed = true
	if err := l.f.Close(); err != nil {
		return fmt.Errorf("eventlog %s: close: %w", l.path, err)
	}
	return nil
}

// encode returns the event as one JSON line. A field value JSON cannot
// encode (a channel, a func) is stored as its fmt.Sprint form instead.
func encode(e Event) []byte {
	b, err := json.Marshal(e)
	if err != nil {
		for k, v := range e.Fields {
			if _, err := json.Marshal(v); err != nil {
				e.Fields[k] = fmt.Sprint(v)
			}
		}
		b, err = json.Marshal(e)
		if err != nil { // cannot happen: every field is now encodable
			b = []byte(`{"kind":"error","msg":"eventlog: unencodable event"}`)
		}
	}
	return append(b, '\n')
}

// fields turns slog-style key/value pairs into a map, the way slog does:
// a key without a value, or a non-string key, is stored under "!BADKEY".
func fields(kv []any) map[string]any {
	if len(kv) == 0 {
		return nil
	}
	m := make(map[string]any, len(kv)/2)
	for i := 0; i < len(kv); {
		switch k := kv[i].(type) {
		case slog.Attr:
			addAttr(m, k)
			i++
		case string:
			if i+1 < len(kv) {
				m[k] = norm(kv[i+1])
				i += 2
			} else {
				m["!BADKEY"] = k
				i++
			}
		default:
			m["!BADKEY"] = norm(k)
			i++
		}
	}
	return m
}

func addAttr(m map[string]any, a slog.Attr) {
	v := a.Value.Resolve()
	if v.Kind() != slog.KindGroup {
		m[a.Key] = norm(v.Any())
		return
	}
	if a.Key == "" { // slog inlines groups without a key
		for _, g := range v.Group() {
			addAttr(m, g)
		}
		return
	}
	sub := map[string]any{}
	for _, g := range v.Group() {
		addAttr(sub, g)
	}
	m[a.Key] = sub
}

func norm(v any) any {
	switch x := v.(type) {
	case nil:
		return nil
	case error:
		return x.Error()
	case time.Duration:
		return x.String()
	case time.Time:
		return x
	case slog.Value:
		return norm(x.Resolve().Any())
	case json.Marshaler, encoding.TextMarshaler:
		return x
	case fmt.Stringer:
		return x.String()
	}
	return v
}

// Read returns the last `last` events (all when last <= 0) of the log at
// path, including the rotated file when needed, oldest first. Malformed
// lines and a torn last line are skipped. A log that does not exist yet
// reads as empty.
func Read(path string, last int) ([]Event, error) {
	evs, _, err := ReadTail(path, last)
	return evs, err
}

// ReadTail is Read plus the byte offset in path just past the last complete
// line read: passing it to Follow continues with no gap and no repeat.
func ReadTail(path string, last int) ([]Event, int64, error) {
	cur, end, err := readFile(path, last)
	if err != nil {
		return nil, 0, err
	}
	if last > 0 && len(cur) >= last {
		return cur, end, nil
	}
	want := 0
	if last > 0 {
		want = last - len(cur)
	}
	old, _, err := readFile(path+".1", want)
	if err != nil {
		return nil, 0, err
	}
	return append(old, cur...), end, nil
}

// readFile reads the last n events of one file (all when n <= 0). For n > 0
// it reads a growing window from the end, so `logs` on a big file stays
// cheap. It returns the offset just past the last complete line.
func readFile(path string, n int) ([]Event, int64, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("eventlog: read %s: %w", path, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, 0, fmt.Errorf("eventlog: read %s: %w", path, err)
	}
	size := st.Size()
	window := int64(64 << 10)
	if n <= 0 {
		window = size
	} else if w := int64(n) * 1024; w > window {
		window = w
	}
	for {
		if window > size {
			window = size
		}
		buf := make([]byte, window)
		start := size - window
		if _, err := f.ReadAt(buf, start); err != nil && !errors.Is(err, io.EOF) {
			return nil, 0, fmt.Errorf("eventlog: read %s: %w", path, err)
		}
		// Only whole lines count: drop what follows the last newline (torn
		// or being written) and, unless at the file start, what precedes the
		// first one (a line cut by the window).
		i := bytes.LastIndexByte(buf, '\n')
		end := start + int64(i+1)
		buf = buf[:i+1]
		if start > 0 {
			j := bytes.IndexByte(buf, '\n')
			buf = buf[j+1:]
		}
		evs := parseLines(buf)
		if n <= 0 || len(evs) >= n || start == 0 {
			if n > 0 && len(evs) > n {
				evs = evs[len(evs)-n:]
			}
			return evs, end, nil
		}
		window *= 2
	}
}

func parseLines(buf []byte) []Event {
	var evs []Event
	for len(buf) > 0 {
		i := bytes.IndexByte(buf, '\n')
		if i < 0 {
			break
		}
		if e, ok := parseLine(buf[:i]); ok {
			evs = append(evs, e)
		}
		buf = buf[i+1:]
	}
	return evs
}

func parseLine(line []byte) (Event, bool) {
	var e Event
	line = bytes.TrimSpace(line)
	if len(line) == 0 || line[0] != '{' {
		return e, false
	}
	if err := json.Unmarshal(line, &e); err != nil || e.Time.IsZero() {
		return e, false
	}
	return e, true
}

// maxFollowLine bounds the memory Follow spends on one line; longer lines
// (never written by Log) are skipped.
const maxFollowLine = 1 << 20

// pollInterval is how often Follow looks for new data.
var pollInterval = 100 * time.Millisecond

// Follow calls fn for every event appended to the log at path, starting at
// byte offset from (-1: the current end) and going on until ctx is done
// (then it returns nil) or fn returns an error (returned as is). It waits for
// the file if it does not exist yet, and follows rotation and truncation by
// reopening the path.
func Follow(ctx context.Context, path string, from int64, fn func(Event) error) error {
	t := &follower{path: path, fn: fn}
	defer t.close()
	first := true // the next open is the first one: it honours from
	tick := time.NewTicker(pollInterval)
	defer tick.Stop()
	for {
		if t.f == nil {
			ok, err := t.open(from, first)
			if err != nil {
				return err
			}
			if ok {
				first = false
			} else {
				from = 0 // created later: everything in it is new
			}
		}
		if t.f != nil {
			if err := t.drain(ctx); err != nil {
				return err
			}
			if err := t.checkReplaced(ctx); err != nil {
				return err
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

type follower struct {
	path    string
	fn      func(Event) error
	f       *os.File
	off     int64
	pending []byte
	skip    bool // dropping an over-long line up to its newline
	buf     []byte
}

func (t *follower) close() {
	if t.f != nil {
		t.f.Close()
		t.f = nil
	}
}

// open opens the path; the first time, at offset from (clamped to the file
// size; -1 = end), later (after rotation) at 0.
func (t *follower) open(from int64, first bool) (bool, error) {
	f, err := os.Open(t.path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("eventlog: follow %s: %w", t.path, err)
	}
	off := int64(0)
	if first {
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return false, fmt.Errorf("eventlog: follow %s: %w", t.path, err)
		}
		switch {
		case from < 0:
			off = st.Size()
		case from <= st.Size():
			off = from
		}
	}
	t.f, t.off, t.pending, t.skip = f, off, t.pending[:0], false
	return true, nil
}

// drain reads from the current offset to the end of the open file and
// hands every complete line to fn.
func (t *follower) drain(ctx context.Context) error {
	if t.buf == nil {
		t.buf = make([]byte, 64<<10)
	}
	for {
		n, err := t.f.ReadAt(t.buf, t.off)
		t.off += int64(n)
		if perr := t.feed(ctx, t.buf[:n]); perr != nil {
			return perr
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("eventlog: follow %s: %w", t.path, err)
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}

func (t *follower) feed(ctx context.Context, b []byte) error {
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			if !t.skip {
				t.pending = append(t.pending, b...)
				if len(t.pending) > maxFollowLine {
					t.pending, t.skip = t.pending[:0], true
				}
			}
			return nil
		}
		if !t.skip {
			line := b[:i]
			if len(t.pending) > 0 {
				t.pending = append(t.pending, line...)
				line = t.pending
			}
			if e, ok := parseLine(line); ok && ctx.Err() == nil {
				if err := t.fn(e); err != nil {
					return err
				}
			}
		}
		t.pending, t.skip = t.pending[:0], false
		b = b[i+1:]
	}
	return nil
}

// checkReplaced notices rotation (the path is another file now) and
// truncation (the file is shorter than what was read).
func (t *follower) checkReplaced(ctx context.Context) error {
	st, err := os.Stat(t.path)
	if err != nil {
		return nil // removed: keep the old file until a new one appears
	}
	cur, err := t.f.Stat()
	if err != nil {
		return fmt.Errorf("eventlog: follow %s: %w", t.path, err)
	}
	if !os.SameFile(st, cur) {
		// Writes to the old file all happened before the rename: read
		// what arrived since the last drain, then switch.
		if err := t.drain(ctx); err != nil {
			return err
		}
		t.close()
		_, err := t.open(0, false)
		if err != nil {
			return err
		}
		if t.f != nil {
			return t.drain(ctx)
		}
		return nil
	}
	if st.Size() < t.off {
		t.off, t.pending, t.skip = 0, t.pending[:0], false
		return t.drain(ctx)
	}
	return nil
}

// Format renders an event as one human line:
//
//	2026-11-25 14:00:01.123 state  PRIM -> ALONE  peer=beta reason=...
//
// Fields are sorted by key; values with spaces or special characters are
// quoted.
func Format(e Event) string {
	var sb strings.Builder
	sb.WriteString(e.Time.Format("2006-01-02 15:04:05.000"))
	fmt.Fprintf(&sb, " %-6s %s", e.Kind, oneLine(e.Msg))
	if len(e.Fields) > 0 {
		keys := make([]string, 0, len(e.Fields))
		for k := range e.Fields {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		sb.WriteString(" ")
		for _, k := range keys {
			sb.WriteString(" ")
			sb.WriteString(quote(k))
			sb.WriteString("=")
			sb.WriteString(quote(fieldString(e.Fields[k])))
		}
	}
	return sb.String()
}

func fieldString(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case nil:
		return "null"
	case float64: // JSON numbers come back as float64
		if x == float64(int64(x)) {
			return strconv.FormatInt(int64(x), 10)
		}
		return strconv.FormatFloat(x, 'g', -1, 64)
	case bool, int, int64, uint64, int32, uint32:
		return fmt.Sprint(x)
	}
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

func quote(s string) string {
	if s == "" {
		return `""`
	}
	for _, r := range s {
		if unicode.IsSpace(r) || r == '"' || r == '=' || !unicode.IsPrint(r) {
			return strconv.Quote(s)
		}
	}
	return s
}

// oneLine keeps a message on one line: control characters are escaped.
func oneLine(s string) string {
	if strings.IndexFunc(s, func(r rune) bool { return r != '\t' && unicode.IsControl(r) }) < 0 {
		return s
	}
	q := strconv.Quote(s)
	return q[1 : len(q)-1]
}
