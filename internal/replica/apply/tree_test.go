package apply

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/replica/op"
	"golang.org/x/sys/unix"
)

func mkfile(t *testing.T, p string, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestRemoveTree(t *testing.T) {
	a, rep, _ := newPair(t)
	outside := t.TempDir()
	mkfile(t, filepath.Join(outside, "keep"), "outside")
	mkfile(t, filepath.Join(rep, "d/a/b/c/file"), "x")
	mkfile(t, filepath.Join(rep, "d/a/other"), "y")
	if err := os.Symlink(outside, filepath.Join(rep, "d/a/link")); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mkfifo(filepath.Join(rep, "d/fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(rep, "d/a/b"), 0o500); err != nil { // no write bit
		t.Fatal(err)
	}
	mkfile(t, filepath.Join(rep, "single"), "z")
	mkfile(t, filepath.Join(rep, "stay/x"), "stay")
	// Warm the descriptor caches, which must be dropped.
	mustApply(t, a, op.Op{Kind: op.Write, Path: "d/a/other", Data: []byte("w")}, op.Op{Kind: op.Write, Path: "single", Data: []byte("w")})

	mustApply(t, a,
		op.Op{Kind: op.RemoveTree, Path: "d"},
		op.Op{Kind: op.RemoveTree, Path: "single"},
		op.Op{Kind: op.RemoveTree, Path: "absent"},
		op.Op{Kind: op.RemoveTree, Path: "no/such/parent"},
		op.Op{Kind: op.RemoveTree, Path: "single/below/a/file"},
	)
	for _, p := range []string{"d", "single"} {
		if _, err := os.Lstat(filepath.Join(rep, p)); !os.IsNotExist(err) {
			t.Errorf("%s still there: %v", p, err)
		}
	}
	if b, err := os.ReadFile(filepath.Join(outside, "keep")); err != nil || string(b) != "outside" {
		t.Fatalf("the symlink was followed: %q %v", b, err)
	}
	if b, err := os.ReadFile(filepath.Join(rep, "stay/x")); err != nil || string(b) != "stay" {
		t.Fatalf("a sibling was touched: %q %v", b, err)
	}
	// Names reused at once get fresh descriptors.
	mustApply(t, a,
		op.Op{Kind: op.Mkdir, Path: "d", Mode: 0o755, Uid: -1, Gid: -1},
		op.Op{Kind: op.Create, Path: "single", Mode: 0o644, Uid: -1, Gid: -1},
		op.Op{Kind: op.Write, Path: "single", Data: []byte("new")},
	)
	if b, _ := os.ReadFile(filepath.Join(rep, "single")); string(b) != "new" {
		t.Fatalf("single = %q after remove and create", b)
	}
	// A symlink in the path is not followed: nothing outside goes.
	if err := os.Symlink(outside, filepath.Join(rep, "esc")); err != nil {
		t.Fatal(err)
	}
	mustApply(t, a, op.Op{Kind: op.RemoveTree, Path: "esc/keep"})
	if _, err := os.Stat(filepath.Join(outside, "keep")); err != nil {
		t.Fatalf("removed through a symlink: %v", err)
	}
	mustApply(t, a, op.Op{Kind: op.RemoveTree, Path: "esc"})
	if _, err := os.Lstat(filepath.Join(rep, "esc")); !os.IsNotExist(err) || !dirExists(outside) {
		t.Fatalf("symlink esc: %v", err)
	}
}

func dirExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

func TestRemoveTreeRefusesMountPoint(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to mount a tmpfs")
	}
	a, rep, _ := newPair(t)
	mnt := filepath.Join(rep, "d/mnt")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "tandem-rmtree", mnt).CombinedOutput(); err != nil {
		t.Skipf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { unix.Unmount(mnt, unix.MNT_DETACH) })
	mkfile(t, filepath.Join(mnt, "precious"), "p")
	err := a.Apply(&op.Op{Kind: op.RemoveTree, Path: "d"})
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("mount point")) {
		t.Fatalf("removetree across a mount point: %v", err)
	}
	if _, err := os.Stat(filepath.Join(mnt, "precious")); err != nil {
		t.Fatalf("a file of the other filesystem went: %v", err)
	}
}

func listX(t *testing.T, p string) map[string]string {
	t.Helper()
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, name := range bytes.Split(buf[:n], []byte{0}) {
		if len(name) == 0 || bytes.HasPrefix(name, []byte("security.")) {
			continue
		}
		v := make([]byte, 64<<10)
		m, err := unix.Lgetxattr(p, string(name), v)
		if err != nil {
			t.Fatal(err)
		}
		out[string(name)] = string(v[:m])
	}
	return out
}

