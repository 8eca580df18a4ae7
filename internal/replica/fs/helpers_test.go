package fs

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tandem-ha/tandem/internal/replica/op"
)

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (FUSE mount)")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("needs /dev/fuse")
	}
}

type waitCall struct {
	seq     uint64
	durable bool
}

// recorder is a Replicator that records ops (deep copies) and waits.
type recorder struct {
	mu    sync.Mutex
	ops   []op.Op
	seq   uint64
	waits []waitCall
	delay time.Duration // Wait sleeps this long
	// reset moves these marks: snapshot shows what came after them, the
	// replay still sees every op.
	base, wbase int
}

func (r *recorder) Submit(o *op.Op) uint64 {
	c := *o
	c.Data = append([]byte(nil), o.Data...)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seq++
	r.ops = append(r.ops, c)
	return r.seq
}

func (r *recorder) Wait(seq uint64, durable bool) error {
	r.mu.Lock()
	r.waits = append(r.waits, waitCall{seq, durable})
	d := r.delay
	r.mu.Unlock()
	if d > 0 {
		time.Sleep(d)
	}
	return nil
}

func (r *recorder) lastSeq() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.seq
}

func (r *recorder) snapshot() ([]op.Op, []waitCall) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]op.Op(nil), r.ops[r.base:]...), append([]waitCall(nil), r.waits[r.wbase:]...)
}

func (r *recorder) all() []op.Op {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]op.Op(nil), r.ops...)
}

func (r *recorder) reset() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.base, r.wbase = len(r.ops), len(r.waits)
}

// kinds lists the op kinds recorded since the last reset, for messages.
func (r *recorder) kinds() string {
	ops, _ := r.snapshot()
	var s []string
	for _, o := range ops {
		s = append(s, o.String())
	}
	return strings.Join(s, ", ")
}

// env is one mount over a fresh directory, plus a copy directory that the
// recorded ops are replayed onto.
type env struct {
	t    testing.TB
	m    *Mounted
	mnt  string // the mount point (the replicated directory)
	copy string
	rec  *recorder
}

