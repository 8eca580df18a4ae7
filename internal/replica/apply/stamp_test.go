package apply

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tandem-ha/tandem/internal/replica/op"
)

// Ops stamped with the primary's times leave the same mtimes here.
func TestStampedTimes(t *testing.T) {
	dir := t.TempDir()
	a, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	mt := op.Time{Sec: 1_700_000_000, Nsec: 123_456_789}
	omit := op.Time{Nsec: op.UtimeOmit}
	for _, o := range []op.Op{
		{Kind: op.Create, Path: "f", Mode: 0o644, Uid: -1, Gid: -1, Atime: omit, Mtime: mt},
		{Kind: op.Write, Path: "f", Data: []byte("hello"), Atime: omit, Mtime: op.Time{Sec: mt.Sec + 1, Nsec: 5}},
		{Kind: op.Symlink, Path: "s", Data: []byte("f"), Uid: -1, Gid: -1, Atime: omit, Mtime: mt},
		{Kind: op.Mkdir, Path: "d", Mode: 0o755, Uid: -1, Gid: -1, Atime: omit, Mtime: mt},
		{Kind: op.Create, Path: "plain", Mode: 0o644, Uid: -1, Gid: -1},
	} {
		if err := a.Apply(&o); err != nil {
			t.Fatal(err)
		}
	}
	check := func(name string, want time.Time) {
		t.Helper()
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(dir, name), &st); err != nil {
			t.Fatal(err)
		}
		if got := time.Unix(st.Mtim.Sec, st.Mtim.Nsec); !got.Equal(want) {
			t.Errorf("%s mtime %v, want %v", name, got, want)
		}
	}
	check("f", time.Unix(mt.Sec+1, 5))
	check("s", time.Unix(mt.Sec, mt.Nsec))
	check("d", time.Unix(mt.Sec, mt.Nsec))
	if fi, _ := os.Lstat(filepath.Join(dir, "plain")); time.Since(fi.ModTime()) > time.Minute {
		t.Error("an op without times must keep the secondary's own")
	}
}