func TestXattrSet(t *testing.T) {
	a, rep, _ := newPair(t)
	if !xattrsSupported(rep) {
		t.Skip("no user xattrs here")
	}
	unix.Removexattr(rep, "user.tandem.probe")
	mkfile(t, filepath.Join(rep, "f"), "x")
	f := filepath.Join(rep, "f")
	for _, kv := range [][2]string{{"user.gone", "1"}, {"user.kept", "old"}, {"user.changed", "a"}} {
		if err := unix.Setxattr(f, kv[0], []byte(kv[1]), 0); err != nil {
			t.Fatal(err)
		}
	}
	set := op.AppendXattrs(nil, []op.Xattr{
		{Name: "user.kept", Keep: true},
		{Name: "user.changed", Value: []byte("b")},
		{Name: "user.new", Value: []byte{}},
	})
	mustApply(t, a, op.Op{Kind: op.XattrSet, Path: "f", Data: set})
	want := map[string]string{"user.kept": "old", "user.changed": "b", "user.new": ""}
	if got := listX(t, f); !equalMaps(got, want) {
		t.Fatalf("file attributes %v, want %v", got, want)
	}
	// The root, through its own descriptor.
	if err := unix.Setxattr(rep, "user.rootgone", []byte("1"), 0); err != nil {
		t.Fatal(err)
	}
	mustApply(t, a, op.Op{Kind: op.XattrSet, Path: "", Data: op.AppendXattrs(nil, []op.Xattr{{Name: "user.root", Value: []byte("r")}})})
	if got := listX(t, rep); !equalMaps(got, map[string]string{"user.root": "r"}) {
		t.Fatalf("root attributes %v", got)
	}
	// A symlink's own attributes (trusted.* as root; user.* are refused
	// on symlinks), never its target's.
	if os.Getuid() == 0 {
		if err := os.Symlink("f", filepath.Join(rep, "l")); err != nil {
			t.Fatal(err)
		}
		mustApply(t, a, op.Op{Kind: op.XattrSet, Path: "l", Data: op.AppendXattrs(nil, []op.Xattr{{Name: "trusted.l", Value: []byte("L")}})})
		if got := listX(t, filepath.Join(rep, "l")); !equalMaps(got, map[string]string{"trusted.l": "L"}) {
			t.Fatalf("symlink attributes %v", got)
		}
		if got := listX(t, f); !equalMaps(got, want) {
			t.Fatalf("the symlink's target changed: %v", got)
		}
	}
	// Empty list: everything goes.
	mustApply(t, a, op.Op{Kind: op.XattrSet, Path: "f", Data: op.AppendXattrs(nil, nil)})
	if got := listX(t, f); len(got) != 0 {
		t.Fatalf("after an empty set: %v", got)
	}
	if err := a.Apply(&op.Op{Kind: op.XattrSet, Path: "missing", Data: op.AppendXattrs(nil, nil)}); !errors.Is(err, unix.ENOENT) {
		t.Fatalf("xattrset on a missing file: %v", err)
	}
}

