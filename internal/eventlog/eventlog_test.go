package eventlog

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func openTemp(t *testing.T) (*Log, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "modules", "db", "events.log")
	l, err := Open(path, "db", "alpha")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l, path
}

func TestAddRead(t *testing.T) {
	l, path := openTemp(t)
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("file mode %v, want 0600", st.Mode().Perm())
	}
	dst, _ := os.Stat(filepath.Dir(path))
	if dst.Mode().Perm() != 0o700 {
		t.Errorf("dir mode %v, want 0700", dst.Mode().Perm())
	}

	e := l.Add(KindState, "PRIM -> ALONE", "peer", "beta", "epoch", 7,
		"err", errors.New("boom"), "took", 1500*time.Millisecond, slog.Bool("forced", true), "dangling")
	if e.Module != "db" || e.Node != "alpha" || e.Kind != "state" || e.Time.IsZero() {
		t.Fatalf("bad event %+v", e)
	}
	for i := range 9 {
		l.Add(KindInfo, fmt.Sprintf("event %d", i))
	}

	all, err := Read(path, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 10 {
		t.Fatalf("Read all: %d events, want 10", len(all))
	}
	f := all[0].Fields
	if f["peer"] != "beta" || f["epoch"] != float64(7) || f["err"] != "boom" ||
		f["took"] != "1.5s" || f["forced"] != true || f["!BADKEY"] != "dangling" {
		t.Errorf("fields = %#v", f)
	}
	last, err := Read(path, 3)
	if err != nil {
		t.Fatal(err)
	}
	if len(last) != 3 || last[0].Msg != "event 6" || last[2].Msg != "event 8" {
		t.Fatalf("Read last 3 = %+v", last)
	}
	many, _ := Read(path, 100)
	if len(many) != 10 {
		t.Errorf("Read 100 gave %d, want 10", len(many))
	}
	none, err := Read(filepath.Join(t.TempDir(), "nope.log"), 5)
	if err != nil || len(none) != 0 {
		t.Errorf("missing file: %v, %v", none, err)
	}
}

func TestUnencodableField(t *testing.T) {
	l, path := openTemp(t)
	l.Add(KindInfo, "odd", "ch", make(chan int), "n", 1)
	evs, _ := Read(path, 0)
	if len(evs) != 1 || evs[0].Fields["n"] != float64(1) {
		t.Fatalf("got %+v", evs)
	}
	if s, ok := evs[0].Fields["ch"].(string); !ok || !strings.HasPrefix(s, "0x") {
		t.Errorf("channel field stored as %#v", evs[0].Fields["ch"])
	}
}

func TestTornLine(t *testing.T) {
	l, path := openTemp(t)
	l.Add(KindInfo, "one")
	l.Add(KindInfo, "two")
	l.Close()
	// A crash mid-write leaves half an event without newline.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"time":"2026-11-25T14:00:01Z","module":"db","kind":"inf`)
	f.Close()

	evs, err := Read(path, 0)
	if err != nil || len(evs) != 2 || evs[1].Msg != "two" {
		t.Fatalf("Read with torn tail = %+v, %v", evs, err)
	}
	evs, _ = Read(path, 1)
	if len(evs) != 1 || evs[0].Msg != "two" {
		t.Fatalf("Read last 1 with torn tail = %+v", evs)
	}

	// Reopening ends the torn line so the next event is readable.
	l2, err := Open(path, "db", "alpha")
	if err != nil {
		t.Fatal(err)
	}
	defer l2.Close()
	l2.Add(KindInfo, "three")
	evs, _ = Read(path, 0)
	if len(evs) != 3 || evs[2].Msg != "three" {
		t.Fatalf("after reopen = %+v", evs)
	}
	// Garbage in the middle is skipped too.
	os.WriteFile(path, []byte("garbage\n{\"time\":\"2026-11-25T14:00:01Z\",\"msg\":\"ok\"}\n{bad json}\n"), 0o600)
	evs, _ = Read(path, 0)
	if len(evs) != 1 || evs[0].Msg != "ok" {
		t.Fatalf("with garbage = %+v", evs)
	}
}

