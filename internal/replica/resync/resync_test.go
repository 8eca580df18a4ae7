package resync

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io/fs"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/replica/apply"
	"github.com/tandem-ha/tandem/internal/replica/op"
	"github.com/tandem-ha/tandem/internal/replica/treecmp"
	"golang.org/x/sys/unix"
)

func isRoot() bool { return os.Geteuid() == 0 }

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// tempTree returns a new empty directory, emptied with Wipe before the
// test's TempDir cleanup (which cannot remove read-only directories of a
// non-root run).
func tempTree(t testing.TB, name string) string {
	t.Helper()
	d := filepath.Join(t.TempDir(), name)
	must(t, os.Mkdir(d, 0o755))
	t.Cleanup(func() {
		fd, err := unix.Open(d, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err == nil {
			_ = Wipe(fd)
			unix.Close(fd)
		}
	})
	return d
}

// acl encodes a POSIX ACL xattr value (version 2 entries: tag, perm, id).
func acl(entries ...[3]uint32) []byte {
	b := binary.LittleEndian.AppendUint32(nil, 2)
	for _, e := range entries {
		b = binary.LittleEndian.AppendUint16(b, uint16(e[0]))
		b = binary.LittleEndian.AppendUint16(b, uint16(e[1]))
		b = binary.LittleEndian.AppendUint32(b, e[2])
	}
	return b
}

const (
	aclUserObj  = 0x01
	aclUser     = 0x02
	aclGroupObj = 0x04
	aclMask     = 0x10
	aclOther    = 0x20
	aclUndef    = 0xffffffff
)

// oddNames are names a careless walker would mangle.
var oddNames = []string{
	"with space", "new\nline", "tab\tname", "ünïcødé 名前 🙂", "-dash", `back\slash`,
	" leading", "trailing ", "dots...", strings.Repeat("L", 255),
}

// build makes the rich tree below root. It returns the paths of the
// entries whose data map matters (for the Bytes check).
func build(t *testing.T, root string) {
	t.Helper()
	p := func(rel string) string { return filepath.Join(root, rel) }
	write := func(rel string, data []byte, mode os.FileMode) {
		t.Helper()
		must(t, os.WriteFile(p(rel), data, 0o600))
		must(t, os.Chmod(p(rel), mode))
	}
	for _, d := range []string{"a", "a/b", "a/b/c", "b", "b/c", "sticky", "setgid", "ro", "acl", "names"} {
		must(t, os.Mkdir(p(d), 0o755))
	}
	write("hello", []byte("hello world\n"), 0o644)
	write("empty", nil, 0o644)
	write("a/b/c/deep", []byte("deep"), 0o640)
	write("readonly", []byte("ro"), 0o444)
	write("setuid", []byte("#!/bin/sh\n"), 0o4755)
	write("setgid-file", []byte("g"), 0o2711)
	write("ro/inside", []byte("in a read-only directory"), 0o600)

	rng := rand.New(rand.NewPCG(1, 2))
	big := make([]byte, 3<<20+123) // not a multiple of the chunk size
	for i := range big {
		big[i] = byte(rng.Uint32())
	}
	write("a/big", big, 0o600)

	// Sparse: data at 0, 5 MiB and 20 MiB, a trailing hole to 40 MiB.
	f, err := os.OpenFile(p("sparse"), os.O_CREATE|os.O_WRONLY, 0o644)
	must(t, err)
	_, err = f.WriteAt(bytes.Repeat([]byte("s"), 5000), 0)
	must(t, err)
	_, err = f.WriteAt([]byte("0123456789"), 5<<20)
	must(t, err)
	_, err = f.WriteAt(bytes.Repeat([]byte{7}, 1<<20+7), 20<<20)
	must(t, err)
	must(t, f.Truncate(40<<20))
	must(t, f.Close())
	// Nothing but a hole.
	f, err = os.OpenFile(p("allhole"), os.O_CREATE|os.O_WRONLY, 0o644)
	must(t, err)
	must(t, f.Truncate(8<<20))
	must(t, f.Close())

	// Symlinks.
	must(t, os.Symlink("a/b/c/deep", p("rel")))
	must(t, os.Symlink("/etc/passwd", p("abs")))
	must(t, os.Symlink("no/such/thing", p("dangling")))
	must(t, os.Symlink("a", p("dirlink")))
	must(t, os.Symlink("../../../..", p("a/up")))
	must(t, os.Symlink(strings.Repeat("x/", 1000), p("longtarget")))
	must(t, os.Symlink("hello", p("a/b/c/"+oddNames[1])))

	// Hard links across directories: a file, a symlink, a fifo.
	write("a/h1", []byte("linked thrice"), 0o640)
	must(t, os.Link(p("a/h1"), p("b/c/h2")))
	must(t, os.Link(p("a/h1"), p("h3")))
	must(t, unix.Linkat(unix.AT_FDCWD, p("rel"), unix.AT_FDCWD, p("b/rel-hard"), 0))
	must(t, unix.Mkfifo(p("a/fifo"), 0o620))
	must(t, os.Link(p("a/fifo"), p("b/fifo-hard")))
	must(t, unix.Mknod(p("sock"), unix.S_IFSOCK|0o600, 0))

	// Odd names, as files and as a directory holding a file.
	for i, n := range oddNames {
		write("names/"+n, []byte(strings.Repeat("n", i)), 0o644)
	}
	must(t, os.Mkdir(p("names/dir "+oddNames[3]), 0o750))
	write("names/dir "+oddNames[3]+"/"+oddNames[1], []byte("x"), 0o600)

	// Extended attributes.
	setx := func(rel, name string, v []byte) {
		t.Helper()
		if err := unix.Lsetxattr(p(rel), name, v, 0); err != nil {
			t.Fatalf("set %s on %s: %v", name, rel, err)
		}
	}
	setx("hello", "user.plain", []byte("value"))
	setx("hello", "user.empty", nil)
	setx("hello", "user.binary", []byte{0, 1, 2, 0, 255})
	setx("a/big", "user.large", bytes.Repeat([]byte("L"), 3000))
	setx("a", "user.dir", []byte("on a directory"))
	setx("a/h1", "user.linked", []byte("shared by three names"))
	setx(".", "user.root", []byte("on the root"))

	// ACLs: a default one on a directory created before its entries (which
	// inherit it), an access one with a named user on a file.
	aclOK := unix.Setxattr(p("acl"), "system.posix_acl_default", acl(
		[3]uint32{aclUserObj, 7, aclUndef}, [3]uint32{aclUser, 5, 1234}, [3]uint32{aclGroupObj, 5, aclUndef},
		[3]uint32{aclMask, 5, aclUndef}, [3]uint32{aclOther, 0, aclUndef}), 0) == nil
	if aclOK {
		write("acl/inherited", []byte("i"), 0o640)
		must(t, os.Mkdir(p("acl/subdir"), 0o750))
		write("acl-file", []byte("a"), 0o640)
		setx("acl-file", "system.posix_acl_access", acl(
			[3]uint32{aclUserObj, 6, aclUndef}, [3]uint32{aclUser, 4, 4321}, [3]uint32{aclGroupObj, 4, aclUndef},
			[3]uint32{aclMask, 6, aclUndef}, [3]uint32{aclOther, 0, aclUndef}))
	} else {
		t.Log("no POSIX ACLs on this filesystem: not tested")
	}

	if isRoot() {
		// Owners (chown before chmod: it clears set-id bits).
		must(t, os.Lchown(p("hello"), 1001, 1002))
		must(t, os.Lchown(p("a/b"), 2000, 2001))
		must(t, os.Lchown(p("rel"), 3000, 3001))
		must(t, os.Lchown(p("a/fifo"), 4000, 4001))
		must(t, os.Lchown(p("setuid"), 1234, 0))
		must(t, os.Chmod(p("setuid"), 0o4755))
		must(t, os.Lchown(p("setgid"), 0, 5000))
		write("nomode", []byte("mode 0"), 0)
		setx("hello", "trusted.t", []byte("trusted namespace"))
		setx("rel", "trusted.onlink", []byte("on a symlink"))
		// A file capability (cap_net_bind_service), cleared by chown.
		write("capped", []byte("c"), 0o755)
		must(t, os.Lchown(p("capped"), 1, 1))
		setx("capped", "security.capability", binary.LittleEndian.AppendUint32(
			binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint32(
				binary.LittleEndian.AppendUint32(nil, 0x02000001), 1<<10), 0), 0), 0))
		must(t, os.Mkdir(p("dev"), 0o755))
		if err := unix.Mknod(p("dev/null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
			t.Logf("mknod of a character device refused (%v): devices not tested", err)
		} else {
			must(t, unix.Mknod(p("dev/loop"), unix.S_IFBLK|0o640, int(unix.Mkdev(7, 0))))
			must(t, os.Lchown(p("dev/loop"), 0, 6))
		}
	}

	// Modes of directories last (a read-only one could not be filled).
	must(t, os.Chmod(p("sticky"), 0o1777))
	must(t, os.Chmod(p("setgid"), 0o2775))
	must(t, os.Chmod(p("ro"), 0o555))
	must(t, os.Chmod(root, 0o750))

	// Distinct, nanosecond-precise atimes and mtimes, children first.
	var paths []string
	must(t, filepath.WalkDir(root, func(path string, _ fs.DirEntry, err error) error {
		paths = append(paths, path)
		return err
	}))
	base := time.Date(2021, 3, 4, 5, 6, 7, 0, time.UTC).UnixNano()
	for i := len(paths) - 1; i >= 0; i-- {
		ts := []unix.Timespec{unix.NsecToTimespec(base + int64(i)*1_000_003_001), unix.NsecToTimespec(base + int64(i)*7_000_001_003 + 999)}
		must(t, unix.UtimesNanoAt(unix.AT_FDCWD, paths[i], ts, unix.AT_SYMLINK_NOFOLLOW))
	}
}

