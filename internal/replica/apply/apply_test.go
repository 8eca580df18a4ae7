package apply

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/replica/op"
	"golang.org/x/sys/unix"
)

// local performs o on the tree at root with ordinary path-based calls: the
// reference the Applier is compared with.
func local(root string, o *op.Op) error {
	p := filepath.Join(root, o.Path)
	p2 := filepath.Join(root, o.Path2)
	switch o.Kind {
	case op.Write:
		f, err := os.OpenFile(p, os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = f.WriteAt(o.Data, o.Off)
		return err
	case op.Truncate:
		return os.Truncate(p, o.Off)
	case op.Create:
		fd, err := unix.Open(p, unix.O_CREAT|unix.O_WRONLY, o.Mode)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if o.Uid >= 0 || o.Gid >= 0 {
			if err := unix.Fchown(fd, int(o.Uid), int(o.Gid)); err != nil {
				return err
			}
		}
		return unix.Fchmod(fd, o.Mode&0o7777)
	case op.Mknod:
		if err := unix.Mknod(p, o.Mode, int(o.Rdev)); err != nil {
			return err
		}
		return unix.Chmod(p, o.Mode&0o7777)
	case op.Mkdir:
		if err := unix.Mkdir(p, o.Mode); err != nil {
			return err
		}
		return unix.Chmod(p, o.Mode&0o7777)
	case op.Unlink:
		return unix.Unlink(p)
	case op.Rmdir:
		return unix.Rmdir(p)
	case op.Rename:
		return unix.Renameat2(unix.AT_FDCWD, p, unix.AT_FDCWD, p2, uint(o.Flags))
	case op.Link:
		return unix.Link(p, p2)
	case op.Symlink:
		return unix.Symlink(string(o.Data), p)
	case op.Chmod:
		if fi, err := os.Lstat(p); err == nil && fi.Mode()&os.ModeSymlink != 0 {
			return nil
		}
		return unix.Chmod(p, o.Mode)
	case op.Chown:
		return unix.Lchown(p, int(o.Uid), int(o.Gid))
	case op.Utimens:
		return unix.UtimesNanoAt(unix.AT_FDCWD, p, []unix.Timespec{{Sec: o.Atime.Sec, Nsec: o.Atime.Nsec}, {Sec: o.Mtime.Sec, Nsec: o.Mtime.Nsec}}, unix.AT_SYMLINK_NOFOLLOW)
	case op.SetXattr:
		return unix.Lsetxattr(p, o.Name, o.Data, int(o.Flags))
	case op.RemoveXattr:
		return unix.Lremovexattr(p, o.Name)
	case op.Fallocate:
		fd, err := unix.Open(p, unix.O_WRONLY, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Fallocate(fd, o.Flags, o.Off, o.Len)
	case op.Fsync, op.SyncAll:
		return nil
	}
	return fmt.Errorf("local: kind %v", o.Kind)
}

var testStart = time.Now()

// describe renders a tree: everything the replica must reproduce.
func describe(t *testing.T, root string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		st := fi.Sys().(*syscall.Stat_t)
		fmt.Fprintf(&b, "%s mode=%o uid=%d gid=%d", rel, st.Mode, st.Uid, st.Gid)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(&b, " size=%d nlink=%d blocks>0=%v data=%q", st.Size, st.Nlink, st.Blocks > 0, data)
		case unix.S_IFLNK:
			tgt, _ := os.Readlink(p)
			fmt.Fprintf(&b, " -> %q", tgt)
		case unix.S_IFCHR, unix.S_IFBLK:
			fmt.Fprintf(&b, " rdev=%d", st.Rdev)
		}
		// Only times set explicitly (in the past) are reproducible.
		if mt := time.Unix(st.Mtim.Sec, st.Mtim.Nsec); mt.Before(testStart.Add(-time.Hour)) {
			fmt.Fprintf(&b, " mtime=%d.%09d", st.Mtim.Sec, st.Mtim.Nsec)
		}
		if at := time.Unix(st.Atim.Sec, st.Atim.Nsec); at.Before(testStart.Add(-time.Hour)) {
			fmt.Fprintf(&b, " atime=%d.%09d", st.Atim.Sec, st.Atim.Nsec)
		}
		buf := make([]byte, 4096)
		n, _ := unix.Llistxattr(p, buf)
		var names []string
		for _, nm := range strings.Split(string(buf[:n]), "\x00") {
			if strings.HasPrefix(nm, "user.") {
				names = append(names, nm)
			}
		}
		sort.Strings(names)
		for _, nm := range names {
			v := make([]byte, 256)
			vn, _ := unix.Lgetxattr(p, nm, v)
			fmt.Fprintf(&b, " %s=%q", nm, v[:vn])
		}
		b.WriteByte('\n')
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func newPair(t *testing.T) (*Applier, string, string) {
	t.Helper()
	base := t.TempDir()
	rep, ref := filepath.Join(base, "replica"), filepath.Join(base, "reference")
	for _, d := range []string{rep, ref} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	a, err := New(rep)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a, rep, ref
}

func xattrsSupported(dir string) bool {
	return unix.Setxattr(dir, "user.tandem.probe", []byte("x"), 0) == nil
}

var past = op.Time{Sec: 1000000000, Nsec: 123456789}

func opsUnderTest(xattrs bool) []op.Op {
	me, grp := int64(os.Getuid()), int64(os.Getgid())
	ops := []op.Op{
		{Kind: op.Mkdir, Path: "d", Mode: 0o750, Uid: me, Gid: grp},
		{Kind: op.Mkdir, Path: "d/e", Mode: 0o2775, Uid: -1, Gid: -1},
		{Kind: op.Create, Path: "d/f", Mode: 0o640, Uid: me, Gid: grp},
		{Kind: op.Write, Path: "d/f", Data: []byte("hello, world"), Off: 0},
		{Kind: op.Write, Path: "d/f", Data: []byte("HOLE"), Off: 100},
		{Kind: op.Truncate, Path: "d/f", Off: 50},
		{Kind: op.Write, Path: "d/f", Data: []byte("again"), Off: 48},
		{Kind: op.Create, Path: "d/e/g", Mode: 0o4755, Uid: -1, Gid: -1},
		{Kind: op.Write, Path: "d/e/g", Data: bytes.Repeat([]byte("g"), 10000)},
		{Kind: op.Fallocate, Path: "d/e/g", Flags: unix.FALLOC_FL_KEEP_SIZE, Off: 0, Len: 1 << 16},
		{Kind: op.Fallocate, Path: "d/e/g", Flags: unix.FALLOC_FL_PUNCH_HOLE | unix.FALLOC_FL_KEEP_SIZE, Off: 4096, Len: 4096},
		{Kind: op.Fsync, Path: "d/e/g"},
		{Kind: op.Mknod, Path: "d/fifo", Mode: unix.S_IFIFO | 0o600, Uid: -1, Gid: -1},
		{Kind: op.Symlink, Path: "d/ln", Data: []byte("../outside/target"), Uid: me, Gid: grp},
		{Kind: op.Link, Path: "d/f", Path2: "d/e/hard"},
		{Kind: op.Chmod, Path: "d/f", Mode: 0o600},
		{Kind: op.Chmod, Path: "d/ln", Mode: 0o600}, // no effect on a symlink
		{Kind: op.Chown, Path: "d/ln", Uid: me, Gid: grp},
		{Kind: op.Chown, Path: "d/f", Uid: -1, Gid: grp},
		{Kind: op.Utimens, Path: "d/f", Atime: past, Mtime: op.Time{Sec: 1000000001, Nsec: 5}},
		{Kind: op.Utimens, Path: "d/ln", Atime: op.Time{Nsec: op.UtimeOmit}, Mtime: past},
		{Kind: op.Create, Path: "a", Mode: 0o644, Uid: -1, Gid: -1},
		{Kind: op.Create, Path: "b", Mode: 0o644, Uid: -1, Gid: -1},
		{Kind: op.Write, Path: "a", Data: []byte("AAAA")},
		{Kind: op.Write, Path: "b", Data: []byte("BB")},
		{Kind: op.Rename, Path: "a", Path2: "b", Flags: unix.RENAME_EXCHANGE},
		{Kind: op.Write, Path: "a", Data: []byte("x"), Off: 2}, // now the former b
		{Kind: op.Rename, Path: "a", Path2: "d/e/a2"},
		{Kind: op.Write, Path: "d/e/a2", Data: []byte("y"), Off: 3},
		{Kind: op.Rename, Path: "d/e", Path2: "moved"},
		{Kind: op.Write, Path: "moved/g", Data: []byte("after dir rename"), Off: 1},
		{Kind: op.Mkdir, Path: "gone", Mode: 0o755, Uid: -1, Gid: -1},
		{Kind: op.Rmdir, Path: "gone"},
		{Kind: op.Unlink, Path: "d/fifo"},
		{Kind: op.Chmod, Path: "", Mode: 0o711},
		{Kind: op.Utimens, Path: "moved", Atime: past, Mtime: past},
		{Kind: op.SyncAll},
	}
	if xattrs {
		ops = append(ops,
			op.Op{Kind: op.SetXattr, Path: "d/f", Name: "user.one", Data: []byte("1")},
			op.Op{Kind: op.SetXattr, Path: "d/f", Name: "user.two", Data: []byte("2"), Flags: unix.XATTR_CREATE},
			op.Op{Kind: op.SetXattr, Path: "d/f", Name: "user.one", Data: []byte("uno"), Flags: unix.XATTR_REPLACE},
			op.Op{Kind: op.RemoveXattr, Path: "d/f", Name: "user.two"},
			op.Op{Kind: op.SetXattr, Path: "", Name: "user.root", Data: []byte("r")},
			op.Op{Kind: op.SetXattr, Path: "moved", Name: "user.dir", Data: []byte("d")},
		)
	}
	return ops
}

func TestEveryKindMatchesLocal(t *testing.T) {
	a, rep, ref := newPair(t)
	xa := xattrsSupported(rep)
	if xa {
		unix.Removexattr(rep, "user.tandem.probe")
	} else {
		t.Log("user xattrs not supported here: xattr ops not tested")
	}
	for i, o := range opsUnderTest(xa) {
		if err := local(ref, &o); err != nil {
			t.Fatalf("op %d %v locally: %v", i, &o, err)
		}
		if err := a.Apply(&o); err != nil {
			t.Fatalf("op %d: %v", i, err)
		}
		if got, want := describe(t, rep), describe(t, ref); got != want {
			t.Fatalf("after op %d %v:\nreplica:\n%s\nreference:\n%s", i, &o, got, want)
		}
	}
	if os.Getuid() == 0 {
		// Devices and foreign owners need root.
		for _, o := range []op.Op{
			{Kind: op.Mknod, Path: "null", Mode: unix.S_IFCHR | 0o666, Rdev: unix.Mkdev(1, 3), Uid: 12, Gid: 34},
			{Kind: op.Create, Path: "owned", Mode: 0o6755, Uid: 1000, Gid: 1000},
			{Kind: op.Chown, Path: "moved/g", Uid: 4321, Gid: 1234},
			{Kind: op.Symlink, Path: "owned-ln", Data: []byte("x"), Uid: 7, Gid: 8},
		} {
			if err := a.Apply(&o); err != nil {
				t.Fatal(err)
			}
		}
		var st unix.Stat_t
		unix.Lstat(filepath.Join(rep, "null"), &st)
		if st.Rdev != unix.Mkdev(1, 3) || st.Uid != 12 || st.Gid != 34 {
			t.Errorf("mknod: %+v", st)
		}
		unix.Lstat(filepath.Join(rep, "owned"), &st)
		if st.Mode&0o7777 != 0o6755 || st.Uid != 1000 {
			t.Errorf("create as 1000 with set-id bits: mode %o uid %d", st.Mode, st.Uid)
		}
		unix.Lstat(filepath.Join(rep, "moved/g"), &st)
		if st.Uid != 4321 || st.Gid != 1234 {
			t.Errorf("chown: %d:%d", st.Uid, st.Gid)
		}
		unix.Lstat(filepath.Join(rep, "owned-ln"), &st)
		if st.Uid != 7 || st.Gid != 8 {
			t.Errorf("symlink owner: %d:%d", st.Uid, st.Gid)
		}
		// A write to a device node must not reach the device.
		err := a.Apply(&op.Op{Kind: op.Write, Path: "null", Data: []byte("x")})
		if !errors.Is(err, ErrNotRegular) {
			t.Errorf("write to a device node: %v", err)
		}
	}
}

func TestRenameFlags(t *testing.T) {
	a, rep, _ := newPair(t)
	mustApply(t, a,
		op.Op{Kind: op.Create, Path: "x", Mode: 0o644, Uid: -1, Gid: -1},
		op.Op{Kind: op.Create, Path: "y", Mode: 0o644, Uid: -1, Gid: -1},
		op.Op{Kind: op.Write, Path: "x", Data: []byte("X")},
	)
	err := a.Apply(&op.Op{Kind: op.Rename, Path: "x", Path2: "y", Flags: unix.RENAME_NOREPLACE})
	if !errors.Is(err, syscall.EEXIST) {
		t.Fatalf("rename noreplace onto an existing name: %v", err)
	}
	mustApply(t, a, op.Op{Kind: op.Rename, Path: "x", Path2: "z", Flags: unix.RENAME_NOREPLACE})
	mustApply(t, a, op.Op{Kind: op.Rename, Path: "z", Path2: "y"}) // replaces y
	if b, _ := os.ReadFile(filepath.Join(rep, "y")); string(b) != "X" {
		t.Fatalf("y = %q", b)
	}
	// The replaced name's cached descriptor must not receive later writes.
	mustApply(t, a, op.Op{Kind: op.Write, Path: "y", Data: []byte("Y"), Off: 1})
	if b, _ := os.ReadFile(filepath.Join(rep, "y")); string(b) != "XY" {
		t.Fatalf("y = %q", b)
	}
	err = a.Apply(&op.Op{Kind: op.Rename, Path: "y", Path2: "w", Flags: 1 << 20})
	if err == nil || !strings.Contains(err.Error(), "unknown rename flags") {
		t.Fatalf("unknown flags: %v", err)
	}
}

func mustApply(t *testing.T, a *Applier, ops ...op.Op) {
	t.Helper()
	for i := range ops {
		if err := a.Apply(&ops[i]); err != nil {
			t.Fatal(err)
		}
	}
}

func TestUnlinkThenCreateDoesNotReuseDescriptor(t *testing.T) {
	a, rep, _ := newPair(t)
	mustApply(t, a,
		op.Op{Kind: op.Create, Path: "f", Mode: 0o644, Uid: -1, Gid: -1},
		op.Op{Kind: op.Write, Path: "f", Data: []byte("old")},
		op.Op{Kind: op.Unlink, Path: "f"},
		op.Op{Kind: op.Create, Path: "f", Mode: 0o644, Uid: -1, Gid: -1},
		op.Op{Kind: op.Write, Path: "f", Data: []byte("new")},
		op.Op{Kind: op.Mkdir, Path: "d", Mode: 0o755, Uid: -1, Gid: -1},
		op.Op{Kind: op.Create, Path: "d/f", Mode: 0o644, Uid: -1, Gid: -1},
		op.Op{Kind: op.Rename, Path: "d", Path2: "d2"},
		op.Op{Kind: op.Mkdir, Path: "d", Mode: 0o755, Uid: -1, Gid: -1},
		op.Op{Kind: op.Create, Path: "d/f", Mode: 0o644, Uid: -1, Gid: -1},
		op.Op{Kind: op.Write, Path: "d/f", Data: []byte("in new d")},
	)
	if b, _ := os.ReadFile(filepath.Join(rep, "f")); string(b) != "new" {
		t.Fatalf("f = %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(rep, "d/f")); string(b) != "in new d" {
		t.Fatalf("d/f = %q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(rep, "d2/f")); len(b) != 0 {
		t.Fatalf("d2/f = %q", b)
	}
}

func TestManyFilesEvictCache(t *testing.T) {
	a, rep, _ := newPair(t)
	n := fileCacheSize*2 + 3
	for i := range n {
		p := fmt.Sprintf("f%d", i)
		mustApply(t, a, op.Op{Kind: op.Create, Path: p, Mode: 0o644, Uid: -1, Gid: -1})
	}
	for round := range 3 {
		for i := range n {
			mustApply(t, a, op.Op{Kind: op.Write, Path: fmt.Sprintf("f%d", i), Data: []byte{byte('a' + round)}, Off: int64(round)})
		}
	}
	for i := range n {
		if b, _ := os.ReadFile(filepath.Join(rep, fmt.Sprintf("f%d", i))); string(b) != "abc" {
			t.Fatalf("f%d = %q", i, b)
		}
	}
	if a.files.l.Len() > fileCacheSize || len(a.files.m) != a.files.l.Len() {
		t.Fatalf("cache holds %d/%d entries", a.files.l.Len(), len(a.files.m))
	}
}

func TestEscapesRefused(t *testing.T) {
	for _, noOpenat2 := range []bool{false, true} {
		t.Run(fmt.Sprintf("openat2=%v", !noOpenat2), func(t *testing.T) {
			a, rep, _ := newPair(t)
			a.noOpen2 = noOpenat2
			outside := filepath.Join(filepath.Dir(rep), "outside")
			if err := os.MkdirAll(outside, 0o755); err != nil {
				t.Fatal(err)
			}
			os.WriteFile(filepath.Join(outside, "victim"), []byte("safe"), 0o644)
			// A symlink the primary created, pointing out of the tree.
			mustApply(t, a,
				op.Op{Kind: op.Symlink, Path: "esc", Data: []byte(outside), Uid: -1, Gid: -1},
				op.Op{Kind: op.Symlink, Path: "rel", Data: []byte("../outside"), Uid: -1, Gid: -1},
				op.Op{Kind: op.Symlink, Path: "victimlink", Data: []byte(filepath.Join(outside, "victim")), Uid: -1, Gid: -1},
				op.Op{Kind: op.Mkdir, Path: "in", Mode: 0o755, Uid: -1, Gid: -1},
				op.Op{Kind: op.Symlink, Path: "in/loop", Data: []byte("."), Uid: -1, Gid: -1},
			)
			bad := []op.Op{
				{Kind: op.Write, Path: "../outside/victim", Data: []byte("pwned")},
				{Kind: op.Write, Path: filepath.Join(outside, "victim"), Data: []byte("pwned")},
				{Kind: op.Write, Path: "esc/victim", Data: []byte("pwned")},
				{Kind: op.Write, Path: "rel/victim", Data: []byte("pwned")},
				{Kind: op.Write, Path: "victimlink", Data: []byte("pwned")},
				{Kind: op.Truncate, Path: "victimlink", Off: 0},
				{Kind: op.Create, Path: "esc/new", Mode: 0o644, Uid: -1, Gid: -1},
				{Kind: op.Unlink, Path: "esc/victim"},
				{Kind: op.Rename, Path: "rel/victim", Path2: "stolen"},
				{Kind: op.Rename, Path: "in", Path2: "../x"},
				{Kind: op.Link, Path: "esc/victim", Path2: "stolen"},
				{Kind: op.Chmod, Path: "victimlink", Mode: 0o777},
				{Kind: op.Chmod, Path: "esc/victim", Mode: 0o777},
				{Kind: op.Utimens, Path: "esc/victim", Mtime: past, Atime: past},
				{Kind: op.SetXattr, Path: "esc/victim", Name: "user.x", Data: []byte("x")},
				{Kind: op.Write, Path: "in/loop/loop/x", Data: []byte("x")},
				{Kind: op.Write, Path: "a/./b", Data: []byte("x")},
				{Kind: op.Write, Path: "a//b", Data: []byte("x")},
				{Kind: op.Write, Path: "a\x00b", Data: []byte("x")},
			}
			for i := range bad {
				o := &bad[i]
				err := a.Apply(o)
				t.Logf("%v: %v", o, err)
				if err == nil && o.Kind != op.Chmod {
					t.Errorf("%v: applied", o)
				}
			}
			var st unix.Stat_t
			unix.Stat(filepath.Join(outside, "victim"), &st)
			if b, _ := os.ReadFile(filepath.Join(outside, "victim")); string(b) != "safe" || st.Mode&0o777 != 0o644 {
				t.Fatalf("outside file changed: %q mode %o", b, st.Mode)
			}
			if _, err := os.Stat(filepath.Join(outside, "new")); err == nil {
				t.Fatal("file created outside")
			}
			if _, err := os.Lstat(filepath.Join(rep, "stolen")); err == nil {
				t.Fatal("outside file linked or moved in")
			}
		})
	}
}

func TestErrorNamesOpAndPath(t *testing.T) {
	a, _, _ := newPair(t)
	err := a.Apply(&op.Op{Kind: op.Write, Path: "db/x", Data: make([]byte, 4096)})
	if !errors.Is(err, syscall.ENOENT) || !strings.Contains(err.Error(), `apply write "db/x" 4096@0: `) {
		t.Fatalf("%v", err)
	}
	err = a.Apply(&op.Op{Kind: op.Kind(200), Path: "x"})
	if err == nil || !strings.Contains(err.Error(), "unknown op kind") {
		t.Fatalf("%v", err)
	}
}

func TestCreateExistingKeepsIt(t *testing.T) {
	a, rep, _ := newPair(t)
	mustApply(t, a,
		op.Op{Kind: op.Create, Path: "f", Mode: 0o600, Uid: -1, Gid: -1},
		op.Op{Kind: op.Write, Path: "f", Data: []byte("keep")},
		op.Op{Kind: op.Create, Path: "f", Mode: 0o644, Uid: -1, Gid: -1},
	)
	if b, _ := os.ReadFile(filepath.Join(rep, "f")); string(b) != "keep" {
		t.Fatalf("f = %q", b)
	}
}

func TestFailedChownUndoesCreate(t *testing.T) {
	if os.Getuid() == 0 {
		t.Skip("root may chown to anyone")
	}
	a, rep, _ := newPair(t)
	for _, o := range []op.Op{
		{Kind: op.Create, Path: "f", Mode: 0o644, Uid: 0, Gid: 0},
		{Kind: op.Mkdir, Path: "d", Mode: 0o755, Uid: 0, Gid: 0},
		{Kind: op.Symlink, Path: "l", Data: []byte("x"), Uid: 0, Gid: 0},
	} {
		if err := a.Apply(&o); !errors.Is(err, syscall.EPERM) {
			t.Fatalf("%v: %v", &o, err)
		}
		if _, err := os.Lstat(filepath.Join(rep, o.Path)); err == nil {
			t.Fatalf("%v left behind", &o)
		}
	}
}

func TestNewFromFd(t *testing.T) {
	dir := t.TempDir()
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	a, err := NewFromFd(fd)
	unix.Close(fd)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	mustApply(t, a, op.Op{Kind: op.Create, Path: "f", Mode: 0o644, Uid: -1, Gid: -1}, op.Op{Kind: op.SyncAll}, op.Op{Kind: op.Fsync, Path: ""})
	if _, err := os.Stat(filepath.Join(dir, "f")); err != nil {
		t.Fatal(err)
	}
	a.Close()
	if err := a.Apply(&op.Op{Kind: op.SyncAll}); !errors.Is(err, ErrClosed) {
		t.Fatalf("after close: %v", err)
	}
}

func TestFsyncDirtyDirectories(t *testing.T) {
	a, _, _ := newPair(t)
	mustApply(t, a,
		op.Op{Kind: op.Mkdir, Path: "a", Mode: 0o755, Uid: -1, Gid: -1},
		op.Op{Kind: op.Mkdir, Path: "a/b", Mode: 0o755, Uid: -1, Gid: -1},
		op.Op{Kind: op.Create, Path: "a/b/f", Mode: 0o644, Uid: -1, Gid: -1},
		op.Op{Kind: op.Create, Path: "other", Mode: 0o644, Uid: -1, Gid: -1},
	)
	if len(a.dirty) != 3 {
		t.Fatalf("dirty = %v", a.dirty)
	}
	mustApply(t, a, op.Op{Kind: op.Fsync, Path: "a/b/f", Flags: op.DataOnly})
	if len(a.dirty) != 0 {
		t.Fatalf("after fsync of a/b/f, dirty = %v", a.dirty)
	}
	mustApply(t, a, op.Op{Kind: op.Mknod, Path: "a/fifo", Mode: unix.S_IFIFO | 0o644, Uid: -1, Gid: -1})
	mustApply(t, a, op.Op{Kind: op.Fsync, Path: "a/fifo"})
	mustApply(t, a, op.Op{Kind: op.Fsync, Path: "a"})
	if len(a.dirty) != 0 {
		t.Fatalf("dirty = %v", a.dirty)
	}
}

// TestENOSPC needs root to mount a small tmpfs.
func TestENOSPC(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to mount a tmpfs")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "tandem-enospc", dir).CombinedOutput(); err != nil {
		t.Skipf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	a, err := New(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	mustApply(t, a, op.Op{Kind: op.Create, Path: "big", Mode: 0o644, Uid: -1, Gid: -1})
	chunk := make([]byte, 256<<10)
	var werr error
	for i := range 8 {
		if werr = a.Apply(&op.Op{Kind: op.Write, Path: "big", Data: chunk, Off: int64(i * len(chunk))}); werr != nil {
			break
		}
	}
	if !errors.Is(werr, syscall.ENOSPC) {
		t.Fatalf("write past 1 MiB on a 1 MiB tmpfs: %v", werr)
	}
	if !strings.Contains(werr.Error(), `apply write "big"`) {
		t.Fatalf("error does not name the op: %v", werr)
	}
}
