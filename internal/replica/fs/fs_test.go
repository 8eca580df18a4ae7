package fs

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tandem-ha/tandem/internal/replica/op"
)

// asUser runs fn on a thread whose filesystem uid/gid are uid/gid (FUSE
// passes them as the caller; the kernel checks permissions with them).
func asUser(t *testing.T, uid, gid int, fn func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		// Never unlocked: the thread exits with the goroutine, so its
		// changed credentials cannot leak to other goroutines.
		runtime.LockOSThread()
		unix.Setfsgid(gid)
		unix.Setfsuid(uid)
		fn()
	}()
	<-done
}

func TestOps(t *testing.T) {
	e := newEnv(t, Options{})
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	// Files, appends from two handles, sparse writes.
	mustWrite(t, e.p("a"), []byte("hello world"), os.O_CREATE|os.O_WRONLY)
	a1, err := os.OpenFile(e.p("a"), os.O_WRONLY|os.O_APPEND, 0)
	must(err)
	a2, err := os.OpenFile(e.p("a"), os.O_WRONLY|os.O_APPEND, 0)
	must(err)
	for i := range 3 {
		_, err = a1.Write([]byte("[one]"))
		must(err)
		_, err = a2.Write(bytes.Repeat([]byte{'2'}, i+1))
		must(err)
	}
	must(a1.Close())
	must(a2.Close())
	if got, want := string(e.readReal("a")), "hello world[one]2[one]22[one]222"; got != want {
		t.Fatalf("appends: real file %q, want %q", got, want)
	}
	mustWrite(t, e.p("sparse"), []byte("x"), os.O_CREATE|os.O_WRONLY)
	sp, err := os.OpenFile(e.p("sparse"), os.O_WRONLY, 0)
	must(err)
	_, err = sp.WriteAt([]byte("tail"), 64<<20)
	must(err)
	must(sp.Close())
	var st unix.Stat_t
	must(unix.Fstatat(e.m.RootFd(), "sparse", &st, 0))
	if st.Size != 64<<20+4 || st.Blocks > 64 {
		t.Fatalf("sparse: size %d blocks %d (holes must stay holes)", st.Size, st.Blocks)
	}
	ops, _ := e.rec.snapshot()
	for _, o := range ops {
		if o.Kind == op.Write && o.Path == "sparse" && len(o.Data) > 4 {
			t.Fatalf("sparse: write op of %d bytes (only written data may be sent)", len(o.Data))
		}
	}

	// Truncate by path, by fd, by O_TRUNC.
	must(os.Truncate(e.p("a"), 5))
	tf, err := os.OpenFile(e.p("sparse"), os.O_RDWR, 0)
	must(err)
	must(tf.Truncate(1 << 20))
	must(tf.Close())
	mustWrite(t, e.p("trunc"), []byte("long content here"), os.O_CREATE|os.O_WRONLY)
	mustWrite(t, e.p("trunc"), []byte("short"), os.O_WRONLY|os.O_TRUNC)

	// Directories, special files, symlinks, links.
	must(os.MkdirAll(e.p("d1/d2/d3"), 0o750))
	must(unix.Mkfifo(e.p("d1/fifo"), 0o640))
	must(unix.Mknod(e.p("d1/chr"), unix.S_IFCHR|0o600, int(unix.Mkdev(1, 3))))
	must(os.Symlink("../a", e.p("d1/link")))
	must(os.Symlink("/nonexistent/target", e.p("dangling")))
	must(os.Link(e.p("a"), e.p("d1/hard")))

	// Renames: plain, over an existing file, NOREPLACE, EXCHANGE, a dir.
	mustWrite(t, e.p("r1"), []byte("r1"), os.O_CREATE|os.O_WRONLY)
	mustWrite(t, e.p("r2"), []byte("r2"), os.O_CREATE|os.O_WRONLY)
	must(os.Rename(e.p("r1"), e.p("d1/r1")))
	must(os.Rename(e.p("r2"), e.p("d1/r1")))
	mustWrite(t, e.p("r3"), []byte("r3"), os.O_CREATE|os.O_WRONLY)
	if err := unix.Renameat2(unix.AT_FDCWD, e.p("r3"), unix.AT_FDCWD, e.p("d1/r1"), unix.RENAME_NOREPLACE); !errors.Is(err, unix.EEXIST) {
		t.Fatalf("RENAME_NOREPLACE over a file: %v, want EEXIST", err)
	}
	must(unix.Renameat2(unix.AT_FDCWD, e.p("r3"), unix.AT_FDCWD, e.p("d1/r1"), unix.RENAME_EXCHANGE))
	must(unix.Renameat2(unix.AT_FDCWD, e.p("d1/d2"), unix.AT_FDCWD, e.p("d2moved"), unix.RENAME_NOREPLACE))
	mustWrite(t, e.p("d2moved/d3/f"), []byte("deep"), os.O_CREATE|os.O_WRONLY)
	must(unix.Renameat2(unix.AT_FDCWD, e.p("d2moved"), unix.AT_FDCWD, e.p("d1/fifo"), unix.RENAME_EXCHANGE))

	// Attributes.
	must(unix.Chmod(e.p("a"), 0o4755))
	must(unix.Chmod(e.p("d1"), 0o2775))
	must(os.Chown(e.p("trunc"), 1234, 5678))
	must(os.Lchown(e.p("dangling"), 42, 43))
	must(os.Chtimes(e.p("trunc"), time.Unix(1000, 5), time.Unix(2000, 7)))
	must(unix.UtimesNanoAt(unix.AT_FDCWD, e.p("a"), []unix.Timespec{{Nsec: unix.UTIME_OMIT}, {Nsec: unix.UTIME_NOW}}, 0))
	must(unix.UtimesNanoAt(unix.AT_FDCWD, e.p("dangling"), []unix.Timespec{{Sec: 10}, {Sec: 20}}, unix.AT_SYMLINK_NOFOLLOW))
	must(unix.Setxattr(e.p("a"), "user.one", []byte("1"), 0))
	must(unix.Setxattr(e.p("a"), "user.two", []byte("2"), unix.XATTR_CREATE))
	if err := unix.Setxattr(e.p("a"), "user.two", []byte("2"), unix.XATTR_CREATE); !errors.Is(err, unix.EEXIST) {
		t.Fatalf("XATTR_CREATE on an existing attribute: %v", err)
	}
	must(unix.Removexattr(e.p("a"), "user.one"))
	must(unix.Setxattr(e.p("d1"), "user.dir", []byte("dir value"), 0))
	must(unix.Setxattr(e.mnt, "user.root", []byte("root"), 0))
	buf := make([]byte, 64)
	// File capabilities (the kernel reads them before each write): the
	// cached absence must follow setxattr and removexattr.
	capv := []byte{0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0} // v2, cap_net_bind_service
	if _, err := unix.Getxattr(e.p("trunc"), "security.capability", buf); !errors.Is(err, unix.ENODATA) {
		t.Fatalf("caps before setcap: %v", err)
	}
	must(unix.Setxattr(e.p("trunc"), "security.capability", capv, 0))
	if n, err := unix.Getxattr(e.p("trunc"), "security.capability", buf); err != nil || !bytes.Equal(buf[:n], capv) {
		t.Fatalf("caps after setcap: %x %v", buf[:max(n, 0)], err)
	}
	must(unix.Removexattr(e.p("trunc"), "security.capability"))
	if _, err := unix.Getxattr(e.p("trunc"), "security.capability", buf); !errors.Is(err, unix.ENODATA) {
		t.Fatalf("caps after removal: %v", err)
	}
	if n, err := unix.Getxattr(e.p("d1/hard"), "user.two", buf); err != nil || string(buf[:n]) != "2" {
		t.Fatalf("getxattr through a hard link: %q %v", buf[:max(n, 0)], err)
	}

	// Fallocate: extend, keep size, punch a hole.
	fa, err := os.OpenFile(e.p("falloc"), os.O_CREATE|os.O_RDWR, 0o600)
	must(err)
	must(unix.Fallocate(int(fa.Fd()), 0, 0, 1<<20))
	_, err = fa.WriteAt(bytes.Repeat([]byte{7}, 1<<20), 0)
	must(err)
	must(unix.Fallocate(int(fa.Fd()), unix.FALLOC_FL_KEEP_SIZE, 1<<20, 1<<20))
	must(unix.Fallocate(int(fa.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 4096, 8192))
	must(fa.Sync())
	must(fa.Close())

	// Files created by another user get that user's ownership, and the
	// set-group-ID directory's group.
	must(os.Mkdir(e.p("pub"), 0o777))
	must(os.Chmod(e.p("pub"), 0o777))
	must(os.Mkdir(e.p("sgid"), 0o777))
	must(os.Chown(e.p("sgid"), 0, 4321))
	must(unix.Chmod(e.p("sgid"), 0o2777))
	var uerr error
	asUser(t, 1001, 1002, func() {
		if uerr = os.WriteFile(e.p("pub/user"), []byte("mine"), 0o640); uerr != nil {
			return
		}
		if uerr = os.Mkdir(e.p("pub/udir"), 0o700); uerr != nil {
			return
		}
		if uerr = os.Symlink("user", e.p("pub/ulink")); uerr != nil {
			return
		}
		if uerr = os.WriteFile(e.p("sgid/f"), nil, 0o644); uerr != nil {
			return
		}
		uerr = os.Mkdir(e.p("sgid/sub"), 0o755)
	})
	must(uerr)
	for _, c := range []struct {
		path      string
		uid, gid  uint32
		modeCheck uint32
	}{{"pub/user", 1001, 1002, 0o640}, {"pub/udir", 1001, 1002, 0o700}, {"pub/ulink", 1001, 1002, 0},
		{"sgid/f", 1001, 4321, 0o644}, {"sgid/sub", 1001, 4321, 0o2755}} {
		must(unix.Fstatat(e.m.RootFd(), c.path, &st, unix.AT_SYMLINK_NOFOLLOW))
		if st.Uid != c.uid || st.Gid != c.gid || (c.modeCheck != 0 && st.Mode&07777 != c.modeCheck) {
			t.Errorf("%s: owner %d:%d mode %o, want %d:%d %o", c.path, st.Uid, st.Gid, st.Mode&07777, c.uid, c.gid, c.modeCheck)
		}
	}
	// Another user may not write root's files (default_permissions).
	asUser(t, 1001, 1002, func() { uerr = os.WriteFile(e.p("trunc"), []byte("no"), 0) })
	if !errors.Is(uerr, os.ErrPermission) {
		t.Errorf("user writing root's 0644 file: %v, want permission denied", uerr)
	}

	// Removal.
	must(os.Remove(e.p("d1/hard")))
	must(os.Remove(e.p("d1/fifo/d3/f"))) // the exchange above moved it
	must(os.Remove(e.p("d1/fifo/d3")))

	e.check()

	// Reads and listing go to the real directory and send nothing.
	e.rec.reset()
	if b, err := os.ReadFile(e.p("d1/r1")); err != nil || string(b) != "r3" {
		t.Fatalf("read d1/r1: %q %v", b, err)
	}
	if _, err := os.ReadDir(e.p("d1")); err != nil {
		t.Fatal(err)
	}
	if target, err := os.Readlink(e.p("d1/link")); err != nil || target != "../a" {
		t.Fatalf("readlink: %q %v", target, err)
	}
	var sfs unix.Statfs_t
	must(unix.Statfs(e.mnt, &sfs))
	if k := e.rec.kinds(); k != "" {
		t.Fatalf("read-only calls submitted ops: %s", k)
	}

}

func TestWaits(t *testing.T) {
	e := newEnv(t, Options{})
	mustWrite(t, e.p("f"), []byte("x"), os.O_CREATE|os.O_WRONLY)
	f, err := os.OpenFile(e.p("f"), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	e.rec.reset()
	for range 10 {
		f.Write([]byte("plain write"))
	}
	if _, waits := e.rec.snapshot(); len(waits) != 0 {
		t.Fatalf("plain writes waited: %v", waits)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	ops, waits := e.rec.snapshot()
	last := ops[len(ops)-1]
	if last.Kind != op.Fsync || last.Flags != 0 || len(waits) != 1 || !waits[0].durable || waits[0].seq != e.rec.lastSeq() {
		t.Fatalf("fsync: last op %v flags %d, waits %v (want one durable wait for the fsync op)", last.String(), last.Flags, waits)
	}
	e.rec.reset()
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		t.Fatal(err)
	}
	ops, waits = e.rec.snapshot()
	if len(ops) != 1 || ops[0].Kind != op.Fsync || ops[0].Flags != op.DataOnly || len(waits) != 1 || !waits[0].durable {
		t.Fatalf("fdatasync: ops %s waits %v", e.rec.kinds(), waits)
	}
	// Close after write waits (applied) for the last op.
	e.rec.reset()
	f.Write([]byte("more"))
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	ops, waits = e.rec.snapshot()
	// The write carries its mtime: no Utimens at close.
	if len(waits) != 1 || waits[0].durable || waits[0].seq != e.rec.lastSeq() || len(ops) != 1 || ops[0].Kind != op.Write || !ops[0].Stamped() {
		t.Fatalf("close after write: ops %s waits %v (want one stamped write then one applied wait)", e.rec.kinds(), waits)
	}
	// A read-only open and close does not wait.
	e.rec.reset()
	if _, err := os.ReadFile(e.p("f")); err != nil {
		t.Fatal(err)
	}
	if _, waits := e.rec.snapshot(); len(waits) != 0 {
		t.Fatalf("read-only close waited: %v", waits)
	}
	// O_DSYNC and RWF_DSYNC writes: the kernel sends an FSYNC, which waits
	// durable before write(2) returns.
	for _, mode := range []string{"O_DSYNC", "O_SYNC", "RWF_DSYNC"} {
		flags := os.O_WRONLY
		switch mode {
		case "O_DSYNC":
			flags |= unix.O_DSYNC
		case "O_SYNC":
			flags |= unix.O_SYNC
		}
		g, err := os.OpenFile(e.p("f"), flags, 0)
		if err != nil {
			t.Fatal(err)
		}
		e.rec.reset()
		if mode == "RWF_DSYNC" {
			_, err = unix.Pwritev2(int(g.Fd()), [][]byte{[]byte("sync")}, 0, unix.RWF_DSYNC)
		} else {
			_, err = g.WriteAt([]byte("sync"), 0)
		}
		if err != nil {
			t.Fatal(err)
		}
		ops, waits = e.rec.snapshot()
		if len(ops) != 2 || ops[0].Kind != op.Write || ops[1].Kind != op.Fsync || len(waits) != 1 || !waits[0].durable || waits[0].seq != e.rec.lastSeq() {
			t.Fatalf("%s write: ops %s waits %v (want write, fsync and a durable wait for it)", mode, e.rec.kinds(), waits)
		}
		if want := uint32(op.DataOnly); mode == "O_SYNC" {
			if ops[1].Flags != 0 {
				t.Fatalf("O_SYNC: fsync flags %d, want full fsync", ops[1].Flags)
			}
		} else if ops[1].Flags != want {
			t.Fatalf("%s: fsync flags %d, want DataOnly", mode, ops[1].Flags)
		}
		g.Close()
	}
	// fsync of a directory.
	d, err := os.Open(e.mnt)
	if err != nil {
		t.Fatal(err)
	}
	e.rec.reset()
	if err := d.Sync(); err != nil {
		t.Fatal(err)
	}
	d.Close()
	ops, waits = e.rec.snapshot()
	if len(ops) != 1 || ops[0].Kind != op.Fsync || ops[0].Path != "" || len(waits) != 1 || !waits[0].durable {
		t.Fatalf("fsync of the root directory: ops %s waits %v", e.rec.kinds(), waits)
	}
	e.check()
}

func TestSyncWrite(t *testing.T) {
	e := newEnv(t, Options{Sync: SyncWrite})
	f, err := os.Create(e.p("f"))
	if err != nil {
		t.Fatal(err)
	}
	e.rec.reset()
	for range 5 {
		f.Write([]byte("every write waits"))
	}
	ops, waits := e.rec.snapshot()
	if len(ops) != 5 || len(waits) != 5 {
		t.Fatalf("sync=write: %d ops, %d waits, want 5 and 5", len(ops), len(waits))
	}
	for i, w := range waits {
		if w.durable || w.seq != uint64(i+1)+e.rec.lastSeq()-5 {
			t.Fatalf("sync=write: wait %d is %v", i, w)
		}
	}
	f.Close()
	e.check()
}

func TestConcurrentWriters(t *testing.T) {
	e := newEnv(t, Options{})
	const writers = 8
	var wg sync.WaitGroup
	errs := make(chan error, writers*2)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dir := e.p(filepath.Join("w", string(rune('a'+w))))
			if err := os.MkdirAll(dir, 0o755); err != nil {
				errs <- err
				return
			}
			f, err := os.Create(filepath.Join(dir, "data"))
			if err != nil {
				errs <- err
				return
			}
			defer f.Close()
			chunk := bytes.Repeat([]byte{byte('A' + w)}, 4096+w)
			for i := range 200 {
				if _, err := f.Write(chunk); err != nil {
					errs <- err
					return
				}
				if i%50 == 0 {
					// Renames of the directory while its file is written.
					nd := dir + ".moved"
					if err := os.Rename(dir, nd); err != nil {
						errs <- err
						return
					}
					if err := os.Rename(nd, dir); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	e.check()
}

// TestOpenFileFollowsRenames: writes through a descriptor land in the file
// wherever it moved, and the ops say so.
func TestOpenFileFollowsRenames(t *testing.T) {
	e := newEnv(t, Options{})
	os.MkdirAll(e.p("a/b"), 0o755)
	f, err := os.Create(e.p("a/b/f"))
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte("1"))
	os.Rename(e.p("a"), e.p("c"))
	f.Write([]byte("2"))
	os.Rename(e.p("c/b/f"), e.p("g"))
	f.Write([]byte("3"))
	os.Mkdir(e.p("h"), 0o755)
	os.Rename(e.p("g"), e.p("h/g"))
	os.Rename(e.p("h"), e.p("c/b/h"))
	f.Write([]byte("4"))
	f.Close()
	if got := string(e.readReal("c/b/h/g")); got != "1234" {
		t.Fatalf("real file %q", got)
	}
	ops, _ := e.rec.snapshot()
	var paths []string
	for _, o := range ops {
		if o.Kind == op.Write {
			paths = append(paths, o.Path)
		}
	}
	if want := "a/b/f c/b/f g c/b/h/g"; strings.Join(paths, " ") != want {
		t.Fatalf("write paths %q, want %q", paths, want)
	}
	e.check()
}

func TestHardLinks(t *testing.T) {
	e := newEnv(t, Options{})
	os.Mkdir(e.p("d"), 0o755)
	mustWrite(t, e.p("one"), []byte("0"), os.O_CREATE|os.O_WRONLY)
	f, err := os.OpenFile(e.p("one"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Link(e.p("one"), e.p("d/two")); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(e.p("d/two"), e.p("three")); err != nil {
		t.Fatal(err)
	}
	f.WriteAt([]byte("1"), 1)
	os.Remove(e.p("one"))
	f.WriteAt([]byte("2"), 2) // only d/two and three name it now
	os.Rename(e.p("three"), e.p("d/two"))
	f.WriteAt([]byte("3"), 3) // rename of two links of one file: no-op
	os.Remove(e.p("three"))
	f.WriteAt([]byte("4"), 4)
	os.Remove(e.p("d/two"))
	f.WriteAt([]byte("5"), 5) // deleted: nothing to replicate
	f.Close()

	// A name the mount never looked up: created behind its back.
	mustWrite(t, e.p("p"), []byte("p"), os.O_CREATE|os.O_WRONLY)
	g, err := os.OpenFile(e.p("p"), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	rootfd := e.m.RootFd()
	if err := unix.Linkat(rootfd, "p", rootfd, "q", 0); err != nil {
		t.Fatal(err)
	}
	e.rec.mu.Lock()
	e.rec.seq++
	e.rec.ops = append(e.rec.ops, op.Op{Kind: op.Link, Path: "p", Path2: "q"}) // as if replicated
	e.rec.mu.Unlock()
	os.Remove(e.p("p"))
	g.WriteAt([]byte("Q"), 1)
	g.Close()
	if got := string(e.readReal("q")); got != "pQ" {
		t.Fatalf("q: %q", got)
	}
	e.check()
}

func TestLongNames(t *testing.T) {
	e := newEnv(t, Options{})
	long := strings.Repeat("n", 255)
	mustWrite(t, e.p(long), []byte("long name"), os.O_CREATE|os.O_WRONLY)
	if err := os.Mkdir(e.p(strings.Repeat("d", 255)), 0o755); err != nil {
		t.Fatal(err)
	}
	// A chain deeper than PATH_MAX, built with *at calls on the mount.
	fd, err := unix.Open(e.mnt, unix.O_RDONLY|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	depth := 0
	for total := 0; total < 2*unix.PathMax; total += 201 {
		name := strings.Repeat(string(rune('a'+depth%26)), 200)
		if err := unix.Mkdirat(fd, name, 0o755); err != nil {
			t.Fatalf("mkdir at depth %d: %v", depth, err)
		}
		nfd, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_DIRECTORY, 0)
		if err != nil {
			t.Fatalf("open at depth %d: %v", depth, err)
		}
		unix.Close(fd)
		fd = nfd
		depth++
	}
	ffd, err := unix.Openat(fd, "deep", unix.O_CREAT|unix.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	unix.Write(ffd, []byte("deep data"))
	unix.Fsync(ffd)
	unix.Close(ffd)
	unix.Renameat(fd, "deep", fd, strings.Repeat("r", 255))
	if err := unix.Fchmod(fd, 0o700); err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	ops, _ := e.rec.snapshot()
	var longest int
	for _, o := range ops {
		longest = max(longest, len(o.Path))
	}
	if longest < 2*unix.PathMax {
		t.Fatalf("longest op path %d, want > %d", longest, 2*unix.PathMax)
	}
	e.check()
}

// TestMmap writes through a shared writable mapping. The mapping is used by
// a child process: a page fault on the mount blocks its thread, which must
// not be one the serving Go runtime needs.
func TestMmap(t *testing.T) {
	e := newEnv(t, Options{})
	f, err := os.Create(e.p("m"))
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(1 << 16); err != nil {
		t.Fatal(err)
	}
	f.Close()
	e.rec.reset()
	out, err := helperCmd("mmap", e.p("m")).CombinedOutput()
	if err != nil {
		t.Fatalf("mmap helper: %v\n%s", err, out)
	}
	ops, waits := e.rec.snapshot()
	var wrote, synced bool
	for _, o := range ops {
		switch o.Kind {
		case op.Write:
			wrote = true
		case op.Fsync:
			synced = wrote
		}
	}
	var durable bool
	for _, w := range waits {
		durable = durable || w.durable
	}
	if !wrote || !synced || !durable {
		t.Fatalf("msync of a shared mapping: ops %s waits %v (want the dirty pages as writes, then fsync)", e.rec.kinds(), waits)
	}
	if got := e.readReal("m"); string(got[100:112]) != "through mmap" || string(got[40000:40011]) != "second page" {
		t.Fatal("mmap data missing from the real file")
	}
	e.check()
}

func TestOrphanWrite(t *testing.T) {
	e := newEnv(t, Options{})
	f, err := os.Create(e.p("tmp"))
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(e.p("tmp"))
	e.rec.reset()
	if _, err := f.Write([]byte("nobody sees this")); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if k := e.rec.kinds(); k != "" {
		t.Fatalf("ops for a deleted file: %s", k)
	}
	f.Close()
}

func TestUnmountBusy(t *testing.T) {
	requireRoot(t)
	e := newEnv(t, Options{})
	f, err := os.Create(e.p("open"))
	if err != nil {
		t.Fatal(err)
	}
	err = e.m.Unmount()
	if !errors.Is(err, ErrLazyUnmount) {
		f.Close()
		t.Fatalf("Unmount with an open file: %v, want ErrLazyUnmount", err)
	}
	t.Log(err)
	// The open file can be read, not changed: the node is leaving the
	// serving role and nothing would replicate the change (the copy may
	// be a SECOND's next).
	if _, err := f.Write([]byte("after detach")); !errors.Is(err, syscall.EROFS) {
		t.Fatalf("write after detach: %v, want EROFS", err)
	}
	// New opens see the real directory.
	if live, _ := isTandemMount(e.mnt); live {
		t.Fatal("still mounted after lazy unmount")
	}
	select {
	case <-e.m.Done():
		t.Fatal("server stopped while a file is open")
	case <-time.After(100 * time.Millisecond):
	}
	f.Close()
	select {
	case <-e.m.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("server did not stop after the last close")
	}
	if got, _ := os.ReadFile(e.p("open")); string(got) != "" {
		t.Fatalf("real file %q, want it unchanged (empty)", got)
	}
}

// TestForgetReleasesFds: inodes the kernel forgets (here: deleted files)
// give their O_PATH fd back, so deleted files free their space.
func TestForgetReleasesFds(t *testing.T) {
	e := newEnv(t, Options{})
	countFds := func() int {
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Fatal(err)
		}
		return len(ents)
	}
	os.Mkdir(e.p("d"), 0o755)
	base := countFds()
	const n = 300
	for i := range n {
		p := e.p(filepath.Join("d", "f"+strings.Repeat("x", i%7)+string(rune('a'+i%26))+time.Now().Format("150405.000000000")))
		mustWrite(t, p, []byte("data"), os.O_CREATE|os.O_WRONLY)
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		runtime.GC()
		got := countFds()
		if got <= base+5 {
			t.Logf("fds: %d before, %d after %d create+delete", base, got, n)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("fds: %d before, still %d after %d create+delete", base, got, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
	e.check()
}

// TestOddCalls: copy_file_range is replicated (the kernel falls back to
// read/write), calls that would change the tree without an op are refused.
func TestOddCalls(t *testing.T) {
	e := newEnv(t, Options{})
	mustWrite(t, e.p("src"), bytes.Repeat([]byte("0123456789"), 100000), os.O_CREATE|os.O_WRONLY)
	src, err := os.Open(e.p("src"))
	if err != nil {
		t.Fatal(err)
	}
	dst, err := os.Create(e.p("dst"))
	if err != nil {
		t.Fatal(err)
	}
	offIn, offOut := int64(5), int64(0)
	n, err := unix.CopyFileRange(int(src.Fd()), &offIn, int(dst.Fd()), &offOut, 500000, 0)
	if err != nil || n != 500000 {
		t.Fatalf("copy_file_range: %d %v", n, err)
	}
	src.Close()
	dst.Close()
	if _, err := unix.Open(e.mnt, unix.O_TMPFILE|unix.O_RDWR, 0o600); err == nil {
		t.Fatal("O_TMPFILE accepted: its later linkat would not be replicated")
	}
	if err := unix.Renameat2(unix.AT_FDCWD, e.p("src"), unix.AT_FDCWD, e.p("w"), unix.RENAME_WHITEOUT); err == nil {
		t.Fatal("RENAME_WHITEOUT accepted")
	}
	f, _ := os.Open(e.p("dst"))
	if _, err := unix.IoctlGetInt(int(f.Fd()), unix.FS_IOC_GETFLAGS); err == nil {
		if err := unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, 0x10 /* FS_IMMUTABLE_FL */); err == nil {
			t.Error("FS_IOC_SETFLAGS accepted")
		}
	}
	f.Close()
	e.check()
}

// TestConcurrentNamespace: creations (shared lock) race with renames and
// unlinks (exclusive) and writes, in shared and private directories.
func TestConcurrentNamespace(t *testing.T) {
	e := newEnv(t, Options{})
	os.Mkdir(e.p("common"), 0o755)
	const workers = 6
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			own := e.p("own" + string(rune('a'+w)))
			if err := os.Mkdir(own, 0o755); err != nil {
				errs <- err
				return
			}
			for i := range 150 {
				name := "f" + string(rune('a'+w)) + strings.Repeat("x", i%5) + time.Now().Format(".000000000")
				dir := own
				if i%2 == 0 {
					dir = e.p("common")
				}
				p := filepath.Join(dir, name)
				if err := os.WriteFile(p, bytes.Repeat([]byte{byte(i)}, 100+i), 0o644); err != nil {
					errs <- err
					return
				}
				switch i % 5 {
				case 1:
					if err := os.Rename(p, filepath.Join(e.p("common"), name+".r")); err != nil {
						errs <- err
						return
					}
				case 2:
					if err := os.Remove(p); err != nil {
						errs <- err
						return
					}
				case 3:
					if err := os.Mkdir(p+".d", 0o700); err != nil {
						errs <- err
						return
					}
					if err := os.Symlink(name, p+".d/l"); err != nil {
						errs <- err
						return
					}
					if err := os.Link(p, p+".d/h"); err != nil {
						errs <- err
						return
					}
				case 4:
					if err := os.Rename(own, own+".tmp"); err != nil {
						errs <- err
						return
					}
					if err := os.Rename(own+".tmp", own); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	e.check()
}

// TestKillSuid: a write or truncate by a user other than root clears
// set-user-ID and set-group-ID (on a group-executable file), on the mount
// and on the copy; a root writer keeps them; writes drop file capabilities.
func TestKillSuid(t *testing.T) {
	e := newEnv(t, Options{})
	mode := func(name string) uint32 {
		t.Helper()
		var st unix.Stat_t
		if err := unix.Stat(e.p(name), &st); err != nil {
			t.Fatal(err)
		}
		return st.Mode & 07777
	}
	for _, name := range []string{"w", "t", "o", "root", "sgid"} {
		mustWrite(t, e.p(name), []byte("x"), os.O_CREATE|os.O_WRONLY)
		if err := os.Chown(e.p(name), 1000, 1000); err != nil {
			t.Fatal(err)
		}
		m := uint32(0o6777)
		if name == "sgid" {
			m = 0o2767 // set-group-ID without group execute: mandatory locking mark, kept
		}
		if err := unix.Chmod(e.p(name), m); err != nil {
			t.Fatal(err)
		}
	}
	asUser(t, 1000, 1000, func() {
		if err := os.WriteFile(e.p("w"), []byte("y"), 0); err != nil {
			t.Error(err)
		}
		if err := unix.Truncate(e.p("t"), 0); err != nil {
			t.Error(err)
		}
		f, err := os.OpenFile(e.p("o"), os.O_WRONLY|os.O_TRUNC, 0)
		if err != nil {
			t.Error(err)
		} else {
			f.Close()
		}
		if f, err := os.OpenFile(e.p("sgid"), os.O_WRONLY, 0); err != nil {
			t.Error(err)
		} else {
			f.Write([]byte("z"))
			f.Close()
		}
	})
	mustWrite(t, e.p("root"), []byte("r"), os.O_WRONLY)
	for name, want := range map[string]uint32{"w": 0o777, "t": 0o777, "o": 0o777, "root": 0o6777, "sgid": 0o2767} {
		if got := mode(name); got != want {
			t.Errorf("%s: mode %o after the write, want %o", name, got, want)
		}
	}
	capv := []byte{0, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}
	mustWrite(t, e.p("caps"), []byte("x"), os.O_CREATE|os.O_WRONLY)
	if err := unix.Setxattr(e.p("caps"), "security.capability", capv, 0); err != nil {
		t.Fatal(err)
	}
	mustWrite(t, e.p("caps"), []byte("y"), os.O_WRONLY)
	if _, err := unix.Getxattr(e.p("caps"), "security.capability", make([]byte, 64)); !errors.Is(err, unix.ENODATA) {
		t.Errorf("file capabilities after a write: %v, want ENODATA", err)
	}
	e.check()
}
