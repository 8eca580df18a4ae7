package demo

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestScanValid(t *testing.T) {
	good := recordLine(1, Payload(1)) + recordLine(2, Payload(2))
	cases := []struct {
		name string
		data string
		end  int
		last uint64
	}{
		{"empty", "", 0, 0},
		{"whole", good, len(good), 2},
		{"torn tail", good + "3 abc", len(good), 2},
		{"torn payload with newline", good + "3 abc\n", len(good), 2},
		{"id going back", good + recordLine(2, Payload(2)), len(good), 2},
		{"garbage first", "hello\n" + good, 0, 0},
	}
	for _, c := range cases {
		end, last := scanValid([]byte(c.data))
		if end != int64(c.end) || last != c.last {
			t.Errorf("%s: scanValid = (%d, %d), want (%d, %d)", c.name, end, last, c.end, c.last)
		}
	}
}

func TestVerifyData(t *testing.T) {
	var b strings.Builder
	for id := uint64(1); id <= 10; id++ {
		switch id {
		case 4: // missing
		case 7: // damaged: another id's payload
			b.WriteString(recordLine(7, Payload(8)))
		default:
			b.WriteString(recordLine(id, Payload(id)))
		}
	}
	v := verifyData([]byte(b.String()), []uint64{1, 2, 3, 4, 5, 6, 7, 8})
	if v.Acked != 8 || v.Present != 6 || !slices.Equal(v.Lost, []uint64{4, 7}) || v.Damaged != 1 {
		t.Fatalf("verifyData = %+v, want 8 acked, 6 present, lost [4 7], 1 damaged", v)
	}
}

func TestIDRanges(t *testing.T) {
	if got := idRanges([]uint64{9, 1, 2, 3, 7, 5, 6}); got != "1-3, 5-7, 9" {
		t.Errorf("idRanges = %q", got)
	}
	var many []uint64
	for i := uint64(0); i < 30; i++ {
		many = append(many, i*2+1)
	}
	if got := idRanges(many); !strings.HasSuffix(got, "... (30 ids in all)") {
		t.Errorf("idRanges of 30 isolated ids = %q, want it cut", got)
	}
}

func TestParse(t *testing.T) {
	if id, p, err := parsePut("put 12 " + Payload(12)); err != nil || id != 12 || p != Payload(12) {
		t.Errorf("parsePut valid: %d %q %v", id, p, err)
	}
	for _, bad := range []string{"", "put", "put 0 " + Payload(1), "put x " + Payload(1), "put 1 XYZ", "get 1 " + Payload(1), "put 1 " + strings.ToUpper(Payload(1))} {
		if _, _, err := parsePut(bad); err == nil {
			t.Errorf("parsePut(%q) accepted", bad)
		}
	}
	if n, last, err := parseGreeting("hello beta 42"); err != nil || n != "beta" || last != 42 {
		t.Errorf("parseGreeting: %q %d %v", n, last, err)
	}
	if _, _, err := parseGreeting("hi"); err == nil {
		t.Error("parseGreeting accepted a bad line")
	}
}

func TestOutage(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	acks := []ack{
		{1, at(-20), "alpha"},
		{2, at(-5), "alpha"},
		{3, at(3), "alpha"}, // in flight at the kill
		{4, at(700), "beta"},
		{5, at(705), "beta"},
	}
	before, after, ok := outage(acks, t0, "beta")
	if !ok || !before.Equal(at(3)) || !after.Equal(at(700)) {
		t.Errorf("outage = %v %v %v, want the last ack before beta's first and beta's first", before, after, ok)
	}
	if _, _, ok := outage(acks, at(800), "beta"); ok {
		t.Error("outage found an ack after the last one")
	}
}

