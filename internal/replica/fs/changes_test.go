package fs

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/tandem-ha/tandem/internal/replica/changelog"
	"github.com/tandem-ha/tandem/internal/replica/op"
)

// realDir names the backing directory (under the mount) through its fd.
func realDir(e *env) string { return fmt.Sprintf("/proc/self/fd/%d", e.m.RootFd()) }

// lastSeqOf is the seq the recorder gave the last op of kind k.
func lastSeqOf(r *recorder, k op.Kind) uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.ops) - 1; i >= 0; i-- {
		if r.ops[i].Kind == k {
			return uint64(i + 1)
		}
	}
	return 0
}

// changeSpy records the Touch/Done/Cancel calls of the FUSE layer. Its
// Touch runs before the change: it snapshots what the test asks for.
type changeSpy struct {
	mu     sync.Mutex
	events []string
	fail   bool // Touch fails
	before func(kind string, k changelog.Key)
}

func (c *changeSpy) touch(kind string, k changelog.Key, extra string) (changelog.Pin, error) {
	if c.before != nil {
		c.before(kind, k)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fail {
		return changelog.Pin{}, errors.New("journal disk full")
	}
	c.events = append(c.events, kind+extra)
	return changelog.Pin{}, nil
}

func (c *changeSpy) Touch(k changelog.Key, off, n int64) (changelog.Pin, error) {
	return c.touch("data", k, fmt.Sprintf("[%d+%d]", off, n))
}
func (c *changeSpy) TouchMeta(k changelog.Key) (changelog.Pin, error) { return c.touch("meta", k, "") }
func (c *changeSpy) TouchDir(k changelog.Key) (changelog.Pin, error)  { return c.touch("dir", k, "") }
func (c *changeSpy) Done(p changelog.Pin, seq uint64) {
	c.mu.Lock()
	c.events = append(c.events, fmt.Sprintf("done@%d", seq))
	c.mu.Unlock()
}
func (c *changeSpy) Cancel(p changelog.Pin) {
	c.mu.Lock()
	c.events = append(c.events, "cancel")
	c.mu.Unlock()
}

func (c *changeSpy) take() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.events
	c.events = nil
	return e
}

