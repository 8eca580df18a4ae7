package fs

import (
	"context"
	"errors"
	"fmt"
	"github.com/tandem-ha/tandem/internal/mountinfo"
	"log"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/tandem-ha/tandem/internal/replica/op"
)

// Replicator receives the mutations applied through the mount.
type Replicator interface {
	// Submit is called after the local apply succeeded, in the local order
	// for any one file and for the namespace, and returns the op's sequence
	// number. o.Data may be reused by the caller once Submit returns.
	Submit(o *op.Op) uint64
	// Wait blocks until the peer applied everything up to seq (durable:
	// and flushed it). It returns nil when running without a peer and is
	// bounded by the peer timeout.
	Wait(seq uint64, durable bool) error
}

// SyncMode says which calls wait for the peer.
type SyncMode int

const (
	// SyncFsync (default): fsync, fdatasync, O_SYNC/O_DSYNC writes wait until
	// the peer made the data durable; close after write waits until the peer
	// applied it.
	SyncFsync SyncMode = iota
	// SyncWrite: in addition every write waits until the peer applied it.
	SyncWrite
)

func (s SyncMode) String() string {
	switch s {
	case SyncFsync:
		return "fsync"
	case SyncWrite:
		return "write"
	}
	return fmt.Sprintf("syncmode(%d)", int(s))
}

// Options configure Mount.
type Options struct {
	// Replicator receives every mutation; nil drops them (local only).
	Replicator Replicator
	// Changes, when set, records every change before it is made (for the
	// incremental resynchronisation of a peer that comes back).
	Changes Changes
	Sync    SyncMode
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Debug logs every FUSE request at level Info (very verbose).
	Debug bool

	// writeback enables the kernel writeback cache (benchmarks only: it
	// hides O_DSYNC from the daemon and makes write(2) return before the
	// daemon sees the data, which breaks sync=write).
	writeback bool
}

// Timeouts for the kernel's dentry and attribute caches. Nothing but this
// mount changes the directory while it is mounted, so they can be long; the
// kernel invalidates what a request through the mount changes.
const (
	entryTimeout    = 5 * time.Second
	attrTimeout     = 5 * time.Second
	negativeTimeout = 5 * time.Second
	maxWrite        = 1 << 20
	maxBackground   = 64
	fsName          = "tandem"
)

// ErrLazyUnmount is wrapped by Unmount's error when the mount was busy and
// was detached instead (MNT_DETACH).
var ErrLazyUnmount = errors.New("mount busy: detached lazily")

// Mounted is a live mount.
type Mounted struct {
	dir    string
	rootFd int
	fsys   *fsys
	direct *directFS // nil with the writeback cache
	server *fuse.Server
	done   chan struct{}

	mu        sync.Mutex
	unmounted bool
}

