package apply

import (
	"fmt"
	"testing"

	"github.com/tandem-ha/tandem/internal/replica/op"
)

// TestSyncAllTargeted: SyncAll flushes the files and directories changed
// since the last one, not the whole filesystem (syncfs), unless an op
// changed what is not tracked (a symlink) or more files changed than are
// tracked; directories renamed or removed after they changed do not force
// syncfs either.
func TestSyncAllTargeted(t *testing.T) {
	calls := 0
	old := syncfs
	syncfs = func(fd int) error { calls++; return old(fd) }
	t.Cleanup(func() { syncfs = old })
	a, err := New(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	apply := func(ops ...*op.Op) {
		t.Helper()
		for _, o := range ops {
			if err := a.Apply(o); err != nil {
				t.Fatal(err)
			}
		}
	}
	syncAll := func(what string, wantFS bool) {
		t.Helper()
		before := calls
		apply(&op.Op{Kind: op.SyncAll})
		if got := calls > before; got != wantFS {
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
