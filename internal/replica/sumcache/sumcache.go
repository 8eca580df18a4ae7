// Package sumcache remembers, per inode, the content hash and the
// extended-attribute digest a compare computed, so that the next full
// compare of an unchanged file costs one stat instead of an attribute
// list and a read.
//
// # Why it is safe
//
// The kernel moves an inode's ctime on every change made through it:
// data (write, truncate, fallocate), owner, mode, times, attributes, and
// every link or unlink of one of its names. (Stores into a shared mapping
// move it only when a clean page is first written; the replicated copies
// are changed by the FUSE layer's and the applier's system calls, never
// through a mapping of the backing files.) So an inode whose device,
// number, size and ctime are those of an entry has the content and
// attributes the entry was computed from (an entry keeps a 62-bit hash
// of the device, size and ctime), with two exceptions the cache guards
// against:
//
//   - Timestamps are coarse (a scheduler tick, or a second on some
//     filesystems): a change in the same tick as the last one leaves the
//     ctime as it was. An entry is therefore recorded only for an inode
//     whose ctime is older than Margin before the stat that preceded the
//     read: any later change falls in a later tick, and moves the ctime.
//   - The clock may be stepped back, and a change could then land on an
//     old ctime. Every use compares the wall clock's offset from the
//     boot clock with the one the cache started with, and forgets every
//     entry when it moved by more than Margin.
//
// Only filesystems known to keep stable inode numbers and to move the
// ctime themselves use it (Trusted). The cache is also forgotten across
// reboots (Load checks the boot id): after a power cut a file's data may
// have reached the disk without the inode update that moved its ctime;
// and across mounts of the filesystem (Load checks the mount's id): a
// repair in between may have changed what it found. What the cache cannot see is a
// change that bypasses the kernel's file operations: the disk's own
// corruption, or writes to the block device under the filesystem. A
// compare that must read everything runs without a cache.
package sumcache

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zeebo/xxh3"
	"golang.org/x/sys/unix"
)

// Margin is how old a ctime must be, at the stat before a read, for the
// result to be recorded: above the coarsest timestamp granularity of
// the filesystems Linux supports for this (ext4 with small inodes: 1 s).
const Margin = 3 * time.Second

// DefaultMax bounds the entries of one cache: 32 bytes each, in a table
// at most 80 % full (40 MiB for a million).
const DefaultMax = 1 << 20

const (
	hasSum = 1 << iota
	hasXattrs
	flagBits = hasSum | hasXattrs
)

// entry is what the cache knows of one inode number.
type entry struct {
	// stamp: the 62 high bits of a hash of the inode's device, size and
	// ctime (stampHash), the 2 low bits which of sum and xdig are known.
	// Two states of one inode number share a stamp with a chance of
	// 2^-62, as small as two contents sharing their 64-bit hash.
	stamp uint64
	sum   uint64 // xxh3 of the whole content (hasSum)
	xdig  uint64 // digest of the attributes (hasXattrs)
}

func stampHash(s Stamp) uint64 {
	var b [24]byte
	binary.LittleEndian.PutUint64(b[0:], s.Dev)
	binary.LittleEndian.PutUint64(b[8:], uint64(s.Size))
	binary.LittleEndian.PutUint64(b[16:], uint64(s.Ctime))
	return xxh3.Hash(b[:]) &^ flagBits
}

// Cache is safe for concurrent use.
type Cache struct {
	mu     sync.Mutex
	t      *table // by inode number
	max    int
	margin int64 // Margin, ns (SetMargin)
	offset int64 // wall clock minus boot clock when the entries began, ns

	sumHits, xattrHits, misses, drops, evicted atomic.Int64
}

// New returns an empty cache of at most max entries (DefaultMax if ≤ 0).
func New(max int) *Cache {
	if max <= 0 {
		max = DefaultMax
	}
	c := &Cache{t: newTable(max), max: max, margin: int64(Margin), offset: clockOffset()}
	runtime.AddCleanup(c, (*table).reset, c.t)
	return c
}

// SetMargin replaces Margin for this cache: for tests, whose files are
// all new. It must exceed the filesystem's timestamp granularity (a
// scheduler tick on ext4, xfs and tmpfs: at most 10 ms).
func (c *Cache) SetMargin(d time.Duration) { c.margin = int64(d) }