// recorder applies ops and checks the order the package promises.
type recorder struct {
	t        *testing.T
	a        *apply.Applier
	created  map[string]bool // "" is the root
	finished map[string]bool // directories whose times were sent
	kinds    map[op.Kind]int
	bytes    int64
	last     op.Op
	n        int
}

func newRecorder(t *testing.T, dst string) *recorder {
	a, err := apply.New(dst)
	must(t, err)
	t.Cleanup(func() { a.Close() })
	return &recorder{t: t, a: a, created: map[string]bool{"": true}, finished: map[string]bool{}, kinds: map[op.Kind]int{}}
}

func parent(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[:i]
	}
	return ""
}

// underFinished reports whether a directory holding p had its times sent.
func (r *recorder) underFinished(p string) bool {
	for d := p; d != ""; {
		d = parent(d)
		if r.finished[d] {
			return true
		}
	}
	return false
}

func (r *recorder) emit(o *op.Op) error {
	t := r.t
	t.Helper()
	r.n++
	r.kinds[o.Kind]++
	if r.finished[""] {
		t.Errorf("op %s after the root's times", o)
	}
	switch o.Kind {
	case op.Mkdir, op.Create, op.Symlink, op.Mknod:
		if !r.created[parent(o.Path)] || r.underFinished(o.Path) {
			t.Errorf("%s: parent not created yet or already finished", o)
		}
		if o.Uid != -1 || o.Gid != -1 {
			t.Errorf("%s: owner %d:%d, want -1:-1 (set by Chown later)", o, o.Uid, o.Gid)
		}
		r.created[o.Path] = true
	case op.Link:
		if !r.created[o.Path] || !r.created[parent(o.Path2)] || r.underFinished(o.Path2) {
			t.Errorf("%s: source or parent missing, or parent finished", o)
		}
		r.created[o.Path2] = true
	case op.Write:
		if len(o.Data) == 0 || len(o.Data) > ChunkSize {
			t.Errorf("%s: %d bytes of data", o, len(o.Data))
		}
		r.bytes += int64(len(o.Data))
		fallthrough
	default:
		if !r.created[o.Path] || r.underFinished(o.Path) {
			t.Errorf("%s: on an entry not created, or below a finished directory", o)
		}
	}
	if o.Kind == op.Utimens {
		r.finished[o.Path] = true // harmless for non-directories
	}
	r.last = *o
	return r.a.Apply(o)
}