func TestReadLargeWindow(t *testing.T) {
	l, path := openTemp(t)
	big := strings.Repeat("x", 3000)
	for i := range 200 {
		l.Add(KindOutput, fmt.Sprintf("%d %s", i, big))
	}
	evs, end, err := ReadTail(path, 150)
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) != 150 || !strings.HasPrefix(evs[0].Msg, "50 ") || !strings.HasPrefix(evs[149].Msg, "199 ") {
		t.Fatalf("got %d events, first %.5q", len(evs), evs[0].Msg)
	}
	st, _ := os.Stat(path)
	if end != st.Size() {
		t.Errorf("end offset %d, want %d", end, st.Size())
	}
}

func TestRotation(t *testing.T) {
	l, path := openTemp(t)
	l.maxSize = 4096
	pad := strings.Repeat("p", 200)
	for i := range 40 {
		l.Add(KindInfo, fmt.Sprintf("e%02d %s", i, pad))
	}
	cur, _ := os.Stat(path)
	old, err := os.Stat(path + ".1")
	if err != nil {
		t.Fatalf("no rotated file: %v", err)
	}
	if cur.Size() > 4096+512 || old.Size() > 4096+512 {
		t.Errorf("sizes after rotation: cur %d old %d", cur.Size(), old.Size())
	}
	if _, err := os.Stat(path + ".2"); err == nil {
		t.Error("more than one old file kept")
	}
	// Read spans the rotated file when asked for more than the current holds.
	evs, _ := Read(path, 0)
	if len(evs) < 20 || evs[len(evs)-1].Msg[:3] != "e39" {
		t.Fatalf("Read after rotation: %d events", len(evs))
	}
	for i := 1; i < len(evs); i++ {
		if evs[i].Msg <= evs[i-1].Msg {
			t.Fatalf("out of order at %d: %.3s after %.3s", i, evs[i].Msg, evs[i-1].Msg)
		}
	}
	ncur, _ := Read(path+"", 0)
	two, _ := Read(path, 2)
	if len(two) != 2 || two[1].Msg != ncur[len(ncur)-1].Msg {
		t.Errorf("Read last 2 after rotation = %+v", two)
	}
}

func TestConcurrentAddsDoNotInterleave(t *testing.T) {
	l, path := openTemp(t)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 100 {
				l.Add(KindOutput, strings.Repeat(string(rune('a'+g)), 1000), "i", i)
			}
		}()
	}
	wg.Wait()
	evs, _ := Read(path, 0)
	if len(evs) != 800 {
		t.Fatalf("%d events, want 800", len(evs))
	}
}

func collect(t *testing.T, ctx context.Context, path string, from int64) (<-chan Event, <-chan error) {
	t.Helper()
	ch := make(chan Event, 1000)
	done := make(chan error, 1)
	go func() {
		done <- Follow(ctx, path, from, func(e Event) error { ch <- e; return nil })
	}()
	return ch, done
}

func expect(t *testing.T, ch <-chan Event, msgs ...string) {
	t.Helper()
	for _, m := range msgs {
		select {
		case e := <-ch:
			if e.Msg != m {
				t.Fatalf("followed %q, want %q", e.Msg, m)
			}
		case <-time.After(3 * time.Second):
			t.Fatalf("timed out waiting for %q", m)
		}
	}
}

func TestFollow(t *testing.T) {
	l, path := openTemp(t)
	l.Add(KindInfo, "before")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, done := collect(t, ctx, path, -1)
	time.Sleep(250 * time.Millisecond) // let Follow pick its starting offset
	l.Add(KindInfo, "a1")
	l.Add(KindInfo, "a2")
	expect(t, ch, "a1", "a2")

	// Truncation: start over from the beginning.
	l.mu.Lock()
	l.f.Truncate(0)
	l.size = 0
	l.mu.Unlock()
	time.Sleep(250 * time.Millisecond)
	l.Add(KindInfo, "after-truncate")
	expect(t, ch, "after-truncate")

	// Rotation: the new file is followed from its start.
	l.mu.Lock()
	l.maxSize = 0
	l.mu.Unlock()
	l.Add(KindInfo, "rotating") // goes to the new file (old one was > 0 bytes)
	l.mu.Lock()
	l.maxSize = MaxSize
	l.mu.Unlock()
	l.Add(KindInfo, "rotated")
	expect(t, ch, "rotating", "rotated")

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Follow returned %v after cancel", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Follow did not stop after cancel")
	}
}

