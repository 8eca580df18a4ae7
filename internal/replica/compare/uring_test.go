package compare

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/replica/treecmp"
	"github.com/zeebo/xxh3"
	"golang.org/x/sys/unix"
)

// TestHashSmallFiles: files read whole in batches (more files and bytes
// than one batch holds) hash as read one by one; a file whose size is
// not the expected one (grown, shrunk), too big for a batch, removed,
// or replaced by another type (a symlink, a directory, a fifo) is left
// to the caller; without io_uring every file is.
func TestHashSmallFiles(t *testing.T) {
	dir := t.TempDir()
	dfd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	must(t, err)
	defer unix.Close(dfd)
	var files []smallFile
	var want []uint64
	var ok []bool
	add := func(data []byte, size int64) string {
		name := fmt.Sprint(len(files))
		must(t, os.WriteFile(filepath.Join(dir, name), data, 0o644))
		var st unix.Stat_t
		must(t, unix.Stat(filepath.Join(dir, name), &st))
		// Inode numbers against the names' order: the reads go in
		// inode order, the results in the caller's.
		files = append(files, smallFile{dfd: dfd, name: name, ino: 1<<40 - st.Ino, size: size})
		want = append(want, xxh3.Hash(data))
		ok = append(ok, int64(len(data)) == size && size < sendChunk)
		return filepath.Join(dir, name)
	}
	add(nil, 0)
	add([]byte("x"), 1)
	for i := range 700 {
		n := 1 + i*37%9000
		add(randBytes(uint64(i), n), int64(n))
	}
	add(randBytes(1, 5000), 4000) // grew
	add(randBytes(2, 5000), 6000) // shrank
	add(randBytes(3, sendChunk), sendChunk)
	p := add(randBytes(4, 100), 100)
	must(t, os.Remove(p)) // removed
	ok[len(ok)-1] = false
	p = add(randBytes(5, 100), 100)
	must(t, os.Remove(p))
	must(t, os.Symlink("0", p)) // a symlink to a good file: not followed
	ok[len(ok)-1] = false
	p = add(nil, 0)
	must(t, os.Remove(p))
	must(t, os.Mkdir(p, 0o755)) // a directory
	ok[len(ok)-1] = false
	p = add(nil, 0)
	must(t, os.Remove(p))
	must(t, unix.Mkfifo(p, 0o644)) // a fifo, expected empty: the open does not hang
	for _, off := range []bool{false, true} {
		ringsOff.Store(off)
		fs := append([]smallFile(nil), files...)
		hashSmallFiles(fs)
		for i, f := range fs {
			if off && f.ok || !off && f.ok != ok[i] || f.ok && f.sum != want[i] {
				t.Errorf("io_uring off %v: file %d (size %d): ok %v, want %v; hash %x, want %x", off, i, f.size, f.ok, ok[i] && !off, f.sum, want[i])
			}
		}
	}
	ringsOff.Store(false)
	if n := openFds(t); n > 20 {
		t.Errorf("%d descriptors open after the batches", n)
	}
}

func openFds(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	must(t, err)
	return len(ents)
}

// TestSmallFilesWithoutUring: a full compare of small files that differ
// in content only (same size and mtime) sends them, read in batches or,
// without io_uring, one by one.
func TestSmallFilesWithoutUring(t *testing.T) {
	defer ringsOff.Store(false)
	for _, off := range []bool{false, true} {
		ringsOff.Store(off)
		pr := newPair(t, 13, 0, Options{})
		for i := range 500 {
			data := randBytes(uint64(i), 100+i)
			write(t, filepath.Join(pr.p, fmt.Sprintf("d/f%03d", i)), data)
			if i%7 == 0 {
				data = append([]byte(nil), data...)
				data[i%len(data)] ^= 1
			}
			write(t, filepath.Join(pr.s, fmt.Sprintf("d/f%03d", i)), data)
		}
		sameTimes(t, pr)
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		st := pr.run(t, ctx, Scope{Full: true})
		cancel()
		sameTrees(t, pr.p, pr.s, treecmp.Options{})
		var want int64
		for i := 0; i < 500; i += 7 {
			want += int64(100 + i)
		}
		if st.BytesSent != want {
			t.Errorf("io_uring off %v: sent %d bytes, want %d", off, st.BytesSent, want)
		}
	}
}