func emitTree(t *testing.T, src string, emit func(*op.Op) error) (Stats, error) {
	t.Helper()
	fd, err := unix.Open(src, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	must(t, err)
	defer unix.Close(fd)
	return Emit(fd, emit)
}

func wipeTree(t testing.TB, dir string) error {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	must(t, err)
	defer unix.Close(fd)
	return Wipe(fd)
}

func noDiffs(t *testing.T, a, b string) {
	t.Helper()
	diffs, err := treecmp.Compare(a, b, treecmp.Options{Holes: true, Security: true})
	must(t, err)
	for _, d := range diffs {
		t.Error(d)
	}
}

// sameAtimes compares atimes, which treecmp does not (and its reads change).
func sameAtimes(t *testing.T, a, b string) {
	t.Helper()
	n := 0
	must(t, filepath.WalkDir(a, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(a, p)
		var sa, sb unix.Stat_t
		must(t, unix.Lstat(p, &sa))
		must(t, unix.Lstat(filepath.Join(b, rel), &sb))
		if sa.Atim != sb.Atim {
			t.Errorf("%q: atime %v, copy has %v", rel, sa.Atim, sb.Atim)
		}
		n++
		return nil
	}))
	if n < 50 {
		t.Errorf("only %d entries compared", n)
	}
}

