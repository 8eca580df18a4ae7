package treecmp

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

var fixed = time.Date(2024, 5, 6, 7, 8, 9, 123456789, time.UTC)

// build makes the same small tree under root every time, with fixed mtimes.
func build(t *testing.T, root string) {
	t.Helper()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(root, "d/e"), 0o755))
	must(os.WriteFile(filepath.Join(root, "f"), []byte("hello world\n"), 0o644))
	must(os.WriteFile(filepath.Join(root, "d/g"), make([]byte, 700_000), 0o600))
	must(os.WriteFile(filepath.Join(root, "d/e/h"), []byte("x"), 0o644))
	must(os.WriteFile(filepath.Join(root, "one"), []byte("linked"), 0o644))
	must(os.Link(filepath.Join(root, "one"), filepath.Join(root, "d/two")))
	must(os.WriteFile(filepath.Join(root, "solo"), []byte("s"), 0o644))
	must(os.Symlink("f", filepath.Join(root, "ln")))
	must(unix.Mkfifo(filepath.Join(root, "fifo"), 0o644))
	must(os.Chmod(root, 0o755))
	setTimes(t, root)
}

// setTimes sets every mtime below root (and root's) to fixed, children
// first so a directory's mtime is not disturbed afterwards.
func setTimes(t *testing.T, root string) {
	t.Helper()
	var paths []string
	err := filepath.Walk(root, func(p string, _ os.FileInfo, err error) error {
		paths = append(paths, p)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	ts := []unix.Timespec{unix.NsecToTimespec(fixed.UnixNano()), unix.NsecToTimespec(fixed.UnixNano())}
	for i := len(paths) - 1; i >= 0; i-- {
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, paths[i], ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			t.Fatal(err)
		}
	}
}

func pair(t *testing.T) (string, string) {
	t.Helper()
	a, b := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
	build(t, a)
	build(t, b)
	return a, b
}

func compare(t *testing.T, a, b string, o Options) []Diff {
	t.Helper()
	d, err := Compare(a, b, o)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// want checks diffs are exactly the given "path what" pairs, in order.
func want(t *testing.T, diffs []Diff, pairs ...string) {
	t.Helper()
	var got []string
	for _, d := range diffs {
		got = append(got, d.Path+" "+d.What)
	}
	if strings.Join(got, "\n") != strings.Join(pairs, "\n") {
		var full []string
		for _, d := range diffs {
			full = append(full, d.String())
		}
		t.Fatalf("diffs:\n%s\nwant:\n%s", strings.Join(full, "\n"), strings.Join(pairs, "\n"))
	}
}

func TestIdentical(t *testing.T) {
	a, b := pair(t)
	want(t, compare(t, a, b, Options{Holes: true}))
	// Comparing twice does not disturb anything (atime excluded).
	want(t, compare(t, a, b, Options{}))
	want(t, compare(t, a, a, Options{}))
}

func TestMissingExtraType(t *testing.T) {
	a, b := pair(t)
	os.Remove(filepath.Join(b, "solo"))
	os.WriteFile(filepath.Join(b, "d/new"), nil, 0o644)
	os.Remove(filepath.Join(b, "f"))
	os.Mkdir(filepath.Join(b, "f"), 0o755)
	setTimes(t, b)
	d := compare(t, a, b, Options{})
	want(t, d, "d/new extra", "f type", "solo missing")
	if d[1].A != "regular file" || d[1].B != "directory" {
		t.Errorf("type diff %v", d[1])
	}
	if !strings.Contains(d[2].String(), "solo: missing") {
		t.Errorf("String() = %q", d[2].String())
	}
}

func TestSizeContent(t *testing.T) {
	a, b := pair(t)
	// Same size, one byte changed deep in a big file.
	f, err := os.OpenFile(filepath.Join(b, "d/g"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte{1}, 600_001)
	f.Close()
	// Longer, same prefix: a size difference only.
	os.WriteFile(filepath.Join(b, "f"), []byte("hello world\nmore"), 0o644)
	// Same size, different bytes.
	os.WriteFile(filepath.Join(b, "d/e/h"), []byte("y"), 0o644)
	setTimes(t, b)
	d := compare(t, a, b, Options{})
	want(t, d, "d/e/h content", "d/g content", "f size")
	if !strings.Contains(d[1].A, "600001") {
		t.Errorf("offset not named: %v", d[1])
	}
	if d[2].A != "12" || d[2].B != "16" {
		t.Errorf("size diff %v", d[2])
	}
}

func TestModeBits(t *testing.T) {
	a, b := pair(t)
	// os.Chmod maps only os.FileMode bits: use the raw syscall.
	unix.Chmod(filepath.Join(b, "f"), 0o4644)
	unix.Chmod(filepath.Join(b, "d"), 0o1755)
	os.Chmod(filepath.Join(b, "fifo"), 0o600)
	os.Chmod(b, 0o700)
	setTimes(t, b)
	d := compare(t, a, b, Options{})
	want(t, d, ". mode", "d mode", "f mode", "fifo mode")
	if d[2].B != "04644" {
		t.Errorf("setuid not shown: %v", d[2])
	}
}

func TestOwner(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("changing owners needs root")
	}
	a, b := pair(t)
	os.Lchown(filepath.Join(b, "f"), 1234, -1)
	os.Lchown(filepath.Join(b, "ln"), -1, 4321)
	setTimes(t, b)
	want(t, compare(t, a, b, Options{}), "f uid", "ln gid")
}

func TestMtime(t *testing.T) {
	a, b := pair(t)
	ts := func(d time.Duration) []unix.Timespec {
		n := unix.NsecToTimespec(fixed.Add(d).UnixNano())
		return []unix.Timespec{n, n}
	}
	unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(b, "f"), ts(1), 0)
	unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(b, "ln"), ts(time.Second), unix.AT_SYMLINK_NOFOLLOW)
	unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(b, "d"), ts(time.Hour), 0)
	want(t, compare(t, a, b, Options{}), "d mtime", "f mtime", "ln mtime")
	want(t, compare(t, a, b, Options{MtimeTolerance: time.Millisecond}), "d mtime", "ln mtime")
	want(t, compare(t, a, b, Options{MtimeTolerance: time.Millisecond, IgnoreDirMtime: true}), "ln mtime")
	want(t, compare(t, a, b, Options{IgnoreMtime: true}))
}

