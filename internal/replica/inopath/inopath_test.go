package inopath

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"golang.org/x/sys/unix"
)

func key(t *testing.T, p string) Key {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Lstat(p, &st); err != nil {
		t.Fatal(err)
	}
	return Key{st.Dev, st.Ino}
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
	got, err := Find(fd, want)
	must(err)
	for _, n := range got {
		slices.Sort(n)
	}
	check := func(p string, names ...string) {
		t.Helper()
		if g := got[key(t, filepath.Join(root, p))]; !slices.Equal(g, names) {
			t.Errorf("%s: %q, want %q", p, g, names)
		}
	}
	check("", "")
	check("a/b/c", "a/b/c")
	check("g", "a/b/f", "g")
	check("sl", "sl")
	if _, ok := got[gone]; ok && len(got[gone]) > 0 {
		t.Errorf("a removed inode was found: %q", got[gone])
	}
}
