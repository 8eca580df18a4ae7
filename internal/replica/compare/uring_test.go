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
// not the expected one (grown, shrunk), or too big for a batch, is left
// to the caller; without io_uring every file is.
func TestHashSmallFiles(t *testing.T) {
	dir := t.TempDir()
	var files []smallFile
	var want []uint64
	var ok []bool
	add := func(data []byte, size int64) {
		p := filepath.Join(dir, fmt.Sprint(len(files)))
		must(t, os.WriteFile(p, data, 0o644))
		fd, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		must(t, err)
		t.Cleanup(func() { unix.Close(fd) })
		files = append(files, smallFile{fd: fd, size: size})
		want = append(want, xxh3.Hash(data))
		ok = append(ok, int64(len(data)) == size && size < 1<<20)
	}
	add(nil, 0)
	add([]byte("x"), 1)
	for i := range 300 {
		n := 1 + i*37%9000
		add(randBytes(uint64(i), n), int64(n))
	}
	add(randBytes(1, 5000), 4000) // grew
	add(randBytes(2, 5000), 6000) // shrank
	add(randBytes(3, 1<<20), 1<<20)
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