// clockOffset is the wall clock minus the boot clock: constant unless
// the wall clock is stepped.
func clockOffset() int64 {
	var rt, bt unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_REALTIME, &rt)
	_ = unix.ClockGettime(unix.CLOCK_BOOTTIME, &bt)
	return rt.Nano() - bt.Nano()
}

// Stamp is what identifies one state of an inode.
type Stamp struct {
	Dev, Ino uint64
	Size     int64
	Ctime    int64 // ns since the epoch
}

// StampOf is st's stamp.
func StampOf(st *unix.Stat_t) Stamp {
	return Stamp{Dev: st.Dev, Ino: st.Ino, Size: st.Size, Ctime: st.Ctim.Nano()}
}

// Trusted reports whether the filesystem of the open directory dfd keeps
// stable inode numbers and moves the ctime on every change, as the cache
// needs: ext2/3/4, xfs, btrfs, tmpfs, f2fs, zfs, bcachefs. Others (vfat
// numbers its inodes anew at each mount; network and FUSE filesystems
// take their times from elsewhere) are read every time.
func Trusted(dfd int) bool {
	var fs unix.Statfs_t
	if unix.Fstatfs(dfd, &fs) != nil {
		return false
	}
	switch uint64(fs.Type) {
	case unix.EXT4_SUPER_MAGIC, unix.XFS_SUPER_MAGIC, unix.BTRFS_SUPER_MAGIC,
		unix.TMPFS_MAGIC, unix.F2FS_SUPER_MAGIC, zfsMagic, bcachefsMagic:
		return true
	}
	return false
}

const (
	zfsMagic      = 0x2fc12fc1
	bcachefsMagic = 0xca451a4e
)

// For is c if the filesystem of the open directory dfd is Trusted, else
// nil (no cache): what a listing of dfd uses. It also runs Check.
func (c *Cache) For(dfd int) *Cache {
	if c == nil || !Trusted(dfd) {
		return nil
	}
	c.Check()
	return c
}

// Check forgets every entry if the wall clock was stepped by more than
// Margin since they were recorded. Callers call it before a batch of
// lookups (a directory's listing).
func (c *Cache) Check() {
	if c == nil {
		return
	}
	off := clockOffset()
	c.mu.Lock()
	defer c.mu.Unlock()
	if d := off - c.offset; d > int64(Margin) || d < -int64(Margin) {
		if c.t.n > 0 {
			c.drops.Add(1)
		}
		c.t.reset()
		c.offset = off
	}
}

// Known is what a cache knows of one state of an inode.
type Known struct {
	Sum, Xattrs       uint64
	HasSum, HasXattrs bool
}

// Get looks s up once: its attribute digest, and its content hash when
// wantSum (a small regular file). Each part wanted counts as a hit or a
// miss.
func (c *Cache) Get(s Stamp, wantSum bool) Known {
	want := uint64(hasXattrs)
	if wantSum {
		want |= hasSum
	}
	return c.lookup(s, want)
}

func (c *Cache) lookup(s Stamp, want uint64) Known {
	if c == nil {
		return Known{}
	}
	h := stampHash(s)
	c.mu.Lock()
	e, ok := c.t.get(s.Ino)
	c.mu.Unlock()
	var k Known
	if ok && e.stamp&^flagBits == h {
		k = Known{Sum: e.sum, Xattrs: e.xdig, HasSum: e.stamp&hasSum != 0 && want&hasSum != 0, HasXattrs: e.stamp&hasXattrs != 0 && want&hasXattrs != 0}
	}
	c.count(want&hasSum != 0, k.HasSum, &c.sumHits)
	c.count(want&hasXattrs != 0, k.HasXattrs, &c.xattrHits)
	return k
}

func (c *Cache) count(wanted, has bool, hits *atomic.Int64) {
	switch {
	case !wanted:
	case has:
		hits.Add(1)
	default:
		c.misses.Add(1)
	}
}

// Now is the time to pass to PutSum and PutXattrs: taken before the
// stat whose result they record.
func Now() int64 { return time.Now().UnixNano() }