func setx(t *testing.T, p, name, val string) {
	t.Helper()
	if err := unix.Lsetxattr(p, name, []byte(val), 0); err != nil {
		if errors.Is(err, unix.ENOTSUP) {
			t.Skipf("no xattrs on %s", p)
		}
		t.Fatalf("setxattr %s %s: %v", p, name, err)
	}
}

func TestXattrs(t *testing.T) {
	a, b := pair(t)
	setx(t, filepath.Join(a, "f"), "user.same", "1")
	setx(t, filepath.Join(b, "f"), "user.same", "1")
	setx(t, filepath.Join(a, "f"), "user.val", "old")
	setx(t, filepath.Join(b, "f"), "user.val", "new")
	setx(t, filepath.Join(b, "d"), "user.only-b", "\x00\x01")
	setTimes(t, b)
	d := compare(t, a, b, Options{})
	want(t, d, "d xattr", "f xattr")
	if d[0].A != "absent" || d[0].B != "user.only-b=0x0001" {
		t.Errorf("xattr diff %v", d[0])
	}
	if d[1].A != `user.val="old"` || d[1].B != `user.val="new"` {
		t.Errorf("xattr diff %v", d[1])
	}
	if os.Geteuid() != 0 {
		return
	}
	// security.* is compared only on request.
	setx(t, filepath.Join(a, "f"), "security.test", "x")
	want(t, compare(t, a, b, Options{}), "d xattr", "f xattr")
	want(t, compare(t, a, b, Options{Security: true}), "d xattr", "f xattr", "f xattr")
	// trusted.* is readable by root, on symlinks too (never followed).
	setx(t, filepath.Join(a, "ln"), "trusted.t", "1")
	want(t, compare(t, a, b, Options{}), "d xattr", "f xattr", "ln xattr")
}

func TestSymlink(t *testing.T) {
	a, b := pair(t)
	os.Remove(filepath.Join(b, "ln"))
	os.Symlink("d/g", filepath.Join(b, "ln"))
	setTimes(t, b)
	d := compare(t, a, b, Options{})
	want(t, d, "ln symlink")
	if d[0].A != `"f"` || d[0].B != `"d/g"` {
		t.Errorf("symlink diff %v", d[0])
	}
	// A symlink to a directory is not followed.
	os.Remove(filepath.Join(a, "ln"))
	os.Remove(filepath.Join(b, "ln"))
	os.Symlink("d", filepath.Join(a, "ln"))
	os.Symlink("d", filepath.Join(b, "ln"))
	setTimes(t, a)
	setTimes(t, b)
	want(t, compare(t, a, b, Options{}))
}

func TestLinks(t *testing.T) {
	a, b := pair(t)
	// b: d/two is a copy, not a link, of one; solo gains a second name
	// outside the tree's matching names.
	os.Remove(filepath.Join(b, "d/two"))
	os.WriteFile(filepath.Join(b, "d/two"), []byte("linked"), 0o644)
	setTimes(t, b)
	d := compare(t, a, b, Options{})
	want(t, d, "d/two nlink", "d/two link-group", "one nlink", "one link-group")
	if d[1].A != "names of the inode: d/two, one" || d[1].B != "no other name in the tree" {
		t.Errorf("link-group diff %v", d[1])
	}

	// Same counts, different partners: a links one+d/two and solo+f2;
	// b links one+f2 and solo+d/two.
	a, b = pair(t)
	os.Link(filepath.Join(a, "solo"), filepath.Join(a, "f2"))
	os.Remove(filepath.Join(b, "d/two"))
	os.Link(filepath.Join(b, "solo"), filepath.Join(b, "d/two"))
	os.Link(filepath.Join(b, "one"), filepath.Join(b, "f2"))
	setTimes(t, a)
	setTimes(t, b)
	d = compare(t, a, b, Options{})
	want(t, d, "d/two size", "d/two content", "d/two link-group", "f2 size", "f2 content", "f2 link-group", "one link-group", "solo link-group")
}