// TestChangesRecordedBeforeEachChange: every mutation is recorded before it
// is made (the record sees the old state), ended with the seq of the op
// that carried it, cancelled when nothing changed, and refused (EIO, no
// change) when the record cannot be written.
func TestChangesRecordedBeforeEachChange(t *testing.T) {
	spy := &changeSpy{}
	e := newEnv(t, Options{Changes: spy})
	mustWrite(t, e.p("f"), []byte("0123456789"), os.O_CREATE|os.O_WRONLY)
	if err := os.Mkdir(e.p("d"), 0o755); err != nil {
		t.Fatal(err)
	}
	spy.take()

	// A write: its zone is recorded while the file still has its old size.
	var sizeAtTouch int64 = -1
	spy.before = func(kind string, k changelog.Key) {
		if kind == "data" {
			var st unix.Stat_t
			if unix.Stat(filepath.Join(realDir(e), "f"), &st) == nil {
				sizeAtTouch = st.Size
			}
		}
	}
	f, err := os.OpenFile(e.p("f"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write([]byte("abc")); err != nil {
		t.Fatal(err)
	}
	f.Close()
	spy.before = nil
	if sizeAtTouch != 10 {
		t.Fatalf("the write was recorded after it was made (size %d at Touch, want 10)", sizeAtTouch)
	}
	wantSeq := lastSeqOf(e.rec, op.Write)
	if ev := spy.take(); len(ev) < 2 || ev[0] != "data[10+3]" || ev[1] != fmt.Sprintf("done@%d", wantSeq) {
		t.Fatalf("write: %v, want data[10+3] then done@%d", ev, wantSeq)
	}

	check := func(what string, fn func() error, want ...string) {
		t.Helper()
		spy.take()
		if err := fn(); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		got := spy.take()
		if len(got) != len(want) {
			t.Fatalf("%s: %v, want %v", what, got, want)
		}
		for i := range want {
			if want[i] != "done" && got[i] != want[i] || want[i] == "done" && got[i] == "cancel" {
				t.Fatalf("%s: %v, want %v", what, got, want)
			}
		}
	}
	check("create", func() error { return os.WriteFile(e.p("d/new"), nil, 0o644) }, "dir", "done")
	check("mkdir", func() error { return os.Mkdir(e.p("d/sub"), 0o755) }, "dir", "done")
	check("symlink", func() error { return os.Symlink("f", e.p("d/sl")) }, "dir", "done")
	check("link", func() error { return os.Link(e.p("f"), e.p("d/hard")) }, "dir", "meta", "done", "done")
	check("rename", func() error { return os.Rename(e.p("d/new"), e.p("new2")) }, "dir", "dir", "done", "done")
	// A file moved with its content: the whole content is recorded (a
	// file moved over one of the same size and mtime must still travel).
	mustWrite(t, e.p("d/full"), []byte("12345"), os.O_CREATE|os.O_WRONLY)
	mustWrite(t, e.p("d/other"), []byte("1234567"), os.O_CREATE|os.O_WRONLY)
	check("rename over", func() error { return os.Rename(e.p("d/full"), e.p("f")) }, "dir", "dir", "data[0+5]", "done", "done", "done")
	check("exchange", func() error {
		return unix.Renameat2(unix.AT_FDCWD, e.p("f"), unix.AT_FDCWD, e.p("d/other"), unix.RENAME_EXCHANGE)
	}, "dir", "dir", "data[0+5]", "data[0+7]", "done", "done", "done", "done")
	check("unlink", func() error { return os.Remove(e.p("new2")) }, "dir", "done")
	check("chmod", func() error { return os.Chmod(e.p("f"), 0o600) }, "meta", "done")
	check("truncate", func() error { return os.Truncate(e.p("f"), 4) }, "meta", "data[4+3]", "done", "done")
	check("setxattr", func() error { return unix.Setxattr(e.p("f"), "user.a", []byte("1"), 0) }, "meta", "done")
	// Nothing changed: cancelled.
	spy.take()
	if err := unix.Rmdir(e.p("d")); !errors.Is(err, unix.ENOTEMPTY) {
		t.Fatalf("rmdir of a directory with entries: %v", err)
	}
	if ev := spy.take(); len(ev) != 2 || ev[0] != "dir" || ev[1] != "cancel" {
		t.Fatalf("failed rmdir: %v, want dir then cancel", ev)
	}
	// The record cannot be written: EIO and no change.
	spy.fail = true
	if err := os.Mkdir(e.p("refused"), 0o755); !errors.Is(err, unix.EIO) {
		t.Fatalf("mkdir with a failing record: %v, want EIO", err)
	}
	if _, err := os.Lstat(filepath.Join(realDir(e), "refused")); !os.IsNotExist(err) {
		t.Fatalf("the refused mkdir was made anyway: %v", err)
	}
	spy.fail = false
	e.check()
}

// TestChangesRecordHolesPastEnd: a write or fallocate past the end of a
// file records the hole it leaves before its offset too. A file created
// while the copies are apart, where another file was, would otherwise keep
// the old file's bytes there on the peer after a resync of its zones.
func TestChangesRecordHolesPastEnd(t *testing.T) {
	spy := &changeSpy{}
	e := newEnv(t, Options{Changes: spy})
	f, err := os.OpenFile(e.p("f"), os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	data := func() []string {
		var out []string
		for _, ev := range spy.take() {
			if len(ev) > 4 && ev[:4] == "data" {
				out = append(out, ev)
			}
		}
		return out
	}
	spy.take()
	steps := []struct {
		what string
		do   func() error
		want string
	}{
		{"write past the end of an empty file", func() error { _, err := f.WriteAt([]byte("abcd"), 8192); return err }, "data[0+8196]"},
		{"write inside", func() error { _, err := f.WriteAt([]byte("xy"), 100); return err }, "data[100+2]"},
		{"write at the end", func() error { _, err := f.WriteAt([]byte("e"), 8196); return err }, "data[8196+1]"},
		{"write past the end", func() error { _, err := f.WriteAt([]byte("z"), 20000); return err }, "data[8197+11804]"},
		{"fallocate past the end", func() error { return unix.Fallocate(int(f.Fd()), 0, 30000, 1000) }, "data[20001+10999]"},
		{"truncate, then a write past the new end", func() error {
			if err := f.Truncate(10); err != nil {
				return err
			}
			spy.take() // the truncate records [10, 31000) itself
			_, err := f.WriteAt([]byte("w"), 40000)
			return err
		}, "data[10+39991]"},
	}
	for _, s := range steps {
		if err := s.do(); err != nil {
			t.Fatalf("%s: %v", s.what, err)
		}
		if got := data(); len(got) != 1 || got[0] != s.want {
			t.Errorf("%s: recorded %v, want %s", s.what, got, s.want)
		}
	}
}

// TestChangesRecordTruncatingCreateOfUnknownFile: an O_CREAT|O_TRUNC open
// of a file the kernel believed absent (made behind the mount's back)
// records the content it cuts, as any truncate.
func TestChangesRecordTruncatingCreateOfUnknownFile(t *testing.T) {
	spy := &changeSpy{}
	e := newEnv(t, Options{Changes: spy})
	if _, err := os.Stat(e.p("late")); !os.IsNotExist(err) {
		t.Fatalf("stat of a missing file: %v", err)
	} // the kernel now caches "late" as absent
	if err := os.WriteFile(filepath.Join(realDir(e), "late"), []byte("0123456789"), 0o644); err != nil {
		t.Fatal(err)
	}
	spy.take()
	f, err := os.OpenFile(e.p("late"), os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	ev := spy.take()
	if !slices.Contains(ev, "data[0+10]") || !slices.Contains(ev, "meta") {
		t.Fatalf("O_TRUNC create of a file made behind the mount: recorded %v, want its 10 bytes and attributes", ev)
	}
	if st, err := os.Stat(filepath.Join(realDir(e), "late")); err != nil || st.Size() != 0 {
		t.Fatalf("after the O_TRUNC open: %v, %v; want an empty file", st, err)
	}
}