func newEnv(t testing.TB, opts Options) *env {
	t.Helper()
	requireRoot(t)
	base := t.TempDir()
	// Other users (asUser) must reach the mount.
	os.Chmod(filepath.Dir(base), 0o755)
	os.Chmod(base, 0o755)
	mnt := filepath.Join(base, "data")
	cp := filepath.Join(base, "copy")
	for _, d := range []string{mnt, cp} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, 0o755); err != nil { // no umask surprise
			t.Fatal(err)
		}
	}
	rec := &recorder{}
	if opts.Replicator == nil {
		opts.Replicator = rec
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	m, err := Mount(mnt, opts)
	if err != nil {
		t.Fatalf("Mount: %v", err)
	}
	unwatch := watchMount(mnt)
	e := &env{t: t, m: m, mnt: mnt, copy: cp, rec: rec}
	t.Cleanup(func() {
		if err := m.Unmount(); err != nil {
			t.Errorf("Unmount: %v", err)
			_ = unix.Unmount(mnt, unix.MNT_DETACH)
		}
		select {
		case <-m.Done():
			unwatch()
		case <-time.After(10 * time.Second):
			t.Errorf("server did not stop")
		}
	})
	return e
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

func (e *env) p(rel string) string { return filepath.Join(e.mnt, rel) }

// replay applies the recorded ops onto the copy directory.
func (e *env) replay() {
	e.t.Helper()
	ops := e.rec.all()
	root, err := unix.Open(e.copy, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		e.t.Fatal(err)
	}
	defer unix.Close(root)
	for i := range ops {
		if err := ops[i].Validate(); err != nil {
			e.t.Fatalf("op %d %s: invalid: %v", i, ops[i].String(), err)
		}
		if err := applyOp(root, &ops[i]); err != nil {
			e.t.Fatalf("replay op %d %s: %v", i, ops[i].String(), err)
		}
	}
}

// check replays the ops and compares the real tree with the copy.
func (e *env) check() {
	e.t.Helper()
	e.replay()
	cfd, err := unix.Open(e.copy, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		e.t.Fatal(err)
	}
	defer unix.Close(cfd)
	real := scanTree(e.t, e.m.RootFd())
	cp := scanTree(e.t, cfd)
	compareTrees(e.t, real, cp)
}

// walkParent opens the directory holding path's last element, component by
// component (paths may exceed PATH_MAX). The returned fd must be closed.
func walkParent(root int, path string) (int, string, error) {
	dfd, err := unix.Dup(root)
	if err != nil {
		return -1, "", err
	}
	if path == "" {
		return dfd, ".", nil
	}
	parts := strings.Split(path, "/")
	for _, c := range parts[:len(parts)-1] {
		nfd, err := unix.Openat(dfd, c, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		unix.Close(dfd)
		if err != nil {
			return -1, "", fmt.Errorf("walk %q at %q: %w", path, c, err)
		}
		dfd = nfd
	}
	return dfd, parts[len(parts)-1], nil
}

func openFile(root int, path string, flags int, mode uint32) (int, error) {
	d, b, err := walkParent(root, path)
	if err != nil {
		return -1, err
	}
	defer unix.Close(d)
	return unix.Openat(d, b, flags|unix.O_NOFOLLOW|unix.O_CLOEXEC, mode)
}

// applyOp is a minimal applier, the test's model of the secondary.
func applyOp(root int, o *op.Op) error {
	switch o.Kind {
	case op.Write:
		fd, err := openFile(root, o.Path, unix.O_WRONLY, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if _, err = unix.Pwrite(fd, o.Data, o.Off); err != nil || !o.Stamped() {
			return err
		}
		return unix.UtimesNanoAt(fd, "", []unix.Timespec{{Sec: o.Atime.Sec, Nsec: o.Atime.Nsec}, {Sec: o.Mtime.Sec, Nsec: o.Mtime.Nsec}}, unix.AT_EMPTY_PATH)
	case op.Truncate:
		fd, err := openFile(root, o.Path, unix.O_WRONLY, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Ftruncate(fd, o.Off)
	case op.Fallocate:
		fd, err := openFile(root, o.Path, unix.O_WRONLY, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Fallocate(fd, o.Flags, o.Off, o.Len)
	case op.Fsync:
		fd, err := openFile(root, o.Path, unix.O_RDONLY, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		return unix.Fsync(fd)
	case op.SyncAll:
		return unix.Syncfs(root)
	case op.Create:
		fd, err := openFile(root, o.Path, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := unix.Fchown(fd, int(o.Uid), int(o.Gid)); err != nil {
			return err
		}
		return unix.Fchmod(fd, o.Mode)
	}
	d, b, err := walkParent(root, o.Path)
	if err != nil {
		return err
	}
	defer unix.Close(d)
	switch o.Kind {
	case op.Mkdir:
		if err := unix.Mkdirat(d, b, 0o700); err != nil {
			return err
		}
		if err := unix.Fchownat(d, b, int(o.Uid), int(o.Gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
		return unix.Fchmodat(d, b, o.Mode, 0)
	case op.Mknod:
		if err := unix.Mknodat(d, b, o.Mode&unix.S_IFMT|0o600, int(o.Rdev)); err != nil {
			return err
		}
		if err := unix.Fchownat(d, b, int(o.Uid), int(o.Gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return err
		}
		return unix.Fchmodat(d, b, o.Mode&07777, 0)
	case op.Symlink:
		if err := unix.Symlinkat(string(o.Data), d, b); err != nil {
			return err
		}
		return unix.Fchownat(d, b, int(o.Uid), int(o.Gid), unix.AT_SYMLINK_NOFOLLOW)
	case op.Unlink:
		return unix.Unlinkat(d, b, 0)
	case op.Rmdir:
		return unix.Unlinkat(d, b, unix.AT_REMOVEDIR)
	case op.Rename, op.Link:
		d2, b2, err := walkParent(root, o.Path2)
		if err != nil {
			return err
		}
		defer unix.Close(d2)
		if o.Kind == op.Link {
			return unix.Linkat(d, b, d2, b2, 0)
		}
		return unix.Renameat2(d, b, d2, b2, uint(o.Flags))
	case op.Chmod:
		return unix.Fchmodat(d, b, o.Mode, 0)
	case op.Chown:
		return unix.Fchownat(d, b, int(o.Uid), int(o.Gid), unix.AT_SYMLINK_NOFOLLOW)
	case op.Utimens:
		ts := []unix.Timespec{{Sec: o.Atime.Sec, Nsec: o.Atime.Nsec}, {Sec: o.Mtime.Sec, Nsec: o.Mtime.Nsec}}
		return unix.UtimesNanoAt(d, b, ts, unix.AT_SYMLINK_NOFOLLOW)
	case op.SetXattr:
		return unix.Lsetxattr(procPath(d)+"/"+b, o.Name, o.Data, int(o.Flags))
	case op.RemoveXattr:
		return unix.Lremovexattr(procPath(d)+"/"+b, o.Name)
	}
	return fmt.Errorf("unknown op %v", o.Kind)
}

// entry is what the tree comparison looks at.
type entry struct {
	mode     uint32
	uid, gid uint32
	size     int64
	nlink    uint64
	sum      [32]byte
	target   string
	xattrs   string
	mtime    unix.Timespec
}

func (e entry) String() string {
	return fmt.Sprintf("mode=%o uid=%d gid=%d size=%d nlink=%d sum=%x target=%q xattrs=%q mtime=%d.%09d",
		e.mode, e.uid, e.gid, e.size, e.nlink, e.sum[:4], e.target, e.xattrs, e.mtime.Sec, e.mtime.Nsec)
}

// scanTree walks the tree under dirfd with fds (no path length limit).
func scanTree(t testing.TB, dirfd int) map[string]entry {
	t.Helper()
	out := map[string]entry{}
	var walk func(fd int, rel string)
	walk = func(fd int, rel string) {
		d, err := unix.Openat(fd, ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatalf("scan %q: %v", rel, err)
		}
		f := os.NewFile(uintptr(d), rel)
		names, err := f.Readdirnames(-1)
		f.Close()
		if err != nil {
			t.Fatalf("scan %q: %v", rel, err)
		}
		sort.Strings(names)
		for _, name := range names {
			p := childPath(rel, name)
			var st unix.Stat_t
			if err := unix.Fstatat(fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
				t.Fatalf("scan %q: %v", p, err)
			}
			e := entry{mode: st.Mode, uid: st.Uid, gid: st.Gid, nlink: st.Nlink}
			pp := procPath(fd) + "/" + name
			e.xattrs = xattrsOf(pp)
			switch st.Mode & unix.S_IFMT {
			case unix.S_IFREG:
				e.size = st.Size
				e.mtime = st.Mtim
				cfd, err := unix.Openat(fd, name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
				if err != nil {
					t.Fatalf("scan %q: %v", p, err)
				}
				h := sha256.New()
				cf := os.NewFile(uintptr(cfd), p)
				_, err = io.Copy(h, cf)
				cf.Close()
				if err != nil {
					t.Fatalf("scan %q: %v", p, err)
				}
				copy(e.sum[:], h.Sum(nil))
			case unix.S_IFLNK:
				buf := make([]byte, 8192)
				n, err := unix.Readlinkat(fd, name, buf)
				if err != nil {
					t.Fatalf("scan %q: %v", p, err)
				}
				e.target = string(buf[:n])
			case unix.S_IFDIR:
				cfd, err := unix.Openat(fd, name, unix.O_PATH|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
				if err != nil {
					t.Fatalf("scan %q: %v", p, err)
				}
				walk(cfd, p)
				unix.Close(cfd)
			}
			out[p] = e
		}
	}
	walk(dirfd, "")
	return out
}

func xattrsOf(p string) string {
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil || n <= 0 {
		return ""
	}
	var parts []string
	for _, name := range strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00") {
		if !strings.HasPrefix(name, "user.") {
			continue
		}
		v := make([]byte, 64<<10)
		vn, err := unix.Lgetxattr(p, name, v)
		if err != nil {
			continue
		}
		parts = append(parts, name+"="+string(v[:vn]))
	}
	sort.Strings(parts)
	return strings.Join(parts, ";")
}

func compareTrees(t testing.TB, real, cp map[string]entry) {
	t.Helper()
	var diffs []string
	for p, a := range real {
		b, ok := cp[p]
		if !ok {
			diffs = append(diffs, fmt.Sprintf("%s: missing in the replica (%v)", p, a))
			continue
		}
		if a != b {
			diffs = append(diffs, fmt.Sprintf("%s:\n  real    %v\n  replica %v", p, a, b))
		}
	}
	for p, b := range cp {
		if _, ok := real[p]; !ok {
			diffs = append(diffs, fmt.Sprintf("%s: only in the replica (%v)", p, b))
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 20 {
		diffs = append(diffs[:20], fmt.Sprintf("... and %d more", len(diffs)-20))
	}
	if len(diffs) > 0 {
		t.Fatalf("trees differ (%d entries):\n%s", len(real), strings.Join(diffs, "\n"))
	}
}

// readReal reads a file of the real directory through RootFd.
func (e *env) readReal(rel string) []byte {
	e.t.Helper()
	fd, err := openFile(e.m.RootFd(), rel, unix.O_RDONLY, 0)
	if err != nil {
		e.t.Fatalf("open real %s: %v", rel, err)
	}
	f := os.NewFile(uintptr(fd), rel)
	defer f.Close()
	b, err := io.ReadAll(f)
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

func mustWrite(t testing.TB, path string, data []byte, flags int) {
	t.Helper()
	f, err := os.OpenFile(path, flags, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

var _ = bytes.Equal