func equalMaps(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

func TestQueryChangesNothing(t *testing.T) {
	a, rep, _ := newPair(t)
	mkfile(t, filepath.Join(rep, "f"), "x")
	mustApply(t, a, op.Op{Kind: op.Query, Flags: op.QueryHashBlocks, Path: "f", Len: 10})
	mustApply(t, a, op.Op{Kind: op.Query, Flags: op.QueryListDir, Path: "missing"})
	if b, _ := os.ReadFile(filepath.Join(rep, "f")); string(b) != "x" {
		t.Fatal("a query changed a file")
	}
}

func TestLenient(t *testing.T) {
	a, rep, _ := newPair(t)
	mkfile(t, filepath.Join(rep, "dir/f"), "x")
	diverged := []op.Op{
		{Kind: op.Write, Path: "missing", Data: []byte("x")},
		{Kind: op.Write, Path: "dir", Data: []byte("x")},
		{Kind: op.Mkdir, Path: "dir", Mode: 0o755, Uid: -1, Gid: -1},
		{Kind: op.Rmdir, Path: "dir"},
		{Kind: op.Unlink, Path: "dir"},
		{Kind: op.Rename, Path: "nope", Path2: "dir/g"},
		{Kind: op.Create, Path: "no/parent", Mode: 0o644, Uid: -1, Gid: -1},
		{Kind: op.RemoveXattr, Path: "dir/f", Name: "user.absent"},
		{Kind: op.Truncate, Path: "dir/f/below", Off: 3},
		{Kind: op.Link, Path: "dir", Path2: "dirlink"},
	}
	if os.Getuid() != 0 {
		diverged = diverged[:len(diverged)-1] // EPERM is also a permission problem for a non-root run
	}
	for i := range diverged {
		if err := a.Apply(&diverged[i]); err == nil || !Diverged(&diverged[i], err) {
			t.Errorf("strict %s: %v (diverged %v)", &diverged[i], err, Diverged(&diverged[i], err))
		}
	}
	var got []string
	a.SetLenient(func(o *op.Op, err error) { got = append(got, o.String()) })
	for i := range diverged {
		if err := a.Apply(&diverged[i]); err != nil {
			t.Errorf("lenient %s: %v", &diverged[i], err)
		}
	}
	if len(got) != len(diverged) {
		t.Fatalf("reported %d of %d skipped ops: %q", len(got), len(diverged), got)
	}
	// A good op still applies, and a system error is still an error.
	mustApply(t, a, op.Op{Kind: op.Write, Path: "dir/f", Data: []byte("y")})
	if b, _ := os.ReadFile(filepath.Join(rep, "dir/f")); string(b) != "y" {
		t.Fatalf("dir/f = %q", b)
	}
	for _, err := range []error{unix.ENOSPC, unix.EIO, unix.EDQUOT, unix.EACCES, errors.New("other")} {
		if Diverged(&op.Op{Kind: op.Write}, err) {
			t.Errorf("%v counted as divergence", err)
		}
	}
	if Diverged(&op.Op{Kind: op.Mkdir}, unix.EINVAL) || !Diverged(&op.Op{Kind: op.Rename}, unix.EINVAL) {
		t.Error("EINVAL: divergence only for a rename")
	}
	a.SetLenient(nil)
	if err := a.Apply(&diverged[0]); !errors.Is(err, syscall.ENOENT) {
		t.Fatalf("strict again: %v", err)
	}
}

func TestZeroRangeStopsAtEnd(t *testing.T) {
	f, err := os.Create(filepath.Join(t.TempDir(), "f"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(bytes.Repeat([]byte{1}, 10000)); err != nil {
		t.Fatal(err)
	}
	if err := zeroRange(int(f.Fd()), 4000, 1<<30); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(f.Name())
	if len(b) != 10000 || !slices.Equal(b[:4000], bytes.Repeat([]byte{1}, 4000)) || !slices.Equal(b[4000:], make([]byte, 6000)) {
		t.Fatalf("after zeroRange: %d bytes", len(b))
	}
}

func TestOpenBeneath(t *testing.T) {
	root := t.TempDir()
	mkfile(t, filepath.Join(root, "a/b"), "x")
	outside := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(root, "s")); err != nil {
		t.Fatal(err)
	}
	rfd, err := unix.Open(root, unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(rfd)
	for _, p := range []string{"", ".", "a", "a/b"} {
		fd, err := OpenBeneath(rfd, p, unix.O_RDONLY, 0)
		if err != nil {
			t.Errorf("%q: %v", p, err)
			continue
		}
		unix.Close(fd)
	}
	for _, p := range []string{"s", "s/x", "../x", "/etc/passwd"} {
		if fd, err := OpenBeneath(rfd, p, unix.O_RDONLY, 0); err == nil {
			unix.Close(fd)
			t.Errorf("%q opened", p)
		}
	}
}

// TestTruncateSameSize: a Truncate to the size a file has already leaves
// it alone (on ext4 it would read the last block to zero its tail), unless
// blocks are allocated past its end, which it frees as ftruncate does.
func TestTruncateSameSize(t *testing.T) {
	dir := t.TempDir()
	a, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	p := filepath.Join(dir, "f")
	if err := os.WriteFile(p, bytes.Repeat([]byte{7}, 10000), 0o644); err != nil {
		t.Fatal(err)
	}
	ctime := func() unix.Timespec {
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			t.Fatal(err)
		}
		return st.Ctim
	}
	before := ctime()
	time.Sleep(20 * time.Millisecond) // past the timestamp granularity
	mustApply(t, a, op.Op{Kind: op.Truncate, Path: "f", Off: 10000})
	if ctime() != before {
		t.Error("a Truncate to the same size truncated the file (its ctime moved)")
	}
	mustApply(t, a, op.Op{Kind: op.Truncate, Path: "f", Off: 5000})
	if st, err := os.Stat(p); err != nil || st.Size() != 5000 {
		t.Fatalf("after a Truncate to 5000: %v, %v", st, err)
	}
	// Blocks allocated past the end: a same-size truncate frees them.
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_KEEP_SIZE, 0, 1<<20); err != nil {
		t.Skipf("fallocate: %v", err)
	}
	mustApply(t, a, op.Op{Kind: op.Truncate, Path: "f", Off: 5000})
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks*512 >= 1<<20 {
		t.Errorf("%d bytes allocated after a same-size Truncate: the blocks past the end were kept", st.Blocks*512)
	}
}
