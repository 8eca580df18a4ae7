package compare

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/replica/op"
	"github.com/zeebo/xxh3"
	"golang.org/x/sys/unix"
)

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func rootFd(t testing.TB, dir string) int {
	t.Helper()
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	must(t, err)
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func listAll(t testing.TB, fd int, dir string, p ListParams) []*ListAnswer {
	t.Helper()
	var out []*ListAnswer
	for {
		b, err := Answer(fd, ListDirQuery(dir, p))
		must(t, err)
		a, err := ParseListAnswer(b)
		must(t, err)
		out = append(out, a)
		if !a.More {
			return out
		}
		p.After = a.Entries[len(a.Entries)-1].Name
	}
}

func hashQ(t testing.TB, fd int, p string, off, n, bs int64) *HashAnswer {
	t.Helper()
	b, err := Answer(fd, HashBlocksQuery(p, off, n, bs, 0))
	must(t, err)
	a, err := ParseHashAnswer(b)
	must(t, err)
	return a
}

func TestAnswerListDir(t *testing.T) {
	dir := t.TempDir()
	must(t, os.WriteFile(filepath.Join(dir, "small"), []byte("hello"), 0o640))
	must(t, os.WriteFile(filepath.Join(dir, "big"), bytes.Repeat([]byte("x"), 100<<10), 0o600))
	must(t, os.Link(filepath.Join(dir, "small"), filepath.Join(dir, "small2")))
	must(t, os.Symlink("../target", filepath.Join(dir, "sl")))
	must(t, os.Mkdir(filepath.Join(dir, "sub"), 0o705))
	must(t, unix.Mkfifo(filepath.Join(dir, "fifo"), 0o600))
	haveX := unix.Setxattr(filepath.Join(dir, "small"), "user.k", []byte("v"), 0) == nil
	if isRoot() {
		must(t, unix.Mknod(filepath.Join(dir, "null"), unix.S_IFCHR|0o600, int(unix.Mkdev(1, 3))))
	}
	when := time.Unix(1_600_000_000, 123456789)
	must(t, os.Chtimes(filepath.Join(dir, "big"), when, when))
	fd := rootFd(t, dir)

	pages := listAll(t, fd, "", ListParams{InlineMax: 64 << 10})
	if len(pages) != 1 {
		t.Fatalf("%d pages", len(pages))
	}
	a := pages[0]
	if a.Self.typ() != unix.S_IFDIR {
		t.Errorf("self mode %#o", a.Self.Mode)
	}
	byName := map[string]Entry{}
	var names []string
	for _, e := range a.Entries {
		byName[e.Name] = e
		names = append(names, e.Name)
	}
	want := []string{"big", "fifo", "sl", "small", "small2", "sub"}
	if isRoot() {
		want = []string{"big", "fifo", "null", "sl", "small", "small2", "sub"}
	}
	if !sort.StringsAreSorted(names) || strings.Join(names, ",") != strings.Join(want, ",") {
		t.Fatalf("names %q, want %q", names, want)
	}
	var st unix.Stat_t
	must(t, unix.Lstat(filepath.Join(dir, "small"), &st))
	sm := byName["small"]
	if sm.Mode != st.Mode || sm.Uid != st.Uid || sm.Size != 5 || sm.Nlink != 2 || sm.Ino != st.Ino ||
		!sm.HasHash || sm.Hash != xxh3.Hash([]byte("hello")) || sm.Mtime != mtimeOf(&st) {
		t.Errorf("small: %+v (stat %+v)", sm, st)
	}
	if haveX && sm.Xattrs == 0 || !haveX && sm.Xattrs != 0 {
		t.Errorf("small: xattr digest %x (xattrs %v)", sm.Xattrs, haveX)
	}
	if byName["small2"].Ino != sm.Ino || byName["small2"].Xattrs != sm.Xattrs {
		t.Errorf("hard link: %+v", byName["small2"])
	}
	if b := byName["big"]; b.HasHash || b.Size != 100<<10 || b.Mtime != (op.Time{Sec: 1_600_000_000, Nsec: 123456789}) {
		t.Errorf("big: %+v", b)
	}
	if s := byName["sl"]; s.typ() != unix.S_IFLNK || s.Target != "../target" {
		t.Errorf("symlink: %+v", s)
	}
	if s := byName["sub"]; s.typ() != unix.S_IFDIR || s.Mode&0o7777 != 0o705 {
		t.Errorf("sub: %+v", s)
	}
	if isRoot() && byName["null"].Rdev != unix.Mkdev(1, 3) {
		t.Errorf("device: %+v", byName["null"])
	}

	// One entry only; absent entry; missing and non-directory paths.
	one := listAll(t, fd, "", ListParams{Only: "sl"})
	if len(one[0].Entries) != 1 || one[0].Entries[0].Name != "sl" {
		t.Errorf("only sl: %+v", one[0].Entries)
	}
	if none := listAll(t, fd, "", ListParams{Only: "absent"}); len(none[0].Entries) != 0 {
		t.Errorf("only absent: %+v", none[0].Entries)
	}
	for p, status := range map[string]int{"missing": statusMissing, "small": statusOther, "sl": statusOther, "no/such": statusMissing, "sl/x": statusOther} {
		if a := listAll(t, fd, p, ListParams{}); a[0].Status != status {
			t.Errorf("list %q: status %d, want %d", p, a[0].Status, status)
		}
	}
	if _, err := Answer(fd, ListDirQuery("", ListParams{Only: "a/b"})); err == nil {
		t.Error("only with a slash accepted")
	}
	if _, err := Answer(fd, &op.Op{Kind: op.Query, Flags: op.QueryListDir, Path: "../x", Data: (&ListParams{}).append(nil)}); err == nil {
		t.Error("a path leaving the root accepted")
	}
}

// TestAnswerListDirRemovedWhileListed: a live op removes the directory
// between the listing's open and its read (getdents then fails with
// ENOENT): the answer is "missing", not an error that fails the compare
// (found by TestConvergeLive with three writers).
func TestAnswerListDirRemovedWhileListed(t *testing.T) {
	dir := t.TempDir()
	must(t, os.MkdirAll(filepath.Join(dir, "a", "gone"), 0o755))
	write(t, filepath.Join(dir, "a", "gone", "f"), []byte("x"))
	fd := rootFd(t, dir)
	testHookListOpened = func(p string) {
		if p == "a/gone" {
			must(t, os.RemoveAll(filepath.Join(dir, "a", "gone")))
		}
	}
	defer func() { testHookListOpened = nil }()
	if a := listAll(t, fd, "a/gone", ListParams{}); a[0].Status != statusMissing {
		t.Fatalf("a directory removed while listed: status %d, want missing (%d)", a[0].Status, statusMissing)
	}
}

// TestAnswerListDirPages: a directory of 100,000 entries comes in pages
// of bounded size, sorted, each name once.
func TestAnswerListDirPages(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	dir := t.TempDir()
	d := filepath.Join(dir, "big")
	must(t, os.Mkdir(d, 0o755))
	const n = 100000
	for i := range n {
		fd, err := unix.Open(filepath.Join(d, fmt.Sprintf("entry-%06d", i)), unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
		must(t, err)
		unix.Close(fd)
	}
	fd := rootFd(t, dir)
	pages := listAll(t, fd, "big", ListParams{InlineMax: 4096})
	total := 0
	prev := ""
	for _, p := range pages {
		b := appendListAnswer(nil, p)
		if len(b) > 4<<20 {
			t.Fatalf("page of %d bytes", len(b))
		}
		for _, e := range p.Entries {
			if e.Name <= prev {
				t.Fatalf("%q after %q", e.Name, prev)
			}
			prev = e.Name
			total++
		}
	}
	if total != n || len(pages) < n/maxPageEntries {
		t.Fatalf("%d entries in %d pages", total, len(pages))
	}
}

func TestAnswerHashBlocks(t *testing.T) {
	dir := t.TempDir()
	const bs = 4096
	data := make([]byte, 5*bs+100)
	for i := range data {
		data[i] = byte(i * 7)
	}
	must(t, os.WriteFile(filepath.Join(dir, "f"), data, 0o644))
	// Sparse: data in block 0 and 3, holes elsewhere, size 6 blocks.
	sp, err := os.Create(filepath.Join(dir, "sparse"))
	must(t, err)
	_, err = sp.WriteAt(bytes.Repeat([]byte{1}, bs), 0)
	must(t, err)
	_, err = sp.WriteAt(bytes.Repeat([]byte{2}, bs), 3*bs)
	must(t, err)
	must(t, sp.Truncate(6*bs))
	sp.Close()
	must(t, os.Symlink("f", filepath.Join(dir, "sl")))
	must(t, os.Mkdir(filepath.Join(dir, "d"), 0o755))
	must(t, unix.Mkfifo(filepath.Join(dir, "fifo"), 0o600))
	fd := rootFd(t, dir)

	a := hashQ(t, fd, "f", 0, 1<<20, bs)
	if a.Status != statusOK || a.File.Size != int64(len(data)) || len(a.Hashes) != 6 {
		t.Fatalf("f: status %d size %d, %d hashes", a.Status, a.File.Size, len(a.Hashes))
	}
	for i, h := range a.Hashes {
		end := min((i+1)*bs, len(data))
		if h != xxh3.Hash(data[i*bs:end]) {
			t.Errorf("block %d: hash differs", i)
		}
	}
	// A range in the middle; a range past the end; attributes only.
	if a := hashQ(t, fd, "f", 2*bs, 2*bs, bs); len(a.Hashes) != 2 || a.Hashes[0] != xxh3.Hash(data[2*bs:3*bs]) {
		t.Errorf("middle range: %d hashes", len(a.Hashes))
	}
	if a := hashQ(t, fd, "f", 10*bs, bs, bs); a.Status != statusOK || len(a.Hashes) != 0 {
		t.Errorf("past the end: %+v", a)
	}
	if a := hashQ(t, fd, "f", 0, 0, bs); a.Status != statusOK || len(a.Hashes) != 0 || a.File.Size != int64(len(data)) {
		t.Errorf("attributes only: %+v", a)
	}
	s := hashQ(t, fd, "sparse", 0, 6*bs, bs)
	zero := xxh3.Hash(make([]byte, bs))
	for i, want := range []uint64{xxh3.Hash(bytes.Repeat([]byte{1}, bs)), zero, zero, xxh3.Hash(bytes.Repeat([]byte{2}, bs)), zero, zero} {
		if s.Hashes[i] != want {
			t.Errorf("sparse block %d: wrong hash", i)
		}
	}
	for p, status := range map[string]int{"missing": statusMissing, "sl": statusOther, "d": statusOther, "fifo": statusOther, "d/x": statusMissing, "sl/x": statusMissing, "f/x": statusMissing} {
		if a := hashQ(t, fd, p, 0, bs, bs); a.Status != status {
			t.Errorf("hash %q: status %d, want %d", p, a.Status, status)
		}
	}
	if a := hashQ(t, fd, "sl", 0, bs, bs); a.File.typ() != unix.S_IFLNK {
		t.Errorf("symlink reported as %#o", a.File.Mode)
	}
	for _, bad := range []int64{0, 100, 1 << 30} {
		if _, err := Answer(fd, HashBlocksQuery("f", 0, bs, bad, 0)); err == nil {
			t.Errorf("block size %d accepted", bad)
		}
	}
	if _, err := Answer(fd, HashBlocksQuery("f", 0, 1<<40, bs, 0)); err == nil {
		t.Error("too many blocks accepted")
	}
}

// TestAnswerNoatime: answering does not change the secondary's atimes.
func TestAnswerNoatime(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	must(t, os.WriteFile(p, []byte("content"), 0o644))
	old := time.Unix(1_000_000_000, 0)
	must(t, os.Chtimes(p, old, time.Now())) // atime older than mtime: relatime would update it
	fd := rootFd(t, dir)
	hashQ(t, fd, "f", 0, 4096, 4096)
	listAll(t, fd, "", ListParams{InlineMax: 4096})
	var st unix.Stat_t
	must(t, unix.Stat(p, &st))
	if st.Atim.Sec != old.Unix() {
		t.Fatalf("atime changed to %d", st.Atim.Sec)
	}
}

func TestAnswerXattrs(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	must(t, os.WriteFile(p, nil, 0o644))
	if unix.Setxattr(p, "user.b", []byte("2"), 0) != nil {
		t.Skip("no user xattrs here")
	}
	must(t, unix.Setxattr(p, "user.a", []byte("1"), 0))
	fd := rootFd(t, dir)
	b, err := Answer(fd, XattrsQuery("f"))
	must(t, err)
	list, ok, err := ParseXattrsAnswer(b)
	must(t, err)
	if !ok || len(list) != 2 || list[0].Name != "user.a" || string(list[1].Value) != "2" {
		t.Fatalf("xattrs %+v", list)
	}
	if digestXattrs(list) != hashQ(t, fd, "f", 0, 0, 4096).File.Xattrs {
		t.Error("the listing digest and the list disagree")
	}
	b, err = Answer(fd, XattrsQuery("missing"))
	must(t, err)
	if _, ok, err := ParseXattrsAnswer(b); ok || err != nil {
		t.Fatalf("missing: %v %v", ok, err)
	}
}

func TestAnswererSkipped(t *testing.T) {
	a := NewAnswerer(rootFd(t, t.TempDir()), nil)
	a.Skipped(&op.Op{Kind: op.Write, Path: "x/y"}, unix.ENOENT)
	a.Skipped(&op.Op{Kind: op.Rename, Path: "a", Path2: "b/c"}, unix.ENOENT)
	a.Skipped(&op.Op{Kind: op.Write, Path: "x/y"}, unix.ENOENT)
	if n := a.Pending(); n != 3 {
		t.Fatalf("pending %d", n)
	}
	b, err := a.Answer(SkippedQuery())
	must(t, err)
	paths, overflow, err := ParseSkippedAnswer(b)
	must(t, err)
	if strings.Join(paths, ",") != "a,b/c,x/y" || overflow || a.Pending() != 0 {
		t.Fatalf("paths %q overflow %v pending %d", paths, overflow, a.Pending())
	}
	for i := range maxSkipped + 10 {
		a.Skipped(&op.Op{Kind: op.Write, Path: fmt.Sprint(i)}, unix.ENOENT)
	}
	total, sawOverflow := 0, false
	for a.Pending() > 0 {
		b, err := a.Answer(SkippedQuery())
		must(t, err)
		if len(b) > 4<<20 {
			t.Fatalf("answer of %d bytes", len(b))
		}
		paths, overflow, err := ParseSkippedAnswer(b)
		must(t, err)
		total += len(paths)
		sawOverflow = sawOverflow || overflow
	}
	if total != maxSkipped || !sawOverflow {
		t.Fatalf("drained %d paths, overflow %v", total, sawOverflow)
	}
}

// TestAnswerConcurrent answers from many goroutines while the files
// change (run with -race).
func TestAnswerConcurrent(t *testing.T) {
	dir := t.TempDir()
	for i := range 20 {
		must(t, os.WriteFile(filepath.Join(dir, fmt.Sprint(i)), bytes.Repeat([]byte{byte(i)}, 50<<10), 0o644))
	}
	fd := rootFd(t, dir)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			p := filepath.Join(dir, fmt.Sprint(i%20))
			if i%3 == 0 {
				os.Remove(p)
			}
			os.WriteFile(p, bytes.Repeat([]byte{byte(i)}, i%(80<<10)), 0o644)
		}
	})
	var aw sync.WaitGroup
	for g := range 8 {
		aw.Go(func() {
			for i := range 200 {
				var q *op.Op
				if (g+i)%2 == 0 {
					q = ListDirQuery("", ListParams{InlineMax: 64 << 10})
				} else {
					q = HashBlocksQuery(fmt.Sprint(i%20), 0, 1<<20, 4096, 0)
				}
				if _, err := Answer(fd, q); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	aw.Wait()
	close(stop)
	wg.Wait()
}

func TestParseRejectsGarbage(t *testing.T) {
	good := appendListAnswer(nil, &ListAnswer{Status: statusOK, Entries: []Entry{{Name: "a"}, {Name: "b", hasTarget: true, Target: "t"}}})
	for i := range len(good) {
		if _, err := ParseListAnswer(good[:i]); err == nil {
			t.Errorf("list answer cut at %d accepted", i)
		}
	}
	unsorted := appendListAnswer(nil, &ListAnswer{Status: statusOK, Entries: []Entry{{Name: "b"}, {Name: "a"}}})
	if _, err := ParseListAnswer(unsorted); err == nil {
		t.Error("unsorted entries accepted")
	}
	h := appendHashAnswer(nil, &HashAnswer{Status: statusOK, Hashes: []uint64{1, 2}})
	for i := range len(h) {
		if _, err := ParseHashAnswer(h[:i]); err == nil {
			t.Errorf("hash answer cut at %d accepted", i)
		}
	}
	if _, _, err := ParseSkippedAnswer([]byte{1, 3, '.', '.', '/', 0}); err == nil {
		t.Error("a skipped path leaving the root accepted")
	}
}

func TestAnswerFindInode(t *testing.T) {
	dir := t.TempDir()
	must(t, os.WriteFile(filepath.Join(dir, "a"), []byte("x"), 0o644))
	must(t, os.MkdirAll(filepath.Join(dir, "d/e"), 0o755))
	must(t, os.Link(filepath.Join(dir, "a"), filepath.Join(dir, "d/e/b")))
	must(t, os.WriteFile(filepath.Join(dir, "other"), []byte("y"), 0o644))
	var st unix.Stat_t
	must(t, unix.Stat(filepath.Join(dir, "a"), &st))
	fd := rootFd(t, dir)
	b, err := Answer(fd, FindInodeQuery(st.Ino))
	must(t, err)
	paths, more, err := ParseSkippedAnswer(b)
	must(t, err)
	if strings.Join(paths, ",") != "a,d/e/b" || more {
		t.Fatalf("names %q (more %v)", paths, more)
	}
}

// TestXattrRoutes: the descriptor calls (flistxattr, listxattrat,
// getxattrat) and the /proc route they fall back on read the same
// attributes, of a file, a directory and a symlink itself.
func TestXattrRoutes(t *testing.T) {
	dir := t.TempDir()
	f, d, l := filepath.Join(dir, "f"), filepath.Join(dir, "d"), filepath.Join(dir, "l")
	must(t, os.WriteFile(f, []byte("x"), 0o644))
	must(t, os.Mkdir(d, 0o755))
	must(t, os.Symlink("f", l))
	if unix.Setxattr(f, "user.b", []byte("2"), 0) != nil {
		t.Skip("no user xattrs here")
	}
	must(t, unix.Setxattr(f, "user.a", bytes.Repeat([]byte("1"), 3000), 0))
	must(t, unix.Setxattr(d, "user.d", []byte("dir"), 0))
	trusted := unix.Lsetxattr(l, "trusted.l", []byte("link"), 0) == nil // root only
	dfd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	must(t, err)
	defer unix.Close(dfd)
	ffd, err := unix.Open(f, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	must(t, err)
	defer unix.Close(ffd)
	pfd, err := unix.Open(d, unix.O_PATH|unix.O_CLOEXEC, 0)
	must(t, err)
	defer unix.Close(pfd)
	read := func(fd int, name string) string {
		t.Helper()
		list, err := readXattrs(fd, name)
		must(t, err)
		var s []string
		for _, x := range list {
			s = append(s, x.Name+"="+strconv.Itoa(len(x.Value)))
		}
		return strings.Join(s, ",")
	}
	want := map[string]string{"f": "user.a=3000,user.b=1", "d": "user.d=3", "l": ""}
	if trusted {
		want["l"] = "trusted.l=4"
	}
	defer noXattrAt.Store(false)
	for _, proc := range []bool{false, true} {
		noXattrAt.Store(proc)
		for name, w := range want {
			if got := read(dfd, name); got != w {
				t.Errorf("proc %v: %s by name: %q, want %q", proc, name, got, w)
			}
		}
		if got := read(ffd, ""); got != want["f"] {
			t.Errorf("proc %v: f by descriptor: %q, want %q", proc, got, want["f"])
		}
		if got := read(pfd, ""); got != want["d"] {
			t.Errorf("proc %v: d by O_PATH descriptor: %q, want %q", proc, got, want["d"])
		}
	}
}

// TestDataSegmentsShrankBetweenSeeks: the file shrinks between SEEK_DATA
// and SEEK_HOLE, which then fails with ENXIO; the block is read, not
// reported as an error (CI saw this under TestAnswerConcurrent).
func TestDataSegmentsShrankBetweenSeeks(t *testing.T) {
	var s dataSegments
	s.init(-1)
	s.seek = func(_ int, off int64, whence int) (int64, error) {
		if whence == unix.SEEK_DATA {
			return off, nil
		}
		return 0, unix.ENXIO
	}
	hole, err := s.hole(4096, 8192)
	if err != nil || hole {
		t.Fatalf("hole %v err %v: want a data block to read", hole, err)
	}
	if hole, err := s.hole(1<<20, 1<<20+4096); err != nil || hole {
		t.Fatalf("next block: hole %v err %v", hole, err)
	}
}

// TestHashBatchOrder: the items of HashBatch queries answered at once are
// read in the order the batches came, so the first is answered after
// its own reads, not after everyone's.
func TestHashBatchOrder(t *testing.T) {
	var mu sync.Mutex
	var started []string
	release := make(chan struct{})
	saved := answerItem
	t.Cleanup(func() { answerItem = saved })
	answerItem = func(root int, q *op.Op) ([]byte, error) {
		mu.Lock()
		started = append(started, q.Path)
		mu.Unlock()
		<-release
		return appendHashAnswer(nil, &HashAnswer{Status: statusMissing}), nil
	}
	batch := func(name string) *op.Op {
		var qs []*op.Op
		for i := range 40 {
			qs = append(qs, HashBlocksQuery(fmt.Sprintf("%s%02d", name, i), 0, 4096, 4096, 0))
		}
		return HashBatchQuery(qs)
	}
	fd := rootFd(t, t.TempDir())
	var wg sync.WaitGroup
	ask := func(q *op.Op) {
		wg.Go(func() {
			if _, err := Answer(fd, q); err != nil {
				t.Error(err)
			}
		})
	}
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(started) }
	ask(batch("a"))
	for deadline := time.Now().Add(10 * time.Second); count() == 0 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	ask(batch("b"))
	time.Sleep(50 * time.Millisecond) // b's readers, if any, start now
	mu.Lock()
	early := slices.Clone(started)
	mu.Unlock()
	close(release)
	wg.Wait()
	for _, p := range early {
		if p[0] == 'b' {
			t.Errorf("%s of the second batch was read while items of the first waited (%d read)", p, len(early))
			break
		}
	}
	if len(started) != 80 {
		t.Errorf("%d items read, want 80", len(started))
	}
}
