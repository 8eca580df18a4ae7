package main

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"testing"
)

// tree reads every regular file of root: relative path -> content.
func tree(t *testing.T, root string) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(p)
		rel, _ := filepath.Rel(root, p)
		out[rel] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func same(t *testing.T, what string, a, b map[string][]byte) {
	t.Helper()
	if len(a) != len(b) {
		t.Fatalf("%s: %d files against %d", what, len(a), len(b))
	}
	for p, x := range a {
		if !bytes.Equal(x, b[p]) {
			t.Fatalf("%s: %s differs (%d bytes against %d)", what, p, len(x), len(b[p]))
		}
	}
}

// TestGenChangeLimit: gen writes identical copies with the fixed mtime;
// change on two copies with one seed changes them identically and names
// what it changed; limit applied to a third copy makes it identical.
func TestGenChangeLimit(t *testing.T) {
	base := t.TempDir()
	a, b, c := filepath.Join(base, "a"), filepath.Join(base, "b"), filepath.Join(base, "c")
	for _, d := range []string{a, b} {
		os.Mkdir(d, 0o755)
	}
	o := GenOptions{Seed: 7, Files: 60, FileKB: 16, BigMB: 1, Dirs: 4, Jobs: 3}
	g, err := Gen([]string{a, b}, o)
	if err != nil {
		t.Fatal(err)
	}
	if g.Files != 61 {
		t.Errorf("gen files %d, want 61", g.Files)
	}
	os.Mkdir(c, 0o755)
	if _, err := Gen([]string{c}, o); err != nil {
		t.Fatal(err)
	}
	ta := tree(t, a)
	same(t, "gen a/b", ta, tree(t, b))
	same(t, "gen a/c (separate run)", ta, tree(t, c))
	var total int64
	for _, x := range ta {
		total += int64(len(x))
	}
	if total != g.Bytes {
		t.Errorf("gen says %d bytes, tree holds %d", g.Bytes, total)
	}
	st, _ := os.Stat(filepath.Join(a, FileName(3, 4)))
	if !st.ModTime().Equal(FixedMtime) {
		t.Errorf("mtime %v, want %v", st.ModTime(), FixedMtime)
	}

	co := ChangeOptions{Seed: 9, Pct: 5, Create: 3, CreateKB: 8, Remove: 2}
	ra, la, err := Change(a, co)
	if err != nil {
		t.Fatal(err)
	}
	rb, lb, err := Change(b, co)
	if err != nil {
		t.Fatal(err)
	}
	ra.Seconds, rb.Seconds = 0, 0
	if !reflect.DeepEqual(ra, rb) || !reflect.DeepEqual(la, lb) {
		t.Fatalf("change is not deterministic: %+v against %+v", ra, rb)
	}
	if want := int64(float64(ra.BlocksTotal)*0.05 + 0.5); ra.Blocks != want || ra.Removed != 2 || ra.Created != 3 {
		t.Fatalf("change: %+v, want %d blocks, 2 removed, 3 created", ra, want)
	}
	for _, p := range la.Removed {
		if p == "big" {
			t.Fatal("change removed the big file")
		}
	}
	tc := tree(t, a)
	same(t, "changed a/b", tc, tree(t, b))
	changed := 0
	for p, x := range ta {
		if y, ok := tc[p]; ok && !bytes.Equal(x, y) {
			changed++
			if len(x) != len(y) {
				t.Errorf("%s: size changed %d -> %d", p, len(x), len(y))
			}
		}
	}
	if changed == 0 || int64(changed) != ra.FilesRewritten {
		t.Errorf("%d files differ after the change, change says %d", changed, ra.FilesRewritten)
	}

	lr, err := Limit(la, a, c, 2)
	if err != nil {
		t.Fatal(err)
	}
	if lr.Bytes != ra.BytesRewritten+ra.CreatedBytes {
		t.Errorf("limit copied %d bytes, the change wrote %d + created %d", lr.Bytes, ra.BytesRewritten, ra.CreatedBytes)
	}
	same(t, "limit", tc, tree(t, c))
}
