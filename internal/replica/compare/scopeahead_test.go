package compare

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tandem-ha/tandem/internal/replica/treecmp"
	"github.com/tandem-ha/tandem/internal/testbed"
)

// openUncached opens p, out of the page cache (the test skips where the
// filesystem keeps it cached); closed when the test ends.
func openUncached(t *testing.T, p string) *os.File {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	if ok, err := testbed.Uncache(f); err != nil {
		t.Fatal(err)
	} else if !ok {
		t.Skip("this filesystem keeps the pages cached: cannot tell what is read ahead")
	}
	return f
}

// TestReadAheadScope: the scope's zones are read in the order given, at
// most the window ahead of what the workers reached, skipping files gone;
// the read-ahead ends when the run does.
func TestReadAheadScope(t *testing.T) {
	root := t.TempDir()
	const zone = 64 << 10
	data := bytes.Repeat([]byte("scopeahd"), 8*zone/8)
	files := map[string]*os.File{}
	for _, n := range []string{"a", "b"} {
		if err := os.WriteFile(filepath.Join(root, n), data, 0o644); err != nil {
			t.Fatal(err)
		}
		files[n] = openUncached(t, filepath.Join(root, n))
	}
	rootFd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(rootFd)

	list := []aheadFile{
		{"a", []Zone{{Off: 0, Len: zone}, {Off: 4 * zone, Len: zone}}},
		{"gone", []Zone{{Off: 0, Len: zone}}},
		{"b", []Zone{{Off: 2 * zone, Len: zone}, {Off: 6 * zone, Len: 2 * zone}}},
	}
	resident := func(n string, off, l int64) int {
		r, err := testbed.Resident(files[n], off, l)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	pages := zone / os.Getpagesize()
	// waitFor waits, bounded, until the zones are cached.
	waitFor := func(what string, cached func() bool) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !cached() {
			if time.Now().After(deadline) {
				t.Fatalf("%s not read ahead within 5s", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	var reached atomic.Int64
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan int64, 1)
	go func() { done <- readAheadScope(ctx, rootFd, list, 2*zone, reached.Load) }()

	// The window: a's two zones, not b's.
	waitFor("a's zones", func() bool { return resident("a", 0, zone) == pages && resident("a", 4*zone, zone) == pages })
	time.Sleep(50 * time.Millisecond)
	if r := resident("b", 0, 8*zone); r != 0 {
		t.Fatalf("%d pages of b read ahead with the window full (nothing reached)", r)
	}
	if r := resident("a", zone, 3*zone); r != 0 {
		t.Fatalf("%d pages of a outside its zones read ahead", r)
	}
	// The workers reach a's first zone: b's first zone follows, not its
	// second.
	reached.Store(zone)
	waitFor("b's first zone", func() bool { return resident("b", 2*zone, zone) == pages })
	time.Sleep(50 * time.Millisecond)
	if r := resident("b", 6*zone, 2*zone); r != 0 {
		t.Fatalf("%d pages of b's second zone read ahead beyond the window", r)
	}
	// The run ends while it waits: it returns what it advised.
	cancel()
	select {
	case n := <-done:
		if n != 3*zone {
			t.Fatalf("readAheadScope advised %d bytes, want %d", n, 3*zone)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("readAheadScope did not return within 5s of the run's end")
	}

	// Without a limit it reads every zone of the list.
	for _, f := range files {
		if _, err := testbed.Uncache(f); err != nil {
			t.Fatal(err)
		}
	}
	if n := readAheadScope(context.Background(), rootFd, list, 1<<30, func() int64 { return 0 }); n != 5*zone {
		t.Fatalf("readAheadScope advised %d bytes, want %d", n, 5*zone)
	}
	waitFor("every zone", func() bool {
		return resident("a", 0, zone)+resident("a", 4*zone, zone)+resident("b", 2*zone, zone)+resident("b", 6*zone, 2*zone) == 5*pages
	})
}

// TestSendRangeReadsAhead: a file sent whole is read ahead outside its
// freezes, so the freeze (one worker's at a time) finds its chunks
// cached: at the first freeze of an 8 MiB file new to the secondary, the
// chunks after the first are read already.
func TestSendRangeReadsAhead(t *testing.T) {
	pr := newPair(t, 1, 0, Options{})
	p := filepath.Join(pr.p, "big")
	write(t, p, randBytes(7, 8<<20))
	f := openUncached(t, p)
	var first atomic.Bool
	var ahead atomic.Int64 // pages of [2 MiB, 6 MiB) cached at the first freeze
	opt := Options{RootFd: pr.pfd, Freeze: pr.sh.Freeze, PollInterval: 20 * time.Millisecond, Logger: quietLogger(),
		FreezeFile: func(fd int, fn func()) {
			if first.CompareAndSwap(false, true) {
				// The advice is asynchronous: wait, bounded, for its reads.
				want := int64(4 << 20 / os.Getpagesize())
				for deadline := time.Now().Add(2 * time.Second); ; time.Sleep(5 * time.Millisecond) {
					r, err := testbed.Resident(f, 2<<20, 4<<20)
					if err != nil {
						t.Error(err)
					}
					ahead.Store(int64(r))
					if int64(r) == want || time.Now().After(deadline) {
						break
					}
				}
			}
			pr.sh.FreezeFile(fd, fn)
		}}
	var err error
	if pr.e, err = New(pr.f, opt); err != nil {
		t.Fatal(err)
	}
	pr.sh.e = pr.e
	fullRun(t, pr)
	sameTrees(t, pr.p, pr.s, treecmp.Options{})
	if !first.Load() {
		t.Fatal("the file was sent without a file freeze")
	}
	if want := int64(4 << 20 / os.Getpagesize()); ahead.Load() != want {
		t.Fatalf("at the first freeze %d of the %d pages of [2 MiB, 6 MiB) were cached: the chunks are read under the freeze", ahead.Load(), want)
	}
}

// TestAwaitCached: once awaitCached returns, the pages it probes (one
// every 256 KiB of the range, and the last) have come from the disk: a
// read that must not wait (RWF_NOWAIT) finds them.
func TestAwaitCached(t *testing.T) {
	p := filepath.Join(t.TempDir(), "f")
	write(t, p, randBytes(3, 2<<20))
	f := openUncached(t, p)
	fd := int(f.Fd())
	probes := []int64{0, 256 << 10, 512 << 10, 768 << 10, 1<<20 - 1}
	b := make([]byte, 1)
	if _, err := unix.Preadv2(fd, [][]byte{b}, probes[1], unix.RWF_NOWAIT); err != unix.EAGAIN {
		t.Skipf("a read of an uncached page with RWF_NOWAIT did not say it would wait (%v): cannot tell", err)
	}
	awaitCached(fd, 0, 1<<20)
	for _, off := range probes {
		if n, err := unix.Preadv2(fd, [][]byte{b}, off, unix.RWF_NOWAIT); n != 1 || err != nil {
			t.Errorf("at %d after awaitCached: read %d bytes without waiting (%v)", off, n, err)
		}
	}
}
