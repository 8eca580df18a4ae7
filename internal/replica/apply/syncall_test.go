package apply

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/tandem-ha/tandem/internal/replica/op"
)

// syncRig is an Applier on a temp dir, the count of its syncfs calls, and
// a helper applying ops that fails the test on an error.
func syncRig(t *testing.T) (*Applier, *int, func(...*op.Op)) {
	t.Helper()
	calls := new(int)
	old := syncfs
	syncfs = func(fd int) error { *calls++; return old(fd) }
	t.Cleanup(func() { syncfs = old })
	a, err := New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a, calls, func(ops ...*op.Op) {
		t.Helper()
		for _, o := range ops {
			if err := a.Apply(o); err != nil {
				t.Fatal(err)
			}
		}
	}
}

// TestSyncAllTargeted: SyncAll flushes the files and directories changed
// since the last one, not the whole filesystem (syncfs), unless an op
// changed what is not tracked (a symlink) or more files changed than are
// tracked; directories renamed or removed after they changed do not force
// syncfs either.
func TestSyncAllTargeted(t *testing.T) {
	a, calls, apply := syncRig(t)
	syncAll := func(what string, wantFS bool) {
		t.Helper()
		before := *calls
		apply(&op.Op{Kind: op.SyncAll})
		if got := *calls > before; got != wantFS {
			t.Fatalf("%s: syncfs %v, want %v", what, got, wantFS)
		}
		if len(a.dirtyFiles) != 0 || len(a.dirty) != 0 || a.syncAllFS || a.overflow {
			t.Fatalf("%s: still tracked after SyncAll: %d files, %d directories, syncfs %v", what, len(a.dirtyFiles), len(a.dirty), a.syncAllFS)
		}
	}
	apply(&op.Op{Kind: op.Mkdir, Path: "d", Mode: 0o755, Uid: -1, Gid: -1},
		&op.Op{Kind: op.Mkdir, Path: "d/e", Mode: 0o755, Uid: -1, Gid: -1},
		&op.Op{Kind: op.Create, Path: "d/e/f", Mode: 0o644, Uid: -1, Gid: -1},
		&op.Op{Kind: op.Write, Path: "d/e/f", Data: []byte("data"), Off: 0},
		&op.Op{Kind: op.Chmod, Path: "d/e/f", Mode: 0o600},
		&op.Op{Kind: op.Chmod, Path: "d", Mode: 0o700},
		&op.Op{Kind: op.Rename, Path: "d", Path2: "renamed"})
	if len(a.dirtyFiles) != 1 {
		t.Fatalf("%d files tracked, want 1", len(a.dirtyFiles))
	}
	syncAll("files, directories, a renamed directory", false)

	apply(&op.Op{Kind: op.Mkdir, Path: "gone", Mode: 0o755, Uid: -1, Gid: -1},
		&op.Op{Kind: op.Rmdir, Path: "gone"},
		&op.Op{Kind: op.Write, Path: "renamed/e/f", Data: []byte("more"), Off: 4})
	syncAll("a removed directory", false)

	apply(&op.Op{Kind: op.Symlink, Path: "l", Data: []byte("renamed"), Uid: -1, Gid: -1})
	syncAll("a symlink", true)

	for i := range maxDirtyFiles + 1 {
		apply(&op.Op{Kind: op.Create, Path: fmt.Sprint("f", i), Mode: 0o644, Uid: -1, Gid: -1})
	}
	syncAll("more files than tracked", true)
}

