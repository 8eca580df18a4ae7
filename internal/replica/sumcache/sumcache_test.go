package sumcache

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func stat(t *testing.T, p string) Stamp {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return StampOf(&st)
}

// oldFile is a file whose ctime is well before now (the cache's margin
// shortened to 20 ms).
func oldFile(t *testing.T, c *Cache) (string, Stamp, int64) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	c.SetMargin(20 * time.Millisecond)
	time.Sleep(40 * time.Millisecond)
	before := Now()
	return p, stat(t, p), before
}

func TestRecordsOnlyOldInodes(t *testing.T) {
	c := New(0)
	p := filepath.Join(t.TempDir(), "f")
	if err := os.WriteFile(p, []byte("hello"), 0o644); err != nil {
		t.Fatal(err)
	}
	// Default margin: a file just written is not recorded (a change in
	// the same tick would leave its ctime as it is).
	before := Now()
	s := stat(t, p)
	c.PutSum(s, before, 42)
	c.PutXattrs(s, before, 7)
	if _, ok := c.Sum(s); ok {
		t.Fatal("a file changed less than Margin ago was recorded")
	}
	if _, ok := c.Xattrs(s); ok {
		t.Fatal("a file changed less than Margin ago was recorded (attributes)")
	}
	if n := c.Stats().Entries; n != 0 {
		t.Fatalf("%d entries", n)
	}
}

func TestChangedInodeMisses(t *testing.T) {
	c := New(0)
	p, s, before := oldFile(t, c)
	c.PutSum(s, before, 42)
	c.PutXattrs(s, before, 7)
	if v, ok := c.Sum(s); !ok || v != 42 {
		t.Fatalf("Sum = %d, %v", v, ok)
	}
	if v, ok := c.Xattrs(s); !ok || v != 7 {
		t.Fatalf("Xattrs = %d, %v", v, ok)
	}
	// The same size, the same mtime: only the ctime tells.
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte("HELLO"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := unix.UtimesNano(p, []unix.Timespec{st.Atim, st.Mtim}); err != nil {
		t.Fatal(err)
	}
	s2 := stat(t, p)
	if s2.Size != s.Size {
		t.Fatal("test broken: the size changed")
	}
	if _, ok := c.Sum(s2); ok {
		t.Fatal("a rewritten file (same size, mtime put back) hit")
	}
	if _, ok := c.Xattrs(s2); ok {
		t.Fatal("a rewritten file hit (attributes)")
	}
	// Another name for it moves the ctime too (a tick later: the cache's
	// margin, bypassed here, guards the same tick).
	c.PutSum(s2, Now()+int64(time.Second), 43)
	time.Sleep(20 * time.Millisecond)
	if err := os.Link(p, p+".2"); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Sum(stat(t, p)); ok {
		t.Fatal("a file that gained a name hit")
	}
	if st := c.Stats(); st.Hits() != 2 || st.Misses != 3 {
		t.Fatalf("counters %+v", st)
	}
}

func TestClockStepForgets(t *testing.T) {
	c := New(0)
	_, s, before := oldFile(t, c)
	c.PutSum(s, before, 42)
	c.Check()
	if _, ok := c.Sum(s); !ok {
		t.Fatal("Check without a clock step forgot the entries")
	}
	c.mu.Lock()
	c.offset -= int64(time.Hour) // as if the wall clock jumped an hour ahead
	c.mu.Unlock()
	c.Check()
	if _, ok := c.Sum(s); ok {
		t.Fatal("entries kept across a clock step")
	}
	if c.Stats().Resets != 1 {
		t.Fatalf("counters %+v", c.Stats())
	}
}

func TestFullEvicts(t *testing.T) {
	c := New(2)
	c.SetMargin(0)
	for ino := uint64(1); ino <= 3; ino++ {
		c.PutSum(Stamp{Dev: 1, Ino: ino, Ctime: 1}, 10, ino)
	}
	if st := c.Stats(); st.Entries != 2 || st.Evicted != 1 {
		t.Fatalf("after 3 entries into 2: %+v", st)
	}
	if v, ok := c.Sum(Stamp{Dev: 1, Ino: 3, Ctime: 1}); !ok || v != 3 {
		t.Fatalf("the newest entry: %d, %v", v, ok)
	}
	// Updating an entry in place evicts nothing.
	c.PutXattrs(Stamp{Dev: 1, Ino: 3, Ctime: 1}, 10, 9)
	if st := c.Stats(); st.Entries != 2 || st.Evicted != 1 {
		t.Fatalf("after an update: %+v", st)
	}
}

func TestStampParts(t *testing.T) {
	c := New(0)
	c.SetMargin(0)
	s := Stamp{Dev: 1, Ino: 7, Size: 10, Ctime: 100}
	c.PutSum(s, 1000, 42)
	for _, other := range []Stamp{{Dev: 2, Ino: 7, Size: 10, Ctime: 100}, {Dev: 1, Ino: 7, Size: 11, Ctime: 100}, {Dev: 1, Ino: 7, Size: 10, Ctime: 101}, {Dev: 1, Ino: 8, Size: 10, Ctime: 100}} {
		if _, ok := c.Sum(other); ok {
			t.Errorf("%+v hit the entry of %+v", other, s)
		}
	}
	if _, ok := c.Xattrs(s); ok {
		t.Error("attributes never recorded, yet a hit")
	}
	if v, ok := c.Sum(s); !ok || v != 42 {
		t.Errorf("Sum = %d, %v", v, ok)
	}
	// Another state of the inode replaces the entry, attributes included.
	c.PutXattrs(s, 1000, 5)
	s2 := Stamp{Dev: 1, Ino: 7, Size: 10, Ctime: 200}
	c.PutSum(s2, 1000, 43)
	if _, ok := c.Xattrs(s2); ok {
		t.Error("the old state's attributes survived a new state")
	}
	if _, ok := c.Sum(s); ok {
		t.Error("the old state still hits")
	}
}

func TestTrusted(t *testing.T) {
	for dir, want := range map[string]bool{"/dev/shm": true, "/proc": false, "/sys": false} {
		fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY, 0)
		if err != nil {
			t.Logf("%s: %v", dir, err)
			continue
		}
		var fs unix.Statfs_t
		unix.Fstatfs(fd, &fs)
		if got := Trusted(fd); got != want {
			t.Errorf("Trusted(%s, type %#x) = %v, want %v", dir, fs.Type, got, want)
		}
		if got := New(0).For(fd) != nil; got != want {
			t.Errorf("For(%s) gave a cache: %v, want %v", dir, got, want)
		}
		unix.Close(fd)
	}
}

