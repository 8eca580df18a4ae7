package fs

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/tandem-ha/tandem/internal/replica/op"
)

// TestDirectSync: an O_DSYNC or O_SYNC write on a direct handle is made
// durable inside its WRITE request (no FSYNC from the kernel follows it), a
// plain write on the same handle is not, and an RWF_DSYNC write on a cached
// (read-write) handle is left to the kernel's FSYNC.
func TestDirectSync(t *testing.T) {
	e := newEnv(t, Options{})
	if err := os.WriteFile(e.p("f"), []byte("0123456789"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name     string
		flags    int
		rwf      int
		inWrite  bool // synced in the WRITE request
		dataOnly bool
	}{
		{"O_WRONLY|O_DSYNC", os.O_WRONLY | unix.O_DSYNC, 0, true, true},
		{"O_RDWR|O_DSYNC", os.O_RDWR | unix.O_DSYNC, 0, true, true},
		{"O_RDWR|O_SYNC", os.O_RDWR | unix.O_SYNC, 0, true, false},
		{"O_WRONLY RWF_DSYNC", os.O_WRONLY, unix.RWF_DSYNC, true, true},
		{"O_RDWR RWF_DSYNC (cached)", os.O_RDWR, unix.RWF_DSYNC, false, true},
	}
	for _, c := range cases {
		g, err := os.OpenFile(e.p("f"), c.flags, 0)
		if err != nil {
			t.Fatal(err)
		}
		e.rec.reset()
		before := e.m.direct.syncs.Load()
		if _, err := unix.Pwritev2(int(g.Fd()), [][]byte{[]byte("sync")}, 2, c.rwf); err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		ops, waits := e.rec.snapshot()
		if len(ops) != 2 || ops[0].Kind != op.Write || ops[1].Kind != op.Fsync || len(waits) != 1 || !waits[0].durable || waits[0].seq != e.rec.lastSeq() {
			t.Fatalf("%s: ops %s waits %v (want write, fsync and one durable wait for it)", c.name, e.rec.kinds(), waits)
		}
		if got := ops[1].Flags == op.DataOnly; got != c.dataOnly {
			t.Fatalf("%s: fsync flags %d, data only %v", c.name, ops[1].Flags, c.dataOnly)
		}
		if got := e.m.direct.syncs.Load() - before; got != map[bool]int64{true: 1, false: 0}[c.inWrite] {
			t.Fatalf("%s: %d writes synced in their request, want in-request %v", c.name, got, c.inWrite)
		}
		// A plain write on the same handle waits for nothing.
		if c.rwf == 0 && c.flags&unix.O_DSYNC != 0 {
			g.Close()
			continue
		}
		e.rec.reset()
		if _, err := g.WriteAt([]byte("plain"), 3); err != nil {
			t.Fatal(err)
		}
		if ops, waits := e.rec.snapshot(); len(ops) != 1 || len(waits) != 0 {
			t.Fatalf("%s: plain write: ops %s waits %v", c.name, e.rec.kinds(), waits)
		}
		g.Close()
	}
	// A write larger than max_write reaches the daemon in several WRITE
	// requests: each is synced before it is answered, and the last sync
	// covers the whole write.
	g, err := os.OpenFile(e.p("big"), os.O_RDWR|os.O_CREATE|unix.O_DSYNC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	big := bytes.Repeat([]byte("0123456789abcdef"), (maxWrite*5/2)/16)
	e.rec.reset()
	before := e.m.direct.syncs.Load()
	if _, err := g.WriteAt(big, 0); err != nil {
		t.Fatal(err)
	}
	ops, waits := e.rec.snapshot()
	if n := e.m.direct.syncs.Load() - before; n != 3 || len(waits) != 3 || !waits[2].durable || waits[2].seq != e.rec.lastSeq() || ops[len(ops)-1].Kind != op.Fsync {
		t.Fatalf("%d-byte O_DSYNC write: %d in-request syncs, ops %s, waits %v (want 3 syncs, the last wait durable for the last op)", len(big), n, e.rec.kinds(), waits)
	}
	back := make([]byte, len(big))
	if _, err := g.ReadAt(back, 0); err != nil || !bytes.Equal(back, big) {
		t.Fatalf("read back through the direct handle: %v, equal %v", err, bytes.Equal(back, big))
	}
	g.Close()
	e.check()
}

// TestDirectCoherent: a reader with cached pages sees what a direct
// (write-only) handle wrote, appends land at the end, and a shared mapping
// of an O_RDWR|O_DSYNC (direct) handle works both ways.
func TestDirectCoherent(t *testing.T) {
	e := newEnv(t, Options{})
	p := e.p("f")
	old := bytes.Repeat([]byte("a"), 8192)
	if err := os.WriteFile(p, old, 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	buf := make([]byte, 8192)
	if _, err := r.ReadAt(buf, 0); err != nil || !bytes.Equal(buf, old) {
		t.Fatalf("first read: %v", err)
	}
	w, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteAt([]byte("bbbb"), 4096); err != nil {
		t.Fatal(err)
	}
	w.Close()
	if _, err := r.ReadAt(buf, 0); err != nil {
		t.Fatal(err)
	}
	if string(buf[4096:4100]) != "bbbb" || buf[4100] != 'a' || buf[4095] != 'a' {
		t.Fatalf("cached reader after a direct write: %q", buf[4092:4104])
	}
	// O_APPEND through a direct handle.
	a, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := a.Write([]byte("tail")); err != nil {
			t.Fatal(err)
		}
	}
	a.Close()
	got, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 8192+12 || string(got[8192:]) != "tailtailtail" {
		t.Fatalf("after appends: size %d, tail %q", len(got), got[8180:])
	}
	// Shared mapping of a direct O_RDWR|O_DSYNC handle.
	d, err := os.OpenFile(p, os.O_RDWR|unix.O_DSYNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	mem, err := unix.Mmap(int(d.Fd()), 0, 8192, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		t.Fatalf("shared mmap of a direct handle: %v", err)
	}
	defer unix.Munmap(mem)
	copy(mem[100:], "mapped")
	if err := unix.Msync(mem, unix.MS_SYNC); err != nil {
		t.Fatal(err)
	}
	if _, err := d.WriteAt([]byte("direct"), 200); err != nil {
		t.Fatal(err)
	}
	if string(mem[200:206]) != "direct" {
		t.Fatalf("mapping after a direct write: %q", mem[200:206])
	}
	through, err := os.ReadFile(filepath.Join(e.mnt, "f")) // through the mount
	if err != nil {
		t.Fatal(err)
	}
	if string(through[100:106]) != "mapped" || string(through[200:206]) != "direct" {
		t.Fatalf("file after mapped and direct writes: %q %q", through[100:106], through[200:206])
	}
	unix.Munmap(mem)
	d.Close()
	r.Close()

	// sendfile (cat > file, cp's fallback: copy_file_range from another
	// filesystem is EXDEV) into a direct handle.
	src := filepath.Join(t.TempDir(), "src")
	payload := bytes.Repeat([]byte("0123456789abcdef"), 40000) // 640,000 bytes
	if err := os.WriteFile(src, payload, 0o644); err != nil {
		t.Fatal(err)
	}
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	out, err := os.OpenFile(e.p("sent"), os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	for done := 0; done < len(payload); {
		n, err := unix.Sendfile(int(out.Fd()), int(in.Fd()), nil, len(payload)-done)
		if err != nil || n <= 0 {
			t.Fatalf("sendfile after %d bytes: %d, %v", done, n, err)
		}
		done += n
	}
	if err := out.Close(); err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile(e.p("sent")); err != nil || !bytes.Equal(got, payload) {
		t.Fatalf("sendfile: %d bytes read back (%v), want the %d written", len(got), err, len(payload))
	}
	e.check()
}