// dataMap lists a file's data extents.
func dataMap(t *testing.T, path string) (ext [][2]int64, total int64) {
	t.Helper()
	f, err := os.Open(path)
	must(t, err)
	defer f.Close()
	st, err := f.Stat()
	must(t, err)
	for off := int64(0); off < st.Size(); {
		start, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if err == unix.ENXIO {
			break
		}
		must(t, err)
		end, err := unix.Seek(int(f.Fd()), start, unix.SEEK_HOLE)
		must(t, err)
		ext = append(ext, [2]int64{start, end})
		total += end - start
		off = end
	}
	return ext, total
}

func TestEmitApplyRoundTrip(t *testing.T) {
	src, dst := tempTree(t, "src"), tempTree(t, "dst")
	build(t, src)
	if ext, _ := dataMap(t, filepath.Join(src, "sparse")); len(ext) < 2 {
		t.Fatalf("the filesystem of %s keeps no holes (data map %v): cannot test sparse files", src, ext)
	}

	r := newRecorder(t, dst)
	st, err := emitTree(t, src, r.emit)
	must(t, err)
	if r.last.Kind != op.Utimens || r.last.Path != "" {
		t.Errorf("last op %s, want the root's utimens", &r.last)
	}
	sameAtimes(t, src, dst)
	noDiffs(t, src, dst)

	// Stats against the tree.
	var want Stats
	seen := map[[2]uint64]bool{}
	must(t, filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == src {
			return err
		}
		var s unix.Stat_t
		must(t, unix.Lstat(p, &s))
		if s.Mode&unix.S_IFMT == unix.S_IFDIR {
			want.Dirs++
			return nil
		}
		if k := [2]uint64{s.Dev, s.Ino}; seen[k] {
			want.Links++
			return nil
		} else {
			seen[k] = true
		}
		switch s.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			want.Files++
			_, n := dataMap(t, p)
			want.Bytes += n
		case unix.S_IFLNK:
			want.Symlinks++
		default:
			want.Others++
		}
		return nil
	}))
	if st != want {
		t.Errorf("stats %+v, want %+v", st, want)
	}
	if r.bytes != st.Bytes {
		t.Errorf("Write ops carried %d bytes, stats say %d", r.bytes, st.Bytes)
	}
	if r.kinds[op.Link] != 4 {
		t.Errorf("%d link ops, want 4", r.kinds[op.Link])
	}
	t.Logf("%d ops %v, stats %+v", r.n, r.kinds, st)

	// The sparse file went over as its data only.
	sa, _ := dataMap(t, filepath.Join(src, "sparse"))
	sb, _ := dataMap(t, filepath.Join(dst, "sparse"))
	if len(sb) != len(sa) {
		t.Errorf("sparse copy has data map %v, source %v", sb, sa)
	}
}