func TestSaveLoad(t *testing.T) {
	dir := t.TempDir()
	c := New(0)
	c.SetMargin(0)
	for ino := uint64(1); ino <= 1000; ino++ {
		s := Stamp{Dev: 5, Ino: ino, Size: int64(ino), Ctime: int64(ino) * 1000}
		c.PutSum(s, int64(ino)*1000, ino*3)
		if ino%2 == 0 {
			c.PutXattrs(s, int64(ino)*1000, ino*5)
		}
	}
	path := filepath.Join(dir, "hashes")
	dirFd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dirFd)
	if err := c.Save(path, dirFd); err != nil {
		t.Fatal(err)
	}
	l, err := Load(path, dirFd, 0)
	if err != nil {
		t.Fatal(err)
	}
	if n := l.Stats().Entries; n != 1000 {
		t.Fatalf("loaded %d entries", n)
	}
	for ino := uint64(1); ino <= 1000; ino++ {
		s := Stamp{Dev: 5, Ino: ino, Size: int64(ino), Ctime: int64(ino) * 1000}
		if v, ok := l.Sum(s); !ok || v != ino*3 {
			t.Fatalf("inode %d: sum %d, %v", ino, v, ok)
		}
		v, ok := l.Xattrs(s)
		if ino%2 == 0 && (!ok || v != ino*5) || ino%2 == 1 && ok {
			t.Fatalf("inode %d: attributes %d, %v", ino, v, ok)
		}
	}

	// Missing: empty, no error.
	if l, err := Load(filepath.Join(dir, "none"), dirFd, 0); err != nil || l.Stats().Entries != 0 {
		t.Fatalf("missing file: %v, %+v", err, l.Stats())
	}
	// Damaged: empty, and said.
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, damage := range []func([]byte) []byte{
		func(b []byte) []byte { b[len(b)/2] ^= 1; return b },
		func(b []byte) []byte { return b[:len(b)-1] },
		func(b []byte) []byte { return append(b, 0) },
		func(b []byte) []byte { return b[:10] },
	} {
		bad := filepath.Join(dir, "bad")
		if err := os.WriteFile(bad, damage(append([]byte(nil), b...)), 0o600); err != nil {
			t.Fatal(err)
		}
		if l, err := Load(bad, dirFd, 0); err == nil || l.Stats().Entries != 0 {
			t.Fatalf("damaged file loaded: %v, %+v", err, l.Stats())
		}
	}
	// Another mount's: refused (/proc is another mount than any
	// directory of files).
	if procFd, err := unix.Open("/proc", unix.O_PATH|unix.O_DIRECTORY, 0); err == nil {
		if mountID(procFd) != 0 {
			if l, err := Load(path, procFd, 0); !errors.Is(err, ErrStale) || l.Stats().Entries != 0 {
				t.Errorf("another mount's hashes: %v, %+v", err, l.Stats())
			}
		}
		unix.Close(procFd)
	}
	// Another boot's: refused.
	other := filepath.Join(dir, "boot_id")
	if err := os.WriteFile(other, []byte("00000000-0000-0000-0000-000000000000\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	saved := bootIDFile
	bootIDFile = other
	defer func() { bootIDFile = saved }()
	if l, err := Load(path, dirFd, 0); !errors.Is(err, ErrStale) || l.Stats().Entries != 0 {
		t.Fatalf("another boot's hashes: %v, %+v", err, l.Stats())
	}
}