func TestHoles(t *testing.T) {
	a, b := pair(t)
	mk := func(root string, sparse bool) {
		f, err := os.Create(filepath.Join(root, "sparse"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		if sparse {
			f.Truncate(1 << 20)
			f.WriteAt([]byte("end"), 1<<20)
		} else {
			f.Write(make([]byte, 1<<20))
			f.Write([]byte("end"))
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	mk(a, true)
	mk(b, false)
	setTimes(t, a)
	setTimes(t, b)
	want(t, compare(t, a, b, Options{}))
	d := compare(t, a, b, Options{Holes: true})
	if len(d) == 1 && d[0].What == Holes {
		if !strings.Contains(d[0].B, "data at 0-") {
			t.Errorf("holes diff %v", d[0])
		}
		return
	}
	if len(d) == 0 {
		t.Skip("filesystem reports no holes (SEEK_HOLE unsupported)")
	}
	want(t, d, "sparse holes")
}

func TestDevices(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mknod of a device needs root")
	}
	a, b := pair(t)
	if err := unix.Mknod(filepath.Join(a, "null"), unix.S_IFCHR|0o600, int(unix.Mkdev(1, 3))); err != nil {
		t.Skipf("mknod: %v", err)
	}
	unix.Mknod(filepath.Join(b, "null"), unix.S_IFCHR|0o600, int(unix.Mkdev(1, 5)))
	setTimes(t, a)
	setTimes(t, b)
	d := compare(t, a, b, Options{})
	want(t, d, "null rdev")
	if d[0].A != "1:3" || d[0].B != "1:5" {
		t.Errorf("rdev diff %v", d[0])
	}
}

func TestExcludeMaxDiffs(t *testing.T) {
	a, b := pair(t)
	os.RemoveAll(filepath.Join(b, "d"))
	os.Remove(filepath.Join(b, "f"))
	os.Remove(filepath.Join(b, "solo"))
	setTimes(t, b)
	want(t, compare(t, a, b, Options{Exclude: []string{"d", "f", "s*"}, IgnoreDirMtime: true}), "one nlink")
	d := compare(t, a, b, Options{MaxDiffs: 2})
	if len(d) != 2 {
		t.Fatalf("MaxDiffs 2 gave %d diffs: %v", len(d), d)
	}
	if _, err := Compare(a, b, Options{Exclude: []string{"["}}); err == nil {
		t.Error("bad pattern accepted")
	}
	if _, err := Compare(a, filepath.Join(b, "nope"), Options{}); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("missing root: %v", err)
	}
}

// TestDeep compares trees whose full paths exceed PATH_MAX.
func TestDeep(t *testing.T) {
	mk := func(root string, last string) {
		if err := os.Mkdir(root, 0o755); err != nil {
			t.Fatal(err)
		}
		fd, err := unix.Open(root, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			t.Fatal(err)
		}
		name := strings.Repeat("n", 200)
		for range 30 { // 30 * 201 > 4096
			if err := unix.Mkdirat(fd, name, 0o755); err != nil {
				t.Fatal(err)
			}
			nfd, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY, 0)
			unix.Close(fd)
			if err != nil {
				t.Fatal(err)
			}
			fd = nfd
		}
		defer unix.Close(fd)
		ffd, err := unix.Openat(fd, "leaf", unix.O_CREAT|unix.O_WRONLY, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		unix.Write(ffd, []byte(last))
		unix.Close(ffd)
	}
	a, b := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
	mk(a, "1")
	mk(b, "2")
	d := compare(t, a, b, Options{IgnoreMtime: true})
	if len(d) != 1 || d[0].What != Content || !strings.HasSuffix(d[0].Path, "/leaf") {
		t.Fatalf("deep diffs: %v", d)
	}
	files, dirs, n, err := Summary(a)
	if err != nil || files != 1 || dirs != 30 || n != 1 {
		t.Errorf("Summary = %d %d %d %v", files, dirs, n, err)
	}
}

func TestSummary(t *testing.T) {
	a, _ := pair(t)
	files, dirs, n, err := Summary(a)
	if err != nil {
		t.Fatal(err)
	}
	// f, d/g, d/e/h, one, d/two, solo, ln, fifo; dirs d, d/e; bytes counted
	// once for one/d/two.
	if files != 8 || dirs != 2 || n != 12+700_000+1+6+1 {
		t.Errorf("Summary = %d files, %d dirs, %d bytes", files, dirs, n)
	}
}