// A secondary holding an older, different tree (and root attributes) ends
// up identical after Wipe and a resync.
func TestWipeThenResync(t *testing.T) {
	src, dst := tempTree(t, "src"), tempTree(t, "dst")
	build(t, src)
	build(t, dst)
	must(t, os.WriteFile(filepath.Join(dst, "hello"), []byte("stale"), 0o600))
	must(t, os.MkdirAll(filepath.Join(dst, "only/here"), 0o700))
	must(t, unix.Setxattr(dst, "user.stale", []byte("x"), 0))
	_ = unix.Setxattr(dst, "system.posix_acl_default", acl(
		[3]uint32{aclUserObj, 7, aclUndef}, [3]uint32{aclUser, 7, 999}, [3]uint32{aclGroupObj, 7, aclUndef},
		[3]uint32{aclMask, 7, aclUndef}, [3]uint32{aclOther, 7, aclUndef}), 0)

	must(t, wipeTree(t, dst))
	if ents, err := os.ReadDir(dst); err != nil || len(ents) != 0 {
		t.Fatalf("after Wipe: %d entries, %v", len(ents), err)
	}
	for _, n := range []string{"user.stale", "user.root", "system.posix_acl_default"} {
		if _, err := unix.Getxattr(dst, n, nil); err != unix.ENODATA && err != unix.ENOTSUP {
			t.Errorf("after Wipe, root attribute %s: %v, want ENODATA", n, err)
		}
	}
	r := newRecorder(t, dst)
	_, err := emitTree(t, src, r.emit)
	must(t, err)
	noDiffs(t, src, dst)
}

func TestWipeStaysInside(t *testing.T) {
	tree := tempTree(t, "tree")
	outside := tempTree(t, "outside")
	must(t, os.WriteFile(filepath.Join(outside, "keep"), []byte("keep me"), 0o644))
	must(t, os.Mkdir(filepath.Join(outside, "sub"), 0o755))
	must(t, os.WriteFile(filepath.Join(outside, "sub/keep2"), []byte("me too"), 0o644))

	must(t, os.MkdirAll(filepath.Join(tree, "x/y/z"), 0o755))
	must(t, os.Symlink(outside, filepath.Join(tree, "to-outside")))
	must(t, os.Symlink(outside+"/sub", filepath.Join(tree, "x/y/to-sub")))
	must(t, os.Symlink(outside+"/keep", filepath.Join(tree, "x/to-file")))
	must(t, os.Symlink("../../..", filepath.Join(tree, "x/y/z/up")))
	must(t, os.Link(filepath.Join(outside, "keep"), filepath.Join(tree, "x/hardlink-out")))
	must(t, unix.Mkfifo(filepath.Join(tree, "fifo"), 0o600))
	must(t, os.WriteFile(filepath.Join(tree, "x/y/z/f"), []byte("f"), 0o000))
	must(t, os.Chmod(filepath.Join(tree, "x/y"), 0o555))
	must(t, os.Chmod(filepath.Join(tree, "x"), 0o1777))
	must(t, os.WriteFile(filepath.Join(tree, "n\nl"), nil, 0o644))

	must(t, wipeTree(t, tree))
	if ents, err := os.ReadDir(tree); err != nil || len(ents) != 0 {
		t.Fatalf("after Wipe: %v entries, %v", ents, err)
	}
	for _, f := range []string{"keep", "sub/keep2"} {
		b, err := os.ReadFile(filepath.Join(outside, f))
		if err != nil || len(b) == 0 {
			t.Errorf("outside file %s: %q, %v", f, b, err)
		}
	}
	var st unix.Stat_t
	must(t, unix.Stat(filepath.Join(outside, "keep"), &st))
	if st.Nlink != 1 {
		t.Errorf("outside file has %d links, want 1", st.Nlink)
	}
	// An empty tree is fine too.
	must(t, wipeTree(t, tree))
}