// Mount mounts the replicating filesystem over dir itself. It first opens dir
// (the fd stays usable after the mount: see RootFd), cleans up a stale tandem
// mount left by a crashed agent, and refuses a dir that already carries a live
// tandem mount. It needs root (mount(2), allow_other, fchown as the caller).
func Mount(dir string, opts Options) (*Mounted, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("mount replicated directory %s: needs root (mount(2) and file ownership)", dir)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("mount replicated directory %s: %w", dir, err)
	}
	dir = filepath.Clean(abs)
	if err := CleanupStale(dir); err != nil {
		return nil, err
	}
	if live, err := isTandemMount(dir); err != nil {
		return nil, fmt.Errorf("mount replicated directory %s: %w", dir, err)
	} else if live {
		return nil, fmt.Errorf("mount replicated directory %s: already carries a tandem mount; unmount it first", dir)
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.Default()
	}
	logger = logger.With("dir", dir)

	rootFd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC|unix.O_NOFOLLOW, 0)
	if err != nil {
		return nil, fmt.Errorf("mount replicated directory %s: open: %w (it must be an existing directory, not a symlink)", dir, err)
	}
	f, err := newFsys(rootFd, opts, logger)
	if err != nil {
		unix.Close(rootFd)
		return nil, fmt.Errorf("mount replicated directory %s: %w", dir, err)
	}
	checkNofile(logger)

	var sfs unix.Statfs_t
	if err := unix.Fstatfs(rootFd, &sfs); err != nil {
		f.close()
		return nil, fmt.Errorf("mount replicated directory %s: statfs: %w", dir, err)
	}
	// Keep the underlying mount's suid/dev/exec policy (go-fuse's default
	// would add nosuid,nodev and change what the application sees).
	var mflags uintptr
	if sfs.Flags&unix.ST_NOSUID != 0 {
		mflags |= unix.MS_NOSUID
	}
	if sfs.Flags&unix.ST_NODEV != 0 {
		mflags |= unix.MS_NODEV
	}
	if sfs.Flags&unix.ST_NOEXEC != 0 {
		mflags |= unix.MS_NOEXEC
	}
	if mflags == 0 {
		mflags = unix.MS_MGC_VAL
	}

	et, at, nt := entryTimeout, attrTimeout, negativeTimeout
	gopts := &gofs.Options{
		EntryTimeout:    &et,
		AttrTimeout:     &at,
		NegativeTimeout: &nt,
		NullPermissions: true,
		RootStableAttr:  &gofs.StableAttr{Ino: f.root.ino, Gen: f.root.gen},
		Logger:          log.New(slogWriter{logger, slog.LevelWarn}, "", 0),
	}
	gopts.MountOptions = fuse.MountOptions{
		AllowOther:        true,
		Options:           []string{"default_permissions"},
		FsName:            fsName,
		Name:              fsName,
		MaxWrite:          maxWrite,
		MaxBackground:     maxBackground,
		DirectMountStrict: true,
		DirectMountFlags:  mflags,
		Debug:             opts.Debug,
		Logger:            log.New(slogWriter{logger, slog.LevelInfo}, "", 0), // only used with Debug
	}
	gopts.MountOptions.ExtraCapabilities |= capHandleKillprivV2 | fuse.CAP_DIRECT_IO_ALLOW_MMAP
	if opts.writeback {
		gopts.MountOptions.ExtraCapabilities |= fuse.CAP_WRITEBACK_CACHE
	}
	root := &node{f: f, m: f.root}
	var rawFS fuse.RawFileSystem = gofs.NewNodeFS(root, gopts)
	var direct *directFS
	if !opts.writeback {
		direct = newDirectFS(rawFS)
		rawFS = direct
	}
	// go-fuse opens /dev/fuse without O_CLOEXEC when it mounts directly. A
	// child process that inherits it (a module script) would keep the
	// connection alive after an agent crash: the mount would hang instead of
	// failing with ENOTCONN. Hold off fork/exec until it is close-on-exec.
	syscall.ForkLock.RLock()
	server, err := fuse.NewServer(rawFS, dir, &gopts.MountOptions)
	if err == nil {
		closeOnExecFuse()
	}
	syscall.ForkLock.RUnlock()
	if err != nil {
		f.close()
		return nil, fmt.Errorf("mount replicated directory %s: %w", dir, err)
	}
	m := &Mounted{dir: dir, rootFd: rootFd, fsys: f, direct: direct, server: server, done: make(chan struct{})}
	go func() {
		server.Serve()
		// The kernel connection is gone: no request can reach a meta fd.
		f.close()
		close(m.done)
	}()
	if err := server.WaitMount(); err != nil {
		_ = server.Unmount()
		<-m.done
		return nil, fmt.Errorf("mount replicated directory %s: %w", dir, err)
	}
	logger.Info("replicated directory mounted", "sync", opts.Sync.String(), "max_write", maxWrite)
	return m, nil
}

// capHandleKillprivV2 is FUSE_HANDLE_KILLPRIV_V2 (protocol 7.33; go-fuse
// has no name for it). Without it the kernel asks for security.capability
// (GETXATTR) before every write: one more round trip per write(2). With it
// the daemon clears set-user-ID and set-group-ID itself (killSuid): the
// backing filesystem removes file capabilities on any write, here and on
// the secondary, but keeps the set-ID bits for a root writer (the agent).
const capHandleKillprivV2 = 1 << 28

// Dir is the mount point.
func (m *Mounted) Dir() string { return m.dir }

// RootFd is the replicated directory itself, opened (O_RDONLY|O_DIRECTORY)
// before the mount: openat and friends relative to it reach the real files,
// not the mount. It stays valid until Done is closed; do not close it.
func (m *Mounted) RootFd() int { return m.rootFd }