// TestAnswerFewDescriptors: with few descriptors left, the listing reads
// the small files it holds open and goes on (no "too many open files").
func TestAnswerFewDescriptors(t *testing.T) {
	dir := t.TempDir()
	for i := range 300 {
		must(t, os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%03d", i)), randBytes(uint64(i), 100), 0o644))
	}
	fd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	must(t, err)
	defer unix.Close(fd)
	open, err := os.ReadDir("/proc/self/fd")
	must(t, err)
	var old unix.Rlimit
	must(t, unix.Getrlimit(unix.RLIMIT_NOFILE, &old))
	lim := old
	lim.Cur = uint64(len(open)) + 40
	must(t, unix.Setrlimit(unix.RLIMIT_NOFILE, &lim))
	b, err := Answer(fd, ListDirQuery("", ListParams{InlineMax: 4096}))
	must(t, unix.Setrlimit(unix.RLIMIT_NOFILE, &old))
	must(t, err)
	a, err := ParseListAnswer(b)
	must(t, err)
	if len(a.Entries) != 300 {
		t.Fatalf("%d entries, want 300", len(a.Entries))
	}
	for _, e := range a.Entries {
		if !e.HasHash || e.Size != 100 {
			t.Fatalf("%s: hash %v, size %d", e.Name, e.HasHash, e.Size)
		}
	}
}

// listEntries answers a listing of dir's root with inline max and
// returns its entries.
func listEntries(t *testing.T, fd int, inline int64) []Entry {
	t.Helper()
	b, err := Answer(fd, ListDirQuery("", ListParams{InlineMax: inline, PageMax: maxPageEntries}))
	must(t, err)
	a, err := ParseListAnswer(b)
	must(t, err)
	if a.More {
		t.Fatal("more than one page")
	}
	return a.Entries
}

// TestListBatchedAsOneByOne: a listing whose small files are read in
// batches (opened, read and closed through io_uring) answers as the one
// read one by one (without io_uring): sizes around the inline limit, a
// big file, extended attributes, hard links, a symlink, a fifo, a
// device, a directory; and, when the directory changes between the
// stats and the batch, the entries that changed (grown, shrunk, removed,
// replaced by a symlink, a directory or a file of another size) are
// described as they are after the change.
func TestListBatchedAsOneByOne(t *testing.T) {
	defer ringsOff.Store(false)
	r := getRing()
	if r == nil {
		t.Skip("no io_uring here")
	}
	putRing(r)
	const inline = 4096
	dir := t.TempDir()
	w := func(name string, n int) {
		must(t, os.WriteFile(filepath.Join(dir, name), randBytes(uint64(n)+uint64(len(name)), n), 0o644))
	}
	w("empty", 0)
	for i := range 600 { // more than one batch
		w(fmt.Sprintf("f%03d", i), 1+i*7%(inline+1))
	}
	w("at-inline", inline)
	w("over-inline", inline+1)
	w("big", 3*DefaultBlockSize+5)
	w("xattr", 100)
	haveX := unix.Setxattr(filepath.Join(dir, "xattr"), "user.k", []byte("v"), 0) == nil
	w("linked", 10)
	must(t, os.Link(filepath.Join(dir, "linked"), filepath.Join(dir, "linked2")))
	must(t, os.Symlink("f001", filepath.Join(dir, "sl")))
	must(t, unix.Mkfifo(filepath.Join(dir, "fifo"), 0o600))
	must(t, os.Mkdir(filepath.Join(dir, "sub"), 0o755))
	if isRoot() {
		must(t, unix.Mknod(filepath.Join(dir, "null"), unix.S_IFCHR|0o600, int(unix.Mkdev(1, 3))))
	}
	fd := rootFd(t, dir)

	check := func(what string, got, want []Entry) {
		t.Helper()
		if len(got) != len(want) {
			t.Fatalf("%s: %d entries, one by one %d", what, len(got), len(want))
		}
		hashed := 0
		for i := range got {
			g, w := got[i], want[i]
			if g.Name != w.Name || g.Mode != w.Mode || g.Size != w.Size || g.Mtime != w.Mtime || g.Ino != w.Ino ||
				g.Nlink != w.Nlink || g.Xattrs != w.Xattrs || g.HasHash != w.HasHash || g.Hash != w.Hash || g.Target != w.Target {
				t.Errorf("%s: entry %q: %+v, one by one %+v", what, g.Name, g, w)
			}
			if g.HasHash {
				hashed++
			}
		}
		if hashed < 600 {
			t.Errorf("%s: %d entries hashed", what, hashed)
		}
	}
	batched := listEntries(t, fd, inline)
	ringsOff.Store(true)
	one := listEntries(t, fd, inline)
	ringsOff.Store(false)
	check("unchanged", batched, one)
	for _, e := range one {
		if e.Name == "xattr" && haveX && e.Xattrs == 0 {
			t.Error("the attributes of \"xattr\" are not in its entry")
		}
	}

	// Changes between the stats and the batch.
	p := func(name string) string { return filepath.Join(dir, name) }
	calls := 0
	testHookBeforeBatch = func() {
		calls++
		if calls > 1 {
			return
		}
		f, err := os.OpenFile(p("f010"), os.O_WRONLY|os.O_APPEND, 0)
		must(t, err)
		_, err = f.Write([]byte("grown"))
		must(t, err)
		must(t, f.Close())
		must(t, os.Truncate(p("f011"), 3))
		must(t, os.Remove(p("f012")))
		must(t, os.Remove(p("f013")))
		must(t, os.Symlink("somewhere", p("f013")))
		must(t, os.Remove(p("f014")))
		must(t, os.Mkdir(p("f014"), 0o700))
		must(t, os.Remove(p("f015")))
		w("f015", inline+100) // now over the limit: no hash
		must(t, os.Remove(p("f599")))
	}
	defer func() { testHookBeforeBatch = nil }()
	batched = listEntries(t, fd, inline)
	testHookBeforeBatch = nil
	if calls < 1 {
		t.Fatal("the hook did not run")
	}
	ringsOff.Store(true)
	one = listEntries(t, fd, inline)
	ringsOff.Store(false)
	check("changed", batched, one)
	byName := map[string]Entry{}
	for _, e := range batched {
		byName[e.Name] = e
	}
	if _, ok := byName["f012"]; ok {
		t.Error("removed f012 listed")
	}
	if e := byName["f013"]; e.typ() != unix.S_IFLNK || e.Target != "somewhere" {
		t.Errorf("f013, now a symlink: %+v", e)
	}
	if e := byName["f014"]; e.typ() != unix.S_IFDIR {
		t.Errorf("f014, now a directory: %+v", e)
	}
	if e := byName["f015"]; e.HasHash || e.Size != inline+100 {
		t.Errorf("f015, now over the limit: %+v", e)
	}
	if n := openFds(t); n > 20 {
		t.Errorf("%d descriptors open after the listings", n)
	}
}