func (c *Cache) put(s Stamp, before int64, flag uint64, v uint64) {
	if c == nil || s.Ino == 0 || s.Ctime > before-c.margin {
		// Changed too recently (a change in the same tick would not
		// show), or no stamp.
		return
	}
	h := stampHash(s)
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.t.get(s.Ino)
	if !ok || e.stamp&^flagBits != h {
		if !ok && c.t.n >= c.max {
			// Full: one entry out, chosen at random. A tree larger than
			// the cache keeps a share of its entries; those of files
			// deleted since leave in time.
			c.t.evictOne()
			c.evicted.Add(1)
		}
		e = entry{stamp: h}
	}
	e.stamp |= flag
	if flag == hasSum {
		e.sum = v
	} else {
		e.xdig = v
	}
	c.t.set(s.Ino, e) // no room (no memory to grow): not remembered
}

// PutSum records sum, the hash of the whole content of the regular file
// whose stat gave s, read after that stat. before is Now() taken before
// the stat.
func (c *Cache) PutSum(s Stamp, before int64, sum uint64) {
	c.put(s, before, hasSum, sum)
}

// PutXattrs records dig, the attribute digest of the inode whose stat
// gave s, read after that stat. before is Now() taken before the stat.
func (c *Cache) PutXattrs(s Stamp, before int64, dig uint64) {
	c.put(s, before, hasXattrs, dig)
}

// Stats are a cache's counters.
type Stats struct {
	Entries int
	// SumHits: contents not read; XattrHits: attribute lists not read;
	// Misses: lookups that found nothing usable.
	SumHits, XattrHits, Misses int64
	Resets                     int64 // times every entry was forgotten (a clock step)
	Evicted                    int64 // entries dropped to make room
}

// Hits is every lookup answered.
func (s Stats) Hits() int64 { return s.SumHits + s.XattrHits }

func (c *Cache) Stats() Stats {
	if c == nil {
		return Stats{}
	}
	c.mu.Lock()
	n := c.t.n
	c.mu.Unlock()
	return Stats{Entries: n, SumHits: c.sumHits.Load(), XattrHits: c.xattrHits.Load(), Misses: c.misses.Load(), Resets: c.drops.Load(), Evicted: c.evicted.Load()}
}

// Reset forgets every entry.
func (c *Cache) Reset() {
	c.mu.Lock()
	c.t.reset()
	c.mu.Unlock()
}

const (
	magic     = "tandem-sums-3\n"
	entrySize = 8 + 8 + 8 + 8
)

// bootIDFile names this boot of the kernel (a variable for tests).
var bootIDFile = "/proc/sys/kernel/random/boot_id"