// Done is closed when the FUSE server stopped (after Unmount, also after a
// lazy one once the last open file is closed).
func (m *Mounted) Done() <-chan struct{} { return m.done }

// Unmount unmounts the filesystem. When files are still open (EBUSY) it
// detaches the mount instead (MNT_DETACH): new opens see the real directory
// at once, the processes holding files open keep using them through the
// daemon (still replicated) until they close them, and then the server stops
// and Done is closed. That case returns an error wrapping ErrLazyUnmount.
func (m *Mounted) Unmount() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.unmounted {
		return nil
	}
	// From now on no change goes through: once lazily detached, the mount
	// would still serve the files left open, and nothing replicates them.
	// Wait for the changes under way (they hold the namespace lock).
	m.fsys.fenced.Store(true)
	m.fsys.ns.Lock()
	m.fsys.fenced.Store(true) // under the lock: no change was under way
	m.fsys.ns.Unlock()
	err := unix.Unmount(m.dir, 0)
	if err == nil {
		m.unmounted = true
		<-m.done
		m.fsys.log.Info("replicated directory unmounted")
		return nil
	}
	if !errors.Is(err, unix.EBUSY) {
		return fmt.Errorf("unmount replicated directory %s: %w", m.dir, err)
	}
	if derr := unix.Unmount(m.dir, unix.MNT_DETACH); derr != nil {
		return fmt.Errorf("unmount replicated directory %s: busy (%v), and lazy unmount failed: %w", m.dir, err, derr)
	}
	m.unmounted = true
	m.fsys.log.Warn("replicated directory busy: detached lazily; files still open there are read-only until closed")
	return fmt.Errorf("unmount replicated directory %s: %w: files still open there can be read, not changed (EROFS), until closed", m.dir, ErrLazyUnmount)
}

// CleanupStale detaches a tandem FUSE mount left at dir by a crashed agent
// (the mount answers ENOTCONN). It does nothing when dir is not such a mount.
func CleanupStale(dir string) error {
	for range 8 { // mounts may be stacked; bounded
		// statfs always reaches the daemon (stat may be answered from the
		// kernel's attribute cache).
		var sfs unix.Statfs_t
		err := unix.Statfs(dir, &sfs)
		if !errors.Is(err, unix.ENOTCONN) {
			return nil
		}
		live, merr := isTandemMount(dir)
		if merr != nil {
			return fmt.Errorf("clean up stale mount at %s: %w", dir, merr)
		}
		if !live {
			return fmt.Errorf("clean up stale mount at %s: not connected, but not a tandem mount; unmount it by hand (umount -l %s)", dir, dir)
		}
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			return fmt.Errorf("clean up stale tandem mount at %s: umount -l: %w", dir, err)
		}
		slog.Warn("detached stale tandem mount left by a crashed agent", "dir", dir)
	}
	return fmt.Errorf("clean up stale mount at %s: still not connected after 8 detaches", dir)
}

// isTandemMount reports whether the top mount at dir is a tandem FUSE mount.
func isTandemMount(dir string) (bool, error) {
	mounts, err := mountinfo.Read()
	if err != nil {
		return false, err
	}
	top, ok := mountinfo.Top(mounts, dir)
	return ok && top.FSType == "fuse."+fsName, nil
}

// checkNofile warns when the fd limit is low: every inode the kernel holds
// a reference to costs one O_PATH fd.
func checkNofile(logger *slog.Logger) {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return
	}
	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		_ = unix.Setrlimit(unix.RLIMIT_NOFILE, &rl)
	}
	if rl.Cur < 65536 {
		logger.Warn("low open file limit: each inode cached by the kernel holds one fd; raise LimitNOFILE", "nofile", rl.Cur)
	}
}

// closeOnExecFuse marks every /dev/fuse fd of the process close-on-exec.
func closeOnExecFuse() {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if target, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && target == "/dev/fuse" {
			unix.CloseOnExec(fd)
		}
	}
}

// slogWriter adapts go-fuse's *log.Logger output to slog.
type slogWriter struct {
	l     *slog.Logger
	level slog.Level
}

func (w slogWriter) Write(p []byte) (int, error) {
	w.l.Log(context.Background(), w.level, "fuse: "+strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