// The recorder behaves like testing.T for tcluster: Fatalf ends the
// goroutine, cleanups run last first, and a Fatalf inside a cleanup does
// not stop the others.
func TestRecorder(t *testing.T) {
	r := &recorder{}
	var order []int
	var mu sync.Mutex
	add := func(i int) func() {
		return func() {
			mu.Lock()
			order = append(order, i)
			mu.Unlock()
		}
	}
	done := make(chan struct{})
	reached := false
	go func() {
		defer close(done)
		r.Cleanup(add(1))
		r.Cleanup(func() { r.Fatalf("cleanup %d failed", 2) })
		r.Cleanup(add(3))
		r.Fatalf("step failed: %s", "boom")
		reached = true
	}()
	<-done
	if reached {
		t.Fatal("code after Fatalf ran")
	}
	r.runCleanups()
	if !slices.Equal(order, []int{3, 1}) {
		t.Errorf("cleanup order %v, want [3 1]", order)
	}
	if !r.Failed() || r.errors() != "step failed: boom; cleanup 2 failed" {
		t.Errorf("failed %v, errors %q", r.Failed(), r.errors())
	}
}

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// startApp runs the application on a local port and returns a dialer.
func startApp(t *testing.T, dir, addr string) (dial func(context.Context) (net.Conn, error), stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	pid := filepath.Join(dir, "app.pid")
	os.Remove(pid)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	go func() {
		errc <- RunApp(ctx, AppOptions{Listen: addr, Dir: dir, Node: "n1", PIDFile: pid, Logger: quiet})
	}()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := os.Stat(pid); err == nil {
			break
		}
		select {
		case err := <-errc:
			cancel()
			t.Fatalf("app exited at start: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			cancel()
			t.Fatal("app did not write its pid file within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
	dial = func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}
	return dial, func() error {
		cancel()
		select {
		case err := <-errc:
			return err
		case <-time.After(5 * time.Second):
			return fmt.Errorf("app did not stop within 5s")
		}
	}
}

// The application stores what the client sends, continues after a
// restart, cuts a torn tail, and acknowledges a resent record once.
func TestAppAndClient(t *testing.T) {
	dir, addr := t.TempDir(), freePort(t)
	dial, stop := startApp(t, dir, addr)
	var events []string
	var mu sync.Mutex
	event := func(f string, a ...any) {
		mu.Lock()
		events = append(events, fmt.Sprintf(f, a...))
		mu.Unlock()
	}
	cl, err := newClient(dial, time.Millisecond, filepath.Join(dir, "acks.log"), event)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); cl.run(ctx) }()
	deadline := time.Now().Add(10 * time.Second)
	for len(cl.ids()) < 50 {
		if time.Now().After(deadline) {
			t.Fatalf("only %d acks in 10s; events %v", len(cl.ids()), events)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	// The client retries while the application is down; a torn record
	// is left as a crash would.
	path := filepath.Join(dir, DataFile)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("99999 0123")
	f.Close()
	acked := len(cl.ids())
	_, stop = startApp(t, dir, addr)
	deadline = time.Now().Add(10 * time.Second)
	for len(cl.ids()) < acked+50 {
		if time.Now().After(deadline) {
			t.Fatalf("client did not resume: %d acks (had %d); events %v", len(cl.ids()), acked, events)
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	<-done
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	ids := cl.ids()
	for i, id := range ids {
		if id != uint64(i+1) {
			t.Fatalf("ack %d is id %d: acks must be 1, 2, 3...", i, id)
		}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	v := verifyData(data, ids)
	if len(v.Lost) > 0 || v.Damaged > 0 {
		t.Fatalf("after restart: %+v", v)
	}
	if end, last := scanValid(data); end != int64(len(data)) || last < uint64(len(ids)) {
		t.Errorf("data file not clean: valid %d of %d bytes, last %d, acked %d", end, len(data), last, len(ids))
	}
	logData, err := os.ReadFile(filepath.Join(dir, "acks.log"))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(logData), "\n"); n != len(ids) {
		t.Errorf("ack log has %d lines, want %d", n, len(ids))
	}
}

// A resent id is acknowledged without a second copy.
func TestAppDuplicate(t *testing.T) {
	dir := t.TempDir()
	dial, stop := startApp(t, dir, freePort(t))
	defer stop()
	conn, err := dial(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	r := bufio.NewReader(conn)
	if l, err := r.ReadString('\n'); err != nil || l != "hello n1 0\n" {
		t.Fatalf("greeting %q %v", l, err)
	}
	for _, req := range []string{"put 1 " + Payload(1), "put 1 " + Payload(1), "put 2 " + Payload(2), "bogus"} {
		fmt.Fprintln(conn, req)
		l, err := r.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		want := "ack"
		if req == "bogus" {
			want = "err"
		}
		if !strings.HasPrefix(l, want) {
			t.Errorf("%q answered %q, want %s", req, l, want)
		}
	}
	data, _ := os.ReadFile(filepath.Join(dir, DataFile))
	if string(data) != recordLine(1, Payload(1))+recordLine(2, Payload(2)) {
		t.Errorf("data file %q", data)
	}
}

func TestShellQuote(t *testing.T) {
	if got := shellQuote("/a b/it's"); got != `'/a b/it'\''s'` {
		t.Errorf("shellQuote = %s", got)
	}
	s := appScripts("/usr/local/bin/tandem")
	if !strings.Contains(s["start_prim"], "'/usr/local/bin/tandem' demo-app --listen :7000 --dir /srv/tandem-demo") {
		t.Errorf("start_prim:\n%s", s["start_prim"])
	}
}