// bootID names this boot of the kernel.
func bootID() (string, error) {
	b, err := os.ReadFile(bootIDFile)
	if err != nil {
		return "", fmt.Errorf("read the boot id: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// mountID identifies the mount the open directory dirFd lies on: a new
// one each time a filesystem is mounted (after a repair, say). 0 when
// the kernel does not tell (before 5.8).
func mountID(dirFd int) uint64 {
	var stx unix.Statx_t
	if unix.Statx(dirFd, "", unix.AT_EMPTY_PATH, unix.STATX_MNT_ID, &stx) != nil || stx.Mask&unix.STATX_MNT_ID == 0 {
		return 0
	}
	return stx.Mnt_id
}

// Save writes the entries to path (atomically: a temporary file renamed
// over it), with this boot's id, the clock offset and the mount of
// dirFd (the cached tree's root), so that Load refuses them after a
// reboot, a clock step or a new mount of the filesystem.
func (c *Cache) Save(path string, dirFd int) error {
	id, err := bootID()
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".sums-*")
	if err != nil {
		return fmt.Errorf("save the compare's hashes: %w", err)
	}
	defer os.Remove(tmp.Name())
	h := xxh3.New()
	w := bufio.NewWriterSize(io.MultiWriter(tmp, h), 1<<20)
	c.mu.Lock()
	var head []byte
	head = append(head, magic...)
	head = binary.AppendUvarint(head, uint64(len(id)))
	head = append(head, id...)
	head = binary.LittleEndian.AppendUint64(head, uint64(c.offset))
	head = binary.LittleEndian.AppendUint64(head, mountID(dirFd))
	head = binary.LittleEndian.AppendUint64(head, uint64(c.t.n))
	w.Write(head)
	var rec [entrySize]byte
	c.t.each(func(ino uint64, e entry) {
		binary.LittleEndian.PutUint64(rec[0:], ino)
		binary.LittleEndian.PutUint64(rec[8:], e.stamp)
		binary.LittleEndian.PutUint64(rec[16:], e.sum)
		binary.LittleEndian.PutUint64(rec[24:], e.xdig)
		w.Write(rec[:])
	})
	c.mu.Unlock()
	err = w.Flush()
	if err == nil {
		_, err = tmp.Write(binary.LittleEndian.AppendUint64(nil, h.Sum64()))
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("save the compare's hashes to %s: %w", path, err)
	}
	return nil
}

// ErrStale: the saved entries belong to another boot or another mount of
// the filesystem, or the clock was stepped since; they were not loaded.
var ErrStale = errors.New("saved before a reboot, a new mount or a clock step")

// Load reads a cache Save wrote for the tree whose root is open as dirFd.
// A missing file gives an empty cache and no error; a stale or damaged
// one, an empty cache and the reason.
func Load(path string, dirFd, max int) (*Cache, error) {
	c := New(max)
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return c, fmt.Errorf("load the compare's hashes: %w", err)
	}
	defer f.Close()
	id, err := bootID()
	if err != nil {
		return c, err
	}
	bad := func(what string) (*Cache, error) {
		c.Reset()
		return c, fmt.Errorf("load the compare's hashes from %s: %s; they will be computed again", path, what)
	}
	br := bufio.NewReaderSize(f, 1<<20)
	r := &hashReader{r: br, h: xxh3.New()}
	head := make([]byte, len(magic))
	if _, err := io.ReadFull(r, head); err != nil || string(head) != magic {
		return bad("not a file of saved hashes")
	}
	n, err := binary.ReadUvarint(r)
	if err != nil || n > 64 {
		return bad("damaged (boot id)")
	}
	saved := make([]byte, n)
	var fixed [24]byte
	if _, err := io.ReadFull(r, saved); err != nil {
		return bad("damaged (boot id)")
	}
	if _, err := io.ReadFull(r, fixed[:]); err != nil {
		return bad("damaged (header)")
	}
	offset := int64(binary.LittleEndian.Uint64(fixed[:8]))
	mount := binary.LittleEndian.Uint64(fixed[8:])
	count := binary.LittleEndian.Uint64(fixed[16:])
	if string(saved) != id {
		return c, fmt.Errorf("load the compare's hashes from %s: %w (another boot); they will be computed again", path, ErrStale)
	}
	if d := c.offset - offset; d > int64(Margin) || d < -int64(Margin) {
		return c, fmt.Errorf("load the compare's hashes from %s: %w (the clock moved by %v); they will be computed again", path, ErrStale, time.Duration(d))
	}
	if now := mountID(dirFd); mount != now {
		return c, fmt.Errorf("load the compare's hashes from %s: %w (the filesystem was mounted again: mount %d, now %d); they will be computed again", path, ErrStale, mount, now)
	}
	var rec [entrySize]byte
	for i := uint64(0); i < count; i++ {
		if _, err := io.ReadFull(r, rec[:]); err != nil {
			return bad("damaged (length)")
		}
		ino := binary.LittleEndian.Uint64(rec[0:])
		if c.t.n >= c.max || ino == 0 {
			continue
		}
		c.t.set(ino, entry{
			stamp: binary.LittleEndian.Uint64(rec[8:]),
			sum:   binary.LittleEndian.Uint64(rec[16:]),
			xdig:  binary.LittleEndian.Uint64(rec[24:]),
		})
	}
	var sum [8]byte
	if _, err := io.ReadFull(br, sum[:]); err != nil || binary.LittleEndian.Uint64(sum[:]) != r.h.Sum64() {
		return bad("damaged (checksum)")
	}
	if _, err := br.ReadByte(); err != io.EOF {
		return bad("damaged (trailing bytes)")
	}
	return c, nil
}

// hashReader hashes what is read through it.
type hashReader struct {
	r *bufio.Reader
	h *xxh3.Hasher
}

func (h *hashReader) Read(p []byte) (int, error) {
	n, err := h.r.Read(p)
	h.h.Write(p[:n])
	return n, err
}

func (h *hashReader) ReadByte() (byte, error) {
	b, err := h.r.ReadByte()
	if err == nil {
		h.h.Write([]byte{b})
	}
	return b, err
}