// TestStartFlush: StartFlush takes what the next SyncAll would flush, so
// the Applier tracks afresh while the Flush waits; Run falls back to
// syncfs for a directory renamed in between; Run and Release leave no
// descriptor open.
func TestStartFlush(t *testing.T) {
	a, calls, apply := syncRig(t)
	fds := func() int {
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(ents)
	}
	apply(&op.Op{Kind: op.Mkdir, Path: "d", Mode: 0o755, Uid: -1, Gid: -1},
		&op.Op{Kind: op.Create, Path: "d/f", Mode: 0o644, Uid: -1, Gid: -1},
		&op.Op{Kind: op.Write, Path: "d/f", Data: []byte("data")})
	base := fds() // the tracked file's descriptor among them
	f, err := a.StartFlush()
	if err != nil {
		t.Fatal(err)
	}
	if len(a.dirtyFiles) != 0 || len(a.dirty) != 0 || len(f.files) != 1 || len(f.dirs) != 2 {
		t.Fatalf("after StartFlush: applier tracks %d files, %d directories; flush holds %d files, %d directories (%q); want 0, 0, 1, 2",
			len(a.dirtyFiles), len(a.dirty), len(f.files), len(f.dirs), f.dirs)
	}
	if err := f.Run(); err != nil || *calls != 0 {
		t.Fatalf("flush: %v, %d syncfs; want nil, 0", err, *calls)
	}
	if n := fds(); n != base-1 {
		t.Fatalf("%d descriptors open after Run, want %d", n, base-1)
	}
	apply(&op.Op{Kind: op.Write, Path: "d/f", Data: []byte("more"), Off: 4})
	if f, err = a.StartFlush(); err != nil {
		t.Fatal(err)
	}
	f.Release()
	if n := fds(); n != base-1 {
		t.Fatalf("%d descriptors open after Release, want %d", n, base-1)
	}

	// Ops applied while a Flush waits are tracked for the next one; a
	// directory the Flush holds, renamed meanwhile: syncfs instead.
	apply(&op.Op{Kind: op.Create, Path: "d/g", Mode: 0o644, Uid: -1, Gid: -1})
	if f, err = a.StartFlush(); err != nil {
		t.Fatal(err)
	}
	apply(&op.Op{Kind: op.Write, Path: "d/g", Data: []byte("later")},
		&op.Op{Kind: op.Rename, Path: "d", Path2: "e"})
	if len(a.dirtyFiles) != 1 || len(a.dirty) == 0 {
		t.Fatalf("ops after StartFlush: %d files, %d directories tracked; want 1 and some", len(a.dirtyFiles), len(a.dirty))
	}
	if err := f.Run(); err != nil || *calls != 1 {
		t.Fatalf("flush of a directory renamed since: %v, %d syncfs; want nil, 1 (the fallback)", err, *calls)
	}
}

// TestFlushSkipsRemovedFiles: a file written and then removed (unlinked,
// or replaced by a rename) before the next SyncAll is neither flushed nor
// kept open, so the kernel drops its data instead of writing it; a file
// removed under one name but still linked under another is flushed.
func TestFlushSkipsRemovedFiles(t *testing.T) {
	a, _, apply := syncRig(t)
	// openOn counts this process's descriptors on the inode st names.
	openOn := func(st os.FileInfo) int {
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, e := range ents {
			if fi, err := os.Stat("/proc/self/fd/" + e.Name()); err == nil && os.SameFile(fi, st) {
				n++
			}
		}
		return n
	}
	data := make([]byte, 1<<20)
	apply(&op.Op{Kind: op.Create, Path: "tmp", Mode: 0o644, Uid: -1, Gid: -1},
		&op.Op{Kind: op.Write, Path: "tmp", Data: data},
		&op.Op{Kind: op.Create, Path: "old", Mode: 0o644, Uid: -1, Gid: -1},
		&op.Op{Kind: op.Write, Path: "old", Data: data},
		&op.Op{Kind: op.Create, Path: "new", Mode: 0o644, Uid: -1, Gid: -1},
		&op.Op{Kind: op.Write, Path: "new", Data: data},
		&op.Op{Kind: op.Create, Path: "linked", Mode: 0o644, Uid: -1, Gid: -1},
		&op.Op{Kind: op.Write, Path: "linked", Data: data},
		&op.Op{Kind: op.Link, Path: "linked", Path2: "other"})
	root, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", a.root))
	if err != nil {
		t.Fatal(err)
	}
	stat := func(name string) os.FileInfo {
		fi, err := os.Stat(filepath.Join(root, name))
		if err != nil {
			t.Fatal(err)
		}
		return fi
	}
	tmp, old, linked := stat("tmp"), stat("old"), stat("linked")
	apply(&op.Op{Kind: op.Unlink, Path: "tmp"},
		&op.Op{Kind: op.Rename, Path: "new", Path2: "old"},
		&op.Op{Kind: op.Unlink, Path: "linked"})
	if len(a.dirtyFiles) != 4 {
		t.Fatalf("%d files tracked before the flush, want 4", len(a.dirtyFiles))
	}
	f, err := a.StartFlush()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Release()
	if len(f.files) != 2 {
		t.Errorf("the flush holds %d files, want 2 (the renamed one and the one still linked)", len(f.files))
	}
	for name, st := range map[string]os.FileInfo{"the unlinked file": tmp, "the file renamed over": old} {
		if n := openOn(st); n != 0 {
			t.Errorf("%s: %d descriptors still open on it, want 0", name, n)
		}
	}
	if n := openOn(linked); n != 1 {
		t.Errorf("the file still linked as other: %d descriptors on it, want 1 (the flush's)", n)
	}
}