func TestWipeRefusesMountPoint(t *testing.T) {
	if !isRoot() {
		t.Skip("mounting needs root")
	}
	tree := tempTree(t, "tree")
	mnt := filepath.Join(tree, "a/mnt")
	must(t, os.MkdirAll(mnt, 0o755))
	if err := unix.Mount("tmpfs", mnt, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("cannot mount a tmpfs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(mnt, unix.MNT_DETACH) })
	must(t, os.WriteFile(filepath.Join(mnt, "other-fs"), []byte("x"), 0o644))
	err := wipeTree(t, tree)
	if err == nil || !strings.Contains(err.Error(), "mount point") || !strings.Contains(err.Error(), `"a/mnt"`) {
		t.Fatalf("Wipe over a mount point: %v", err)
	}
	if _, err := os.Stat(filepath.Join(mnt, "other-fs")); err != nil {
		t.Errorf("the other filesystem was touched: %v", err)
	}
}

// Entries that vanish during the walk are skipped.
func TestEmitVanishing(t *testing.T) {
	src, dst := tempTree(t, "src"), tempTree(t, "dst")
	must(t, os.Mkdir(filepath.Join(src, "a"), 0o755))
	must(t, os.WriteFile(filepath.Join(src, "a/f"), []byte("f"), 0o644))
	must(t, os.WriteFile(filepath.Join(src, "gone"), []byte("g"), 0o644))
	must(t, os.Mkdir(filepath.Join(src, "gonedir"), 0o755))
	must(t, os.Symlink("x", filepath.Join(src, "gonelink")))
	must(t, os.WriteFile(filepath.Join(src, "z"), []byte("z"), 0o644))
	// The vanishing first name of a hard-linked file: the second is sent
	// as a file, not as a link to nothing.
	must(t, os.Link(filepath.Join(src, "gone"), filepath.Join(src, "zz-second-name")))
	a, err := apply.New(dst)
	must(t, err)
	defer a.Close()
	removed := false
	st, err := emitTree(t, src, func(o *op.Op) error {
		if o.Path == "a" && !removed {
			removed = true
			for _, n := range []string{"gone", "gonedir", "gonelink"} {
				must(t, os.Remove(filepath.Join(src, n)))
			}
		}
		return a.Apply(o)
	})
	must(t, err)
	if st.Files != 3 || st.Dirs != 1 || st.Symlinks != 0 || st.Links != 0 {
		t.Errorf("stats %+v, want 3 files and 1 directory", st)
	}
	diffs, err := treecmp.Compare(src, dst, treecmp.Options{IgnoreDirMtime: true})
	must(t, err)
	for _, d := range diffs {
		t.Error(d)
	}
}

func TestEmitStopsOnEmitError(t *testing.T) {
	src := tempTree(t, "src")
	build(t, src)
	boom := errors.New("boom")
	n := 0
	_, err := emitTree(t, src, func(o *op.Op) error {
		if n++; n == 10 {
			return boom
		}
		return nil
	})
	if !errors.Is(err, boom) || n != 10 {
		t.Fatalf("after %d ops: %v, want boom after 10", n, err)
	}
}

func TestEmitEmptyRoot(t *testing.T) {
	src := tempTree(t, "src")
	var kinds []op.Kind
	st, err := emitTree(t, src, func(o *op.Op) error {
		if o.Path != "" {
			t.Errorf("op on %q in an empty tree", o.Path)
		}
		kinds = append(kinds, o.Kind)
		return nil
	})
	must(t, err)
	if st != (Stats{}) || len(kinds) < 3 || kinds[0] != op.Chown || kinds[len(kinds)-1] != op.Utimens {
		t.Errorf("stats %+v, ops %v", st, kinds)
	}
}

func TestEmitErrorNamesPath(t *testing.T) {
	if isRoot() {
		t.Skip("root reads unreadable files")
	}
	src := tempTree(t, "src")
	must(t, os.Mkdir(filepath.Join(src, "d"), 0o755))
	must(t, os.WriteFile(filepath.Join(src, "d/secret"), []byte("s"), 0))
	_, err := emitTree(t, src, func(*op.Op) error { return nil })
	if err == nil || !strings.Contains(err.Error(), `"d/secret"`) {
		t.Fatalf("unreadable file: %v, want an error naming d/secret", err)
	}
}

// Benchmarks: Emit straight into an Applier (no network), the
// secondary wiped between runs.

func benchTree(b *testing.B, fill func(src string)) {
	src, dst := tempTree(b, "src"), tempTree(b, "dst")
	fill(src)
	srcFd, err := unix.Open(src, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	must(b, err)
	defer unix.Close(srcFd)
	a, err := apply.New(dst)
	must(b, err)
	defer func() { a.Close() }() // the last Applier
	var st Stats
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		must(b, wipeTree(b, dst))
		// Fresh Applier: its descriptor cache refers to wiped entries.
		a.Close()
		a, err = apply.New(dst)
		must(b, err)
		b.StartTimer()
		st, err = Emit(srcFd, a.Apply)
		must(b, err)
	}
	b.StopTimer()
	b.SetBytes(st.Bytes)
	n := float64(st.Files + st.Dirs + st.Symlinks + st.Others)
	b.ReportMetric(n*float64(b.N)/b.Elapsed().Seconds(), "entries/s")
}

// smallFiles makes 2,000 files of 4 KiB in 20 directories.
func smallFiles(b *testing.B, src string) {
	data := bytes.Repeat([]byte("0123456789abcdef"), 256)
	for d := range 20 {
		dir := filepath.Join(src, "d"+string(rune('a'+d)))
		must(b, os.Mkdir(dir, 0o755))
		for f := range 100 {
			must(b, os.WriteFile(filepath.Join(dir, "file-"+string(rune('a'+f/26))+string(rune('a'+f%26))), data, 0o644))
		}
	}
}

func BenchmarkEmitApplySmallFiles(b *testing.B) {
	benchTree(b, func(src string) { smallFiles(b, src) })
}

// BenchmarkEmitOnlySmallFiles measures the walk alone (ops discarded).
func BenchmarkEmitOnlySmallFiles(b *testing.B) {
	src := tempTree(b, "src")
	smallFiles(b, src)
	fd, err := unix.Open(src, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	must(b, err)
	defer unix.Close(fd)
	var st Stats
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if st, err = Emit(fd, func(*op.Op) error { return nil }); err != nil {
			b.Fatal(err)
		}
	}
	b.SetBytes(st.Bytes)
	b.ReportMetric(float64(st.Files+st.Dirs)*float64(b.N)/b.Elapsed().Seconds(), "entries/s")
}

func BenchmarkEmitApply256MiB(b *testing.B) {
	benchTree(b, func(src string) {
		f, err := os.Create(filepath.Join(src, "big"))
		must(b, err)
		buf := make([]byte, 1<<20)
		rng := rand.New(rand.NewPCG(3, 4))
		for range 256 {
			for i := 0; i < len(buf); i += 8 {
				binary.LittleEndian.PutUint64(buf[i:], rng.Uint64())
			}
			_, err := f.Write(buf)
			must(b, err)
		}
		must(b, f.Close())
	})
}

// BenchmarkEmitOnly256MiB measures the walk and reads alone.
func BenchmarkEmitOnly256MiB(b *testing.B) {
	src := tempTree(b, "src")
	f, err := os.Create(filepath.Join(src, "big"))
	must(b, err)
	buf := bytes.Repeat([]byte{1}, 1<<20)
	for range 256 {
		_, err := f.Write(buf)
		must(b, err)
	}
	must(b, f.Close())
	fd, err := unix.Open(src, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	must(b, err)
	defer unix.Close(fd)
	b.SetBytes(256 << 20)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := Emit(fd, func(*op.Op) error { return nil }); err != nil {
			b.Fatal(err)
		}
	}
}