func TestFollowFromOffsetAndFnError(t *testing.T) {
	l, path := openTemp(t)
	l.Add(KindInfo, "x1")
	l.Add(KindInfo, "x2")
	evs, end, err := ReadTail(path, 1)
	if err != nil || len(evs) != 1 {
		t.Fatal(evs, err)
	}
	l.Add(KindInfo, "x3")
	stop := errors.New("enough")
	var got []string
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err = Follow(ctx, path, end, func(e Event) error {
		got = append(got, e.Msg)
		return stop
	})
	if !errors.Is(err, stop) || len(got) != 1 || got[0] != "x3" {
		t.Fatalf("Follow from %d: %v, %v", end, got, err)
	}
	// From 0 sees everything.
	got = nil
	err = Follow(ctx, path, 0, func(e Event) error {
		got = append(got, e.Msg)
		if len(got) == 3 {
			return stop
		}
		return nil
	})
	if !errors.Is(err, stop) || strings.Join(got, ",") != "x1,x2,x3" {
		t.Fatalf("Follow from 0: %v, %v", got, err)
	}
}

func TestFollowWaitsForFileAndPartialLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "later", "events.log")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ch, _ := collect(t, ctx, path, -1)
	time.Sleep(250 * time.Millisecond)
	l, err := Open(path, "db", "alpha")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	l.Add(KindInfo, "first")
	expect(t, ch, "first")

	// A line written in two pieces is delivered once, whole.
	line := encode(Event{Time: time.Now(), Msg: "split"})
	f, _ := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	defer f.Close()
	f.Write(line[:10])
	time.Sleep(250 * time.Millisecond)
	f.Write(line[10:])
	expect(t, ch, "split")
}

func TestFormat(t *testing.T) {
	ts := time.Date(2026, 11, 25, 14, 0, 1, 123456789, time.UTC)
	e := Event{Time: ts, Kind: "state", Msg: "PRIM -> ALONE",
		Fields: map[string]any{"peer": "beta", "reason": "peer silent 1s", "epoch": float64(7), "empty": ""}}
	got := Format(e)
	want := `2026-11-25 14:00:01.123 state  PRIM -> ALONE  empty="" epoch=7 peer=beta reason="peer silent 1s"`
	if got != want {
		t.Errorf("Format:\n got %q\nwant %q", got, want)
	}
	e = Event{Time: ts, Kind: "output", Msg: "a\nb"}
	if got := Format(e); strings.Contains(got, "\n") || !strings.HasSuffix(got, `a\nb`) {
		t.Errorf("Format kept a newline: %q", got)
	}
}

func TestMirrorAndNil(t *testing.T) {
	l, _ := openTemp(t)
	var buf bytes.Buffer
	l.SetMirror(slog.New(slog.NewTextHandler(&buf, nil)))
	l.Add(KindError, "start_prim failed", "code", 3)
	l.Add(KindInfo, "hello")
	out := buf.String()
	if !strings.Contains(out, "level=WARN msg=\"start_prim failed\" module=db kind=error code=3") ||
		!strings.Contains(out, "level=INFO msg=hello") {
		t.Errorf("mirror output:\n%s", out)
	}
	var nl *Log
	if e := nl.Add(KindInfo, "dropped", "k", 1); e.Msg != "dropped" {
		t.Error("nil Log Add")
	}
	if err := nl.Close(); err != nil {
		t.Error(err)
	}
	l.Close()
	l.Add(KindInfo, "after close") // must not panic
}
