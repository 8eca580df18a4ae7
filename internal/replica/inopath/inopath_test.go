package inopath

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func key(t testing.TB, p string) Key {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return Key{st.Dev, st.Ino}
}

// emptyFiles makes directory dir (and its parents) with n empty files,
// f0000 and on, and returns their paths.
func emptyFiles(tb testing.TB, dir string, n int) []string {
	tb.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		tb.Fatal(err)
	}
	paths := make([]string, n)
	for i := range paths {
		paths[i] = filepath.Join(dir, fmt.Sprintf("f%04d", i))
		if err := os.WriteFile(paths[i], nil, 0o644); err != nil {
			tb.Fatal(err)
		}
	}
	return paths
}

func TestFind(t *testing.T) {
	root := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "a/b/c"), 0o755))
	must(os.WriteFile(filepath.Join(root, "a/b/f"), []byte("x"), 0o644))
	must(os.Link(filepath.Join(root, "a/b/f"), filepath.Join(root, "g")))
	must(os.Symlink("a", filepath.Join(root, "sl")))
	must(os.WriteFile(filepath.Join(root, "gone"), nil, 0o644))
	// Many entries not wanted, in a directory read in several chunks.
	for i := range 3000 {
		must(os.WriteFile(filepath.Join(root, "a", fmt.Sprintf("other-%04d-%s", i, strings.Repeat("x", i%40))), nil, 0o644))
	}
	must(os.Link(filepath.Join(root, "a/b/f"), filepath.Join(root, "a", "zz-last")))
	want := map[Key]bool{
		key(t, root):                         true,
		key(t, filepath.Join(root, "a/b/c")): true,
		key(t, filepath.Join(root, "g")):     true,
		key(t, filepath.Join(root, "sl")):    true,
	}
	gone := key(t, filepath.Join(root, "gone"))
	want[gone] = true
	must(os.Remove(filepath.Join(root, "gone")))
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	must(err)
	defer unix.Close(fd)
	if !direntInodes(fd) {
		t.Logf("%s: directory entries' inode numbers not trusted here: every entry is stat'ed", root)
	}
	// From the directory entries' inode numbers, and stating every entry.
	for _, statAll := range []bool{false, true} {
		got, err := find(fd, want, statAll)
		must(err)
		for _, n := range got {
			slices.Sort(n)
		}
		check := func(p string, names ...string) {
			t.Helper()
			if g := got[key(t, filepath.Join(root, p))]; !slices.Equal(g, names) {
				t.Errorf("statAll %v: %s: %q, want %q", statAll, p, g, names)
			}
		}
		check("", "")
		check("a/b/c", "a/b/c")
		check("g", "a/b/f", "a/zz-last", "g")
		check("sl", "sl")
		if _, ok := got[gone]; ok && len(got[gone]) > 0 {
			t.Errorf("statAll %v: a removed inode was found: %q", statAll, got[gone])
		}
	}
}

// BenchmarkFind: naming 10 inodes in a tree of 20,000 files.
func BenchmarkFind(b *testing.B) {
	root := b.TempDir()
	want := map[Key]bool{}
	for d := range 20 {
		paths := emptyFiles(b, filepath.Join(root, fmt.Sprintf("d%02d", d)), 1000)
		if d%2 == 0 {
			want[key(b, paths[7])] = true
		}
	}
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer unix.Close(fd)
	for _, statAll := range []bool{false, true} {
		b.Run(fmt.Sprintf("statAll=%v", statAll), func(b *testing.B) {
			for b.Loop() {
				got, err := find(fd, want, statAll)
				if err != nil || len(got) != len(want) {
					b.Fatalf("found %d of %d: %v", len(got), len(want), err)
				}
			}
		})
	}
}

// TestFindParallel: listing many directories at once names the same
// inodes as one at a time, hard links across directories included.
func TestFindParallel(t *testing.T) {
	root := t.TempDir()
	want := map[Key]bool{}
	for d := range 40 {
		dir := filepath.Join(root, fmt.Sprintf("d%02d", d%8), fmt.Sprintf("e%02d", d))
		for f, p := range emptyFiles(t, dir, 30) {
			if f%3 == 0 {
				want[key(t, p)] = true
			}
			if f == 7 { // another name in the first directory
				if err := os.Link(p, filepath.Join(root, "d00", fmt.Sprintf("link-%02d", d))); err != nil {
					t.Fatal(err)
				}
				want[key(t, p)] = true
			}
		}
		want[key(t, dir)] = true
	}
	fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	defer func(n int) { walkers = n }(walkers)
	results := map[int]map[Key][]string{}
	for _, n := range []int{1, 8} {
		walkers = n
		got, err := find(fd, want, false)
		if err != nil {
			t.Fatal(err)
		}
		for _, names := range got {
			slices.Sort(names)
		}
		results[n] = got
	}
	if len(results[1]) != len(want) {
		t.Fatalf("one at a time: %d of %d inodes named", len(results[1]), len(want))
	}
	for k, names := range results[1] {
		if !slices.Equal(results[8][k], names) {
			t.Errorf("inode %v: %q one directory at a time, %q eight at once", k, names, results[8][k])
		}
	}
	if len(results[8]) != len(results[1]) {
		t.Errorf("%d inodes named eight directories at once, %d one at a time", len(results[8]), len(results[1]))
	}
}
