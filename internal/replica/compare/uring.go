package compare

import (
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/tandem-ha/tandem/internal/replica/sumcache"
	"github.com/zeebo/xxh3"
	"golang.org/x/sys/unix"
)

// Small files are opened, read and closed in batches through io_uring,
// on descriptors of the ring's own table (openat into slot i, read slot
// i, close slot i): two system calls for up to 256 files, the opens, then
// the reads, each linked to its close. System calls are what a full
// compare of many small files costs: on the 2-vCPU VM of the benchmarks
// one costs 1.5 µs before doing anything (getppid), and each small file
// took five of them per side (open, fstat, read, close and the
// attributes). With a cold cache the batch also lets the block layer send
// the disk reads together: read one by one, each file costs a disk round
// trip (and, in a virtual machine, an exit to the hypervisor per
// request). Each batch is read in inode order, which on most filesystems
// is the order of the data on disk.
//
// The file is opened by name after its stat (by name too), as one by one:
// a file replaced meanwhile is seen by its size (the read must end
// exactly there) or described again one by one by the caller; an answer
// may mix the states of an entry anyway (see the package comment), and a
// rename is compared again. Without io_uring (old kernel, disabled by
// sysctl or seccomp) the files are read one by one.

// smallFile is one small regular file to read whole and hash: name
// inside directory dfd, whose stat said size bytes.
type smallFile struct {
	dfd  int
	name string
	ino  uint64 // its stat's: the order of the reads
	size int64
	tag  int // the caller's (its entry)
	// stamp: the stat's, under which its hash is remembered (a zero
	// stamp is not remembered).
	stamp sumcache.Stamp
	sum   uint64
	ok    bool // read exactly size bytes (then EOF) and hashed
}

const (
	ringFiles   = 256           // files read at once (the ring's descriptor table)
	ringEntries = 4 * ringFiles // submission queue: two operations per file at most
	openFlags   = unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_NONBLOCK
)

// uringOn: batches are worth preparing (io_uring was not found missing).
func uringOn() bool { return !ringsOff.Load() }

// batchReader reads small files in batches of ringFiles in the
// background, one batch at a time, while the caller goes on stat'ing the
// next entries: with a cold cache the disk reads of a batch overlap the
// stats of the next.
type batchReader struct {
	cur    []smallFile
	done   [][]smallFile
	wg     sync.WaitGroup
	before func() // testHookBeforeBatch, for a listing
}

// add queues f; tag is the caller's: its entry.
func (b *batchReader) add(f smallFile) {
	b.cur = append(b.cur, f)
	if len(b.cur) >= ringFiles {
		b.send()
	}
}

func (b *batchReader) send() {
	b.wg.Wait()
	if b.before != nil {
		b.before()
	}
	c := b.cur
	b.done, b.cur = append(b.done, c), nil
	b.wg.Go(func() { hashSmallFiles(c) })
}

// wait reads the files still queued and returns the batches, each file
// with its result.
func (b *batchReader) wait() [][]smallFile {
	if len(b.cur) > 0 {
		b.send()
	}
	b.wg.Wait()
	return b.done
}

// hashSmallFiles reads and hashes files. A file whose read did not end
// exactly at its expected size (changed, replaced or removed meanwhile,
// or any error), or all of them without io_uring, is left !ok: the
// caller reads it the usual way.
func hashSmallFiles(files []smallFile) {
	if len(files) == 0 {
		return
	}
	r := getRing()
	if r == nil {
		return
	}
	defer putRing(r)
	buf := getBuf()
	defer func() {
		// A broken ring may have reads the kernel still completes into
		// buf: it is never reused then.
		if !r.broken {
			putBuf(buf)
		}
	}()
	order := make([]int32, len(files))
	for i := range order {
		order[i] = int32(i)
	}
	slices.SortFunc(order, func(a, b int32) int {
		if x, y := files[a].ino, files[b].ino; x != y {
			if x < y {
				return -1
			}
			return 1
		}
		return int(a - b)
	})
	var batch []*smallFile
	for len(order) > 0 && !r.broken {
		batch = batch[:0]
		used := 0
		n := 0
		for n < len(order) && len(batch) < ringFiles {
			f := &files[order[n]]
			need := int(f.size) + 1 // one more: a longer file is seen
			if f.size < 0 || need > len(buf) {
				n++ // too big for a batch: read the usual way
				continue
			}
			if used+need > len(buf) {
				break
			}
			used += need
			batch = append(batch, f)
			n++
		}
		order = order[n:]
		if len(batch) > 0 {
			r.readFiles(batch, buf, true)
		}
	}
}

// readFiles reads and hashes the files of one batch (buf holds them all,
// size+1 bytes each). Opens refused for O_NOATIME (not the owner, no
// CAP_FOWNER) are tried again without it.
func (r *ring) readFiles(files []*smallFile, buf []byte, noatime bool) {
	flags := uint32(openFlags)
	if noatime && !r.atimeOnly {
		flags |= unix.O_NOATIME
	}
	// The names, NUL-terminated, for the kernel.
	size := 0
	for _, f := range files {
		size += len(f.name) + 1
	}
	names := make([]byte, 0, size)
	// Two submissions: the opens (the names are in the dentry cache,
	// stat'ed just before), then the reads, each linked to its close. The
	// reads, submitted together, reach the block layer under one plug: it
	// merges and sends them as one batch (linked to their opens, each
	// read would go on its own when its open completes).
	sqes := r.sqev[:0]
	for i, f := range files {
		name := len(names)
		names = append(names, f.name...)
		names = append(names, 0)
		sqes = append(sqes, uringSQE{opcode: opOpenat, fd: int32(f.dfd),
			addr: uint64(uintptr(unsafe.Pointer(&names[name]))), opFlags: flags, fileIndex: uint32(i) + 1, userData: uint64(i)})
	}
	res := r.run(sqes)
	runtime.KeepAlive(names)
	if res == nil {
		r.sqev = sqes[:0]
		return
	}
	opened := slices.Clone(res)
	sqes = sqes[:0]
	off := 0
	for i, f := range files {
		need := int(f.size) + 1
		if opened[i] >= 0 {
			sqes = append(sqes,
				uringSQE{opcode: opRead, flags: sqeFixedFile | sqeHardlink, fd: int32(i),
					addr: uint64(uintptr(unsafe.Pointer(&buf[off]))), len: uint32(need), userData: uint64(2 * i)},
				uringSQE{opcode: opClose, fileIndex: uint32(i) + 1, userData: uint64(2*i + 1)})
		}
		off += need
	}
	r.sqev = sqes[:0]
	var read []int32
	if len(sqes) > 0 {
		// userData: the file's index, read or close; the results by
		// index are spread over 2 × len(files).
		if res = r.runSparse(sqes, 2*len(files)); res == nil {
			return
		}
		read = res
	}
	var again []*smallFile
	off = 0
	for i, f := range files {
		need := int(f.size) + 1
		switch {
		case opened[i] == -int32(unix.EPERM) && flags&unix.O_NOATIME != 0:
			again = append(again, f)
		case opened[i] >= 0 && int64(read[2*i]) == f.size:
			f.sum, f.ok = xxh3.Hash(buf[off:off+int(f.size)]), true
		}
		off += need
	}
	if len(again) > 0 {
		if len(again) == len(files) {
			r.atimeOnly = true // all refused: not worth asking again
		}
		// Their places in buf are before the others': reused in turn.
		r.readFiles(again, buf, false)
	}
}

// ring is a minimal io_uring: a submission and a completion queue, and a
// table of ringFiles descriptors of its own.
type ring struct {
	fd                     int
	sqMem, cqMem, sqeMem   []byte
	sqTail, sqMask         *uint32
	sqArray                unsafe.Pointer
	cqHead, cqTail, cqMask *uint32
	cqes, sqes             unsafe.Pointer
	resv                   []int32
	sqev                   []uringSQE
	entries                uint32
	atimeOnly              bool // O_NOATIME refused: opens without it
	broken                 bool // a system call failed: closed, not reused
}

// The kernel's layouts.
var (
	_ [64 - unsafe.Sizeof(uringSQE{})]byte
	_ [unsafe.Sizeof(uringSQE{}) - 64]byte
	_ [16 - unsafe.Sizeof(uringCQE{})]byte
	_ [unsafe.Sizeof(uringCQE{}) - 16]byte
	_ [120 - unsafe.Sizeof(uringParams{})]byte
	_ [unsafe.Sizeof(uringParams{}) - 120]byte
	_ [32 - unsafe.Sizeof(uringRsrcRegister{})]byte
	_ [unsafe.Sizeof(uringRsrcRegister{}) - 32]byte
)

type uringParams struct {
	sqEntries, cqEntries, flags, _, _, _, _ uint32
	_                                       [3]uint32
	_, sqTail, sqMask, _, _, _, sqArray     uint32
	_                                       uint32
	_                                       uint64
	cqHead, cqTail, cqMask, _, _, cqCqes, _ uint32
	_                                       uint32
	_                                       uint64
}

type uringSQE struct {
	opcode    uint8
	flags     uint8
	_         uint16
	fd        int32
	off       uint64
	addr      uint64
	len       uint32
	opFlags   uint32 // open flags, read flags
	userData  uint64
	_, _      uint16
	fileIndex uint32 // a slot of the ring's table, plus one
	_, _      uint64
}

type uringCQE struct {
	userData uint64
	res      int32
	_        uint32
}

// struct io_uring_rsrc_register
type uringRsrcRegister struct {
	nr, flags  uint32
	_          uint64
	data, tags uint64
}

const (
	opOpenat = 18 // IORING_OP_OPENAT
	opClose  = 19 // IORING_OP_CLOSE
	opRead   = 22 // IORING_OP_READ

	sqeFixedFile = 1 << 0 // IOSQE_FIXED_FILE: fd is a slot of the table
	sqeHardlink  = 1 << 3 // IOSQE_IO_HARDLINK: the next one runs after this one, failed or not

	setupSubmitAll   = 1 << 7 // IORING_SETUP_SUBMIT_ALL
	setupCoopTaskrun = 1 << 8 // IORING_SETUP_COOP_TASKRUN

	registerFiles2 = 13     // IORING_REGISTER_FILES2
	rsrcSparse     = 1 << 0 // IORING_RSRC_REGISTER_SPARSE
)

var (
	ringsOff  atomic.Bool // io_uring unavailable here
	ringsMu   sync.Mutex
	ringsFree []*ring
)

const ringsKept = 16

func getRing() *ring {
	if ringsOff.Load() {
		return nil
	}
	ringsMu.Lock()
	if n := len(ringsFree); n > 0 {
		r := ringsFree[n-1]
		ringsFree = ringsFree[:n-1]
		ringsMu.Unlock()
		return r
	}
	ringsMu.Unlock()
	r, err := newRing()
	if err != nil {
		ringsOff.Store(true)
		return nil
	}
	return r
}

func putRing(r *ring) {
	ringsMu.Lock()
	if !r.broken && len(ringsFree) < ringsKept {
		ringsFree = append(ringsFree, r)
		r = nil
	}
	ringsMu.Unlock()
	if r != nil {
		r.close()
	}
}

// newRing sets up a ring with its descriptor table (Linux 5.19: sparse
// tables; the linked open, read and close on its slots since 5.15).
func newRing() (*ring, error) {
	var p uringParams
	p.flags = setupSubmitAll | setupCoopTaskrun
	fd, _, e := unix.Syscall(unix.SYS_IO_URING_SETUP, ringEntries, uintptr(unsafe.Pointer(&p)), 0)
	if e == unix.EINVAL {
		p = uringParams{}
		fd, _, e = unix.Syscall(unix.SYS_IO_URING_SETUP, ringEntries, uintptr(unsafe.Pointer(&p)), 0)
	}
	if e != 0 {
		return nil, e
	}
	r := &ring{fd: int(fd), entries: p.sqEntries}
	unix.CloseOnExec(r.fd)
	var err error
	prot, flags := unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE
	if r.sqMem, err = unix.Mmap(r.fd, 0, int(p.sqArray+p.sqEntries*4), prot, flags); err != nil {
		r.close()
		return nil, err
	}
	if r.cqMem, err = unix.Mmap(r.fd, 0x8000000, int(p.cqCqes+p.cqEntries*16), prot, flags); err != nil {
		r.close()
		return nil, err
	}
	if r.sqeMem, err = unix.Mmap(r.fd, 0x10000000, int(p.sqEntries*64), prot, flags); err != nil {
		r.close()
		return nil, err
	}
	reg := uringRsrcRegister{nr: ringFiles, flags: rsrcSparse}
	if _, _, e := unix.Syscall6(unix.SYS_IO_URING_REGISTER, uintptr(r.fd), registerFiles2, uintptr(unsafe.Pointer(&reg)), unsafe.Sizeof(reg), 0, 0); e != 0 {
		r.close()
		return nil, e
	}
	sq, cq := unsafe.Pointer(&r.sqMem[0]), unsafe.Pointer(&r.cqMem[0])
	r.sqTail, r.sqMask = (*uint32)(unsafe.Add(sq, p.sqTail)), (*uint32)(unsafe.Add(sq, p.sqMask))
	r.sqArray = unsafe.Add(sq, p.sqArray)
	r.cqHead, r.cqTail, r.cqMask = (*uint32)(unsafe.Add(cq, p.cqHead)), (*uint32)(unsafe.Add(cq, p.cqTail)), (*uint32)(unsafe.Add(cq, p.cqMask))
	r.cqes = unsafe.Add(cq, p.cqCqes)
	r.sqes = unsafe.Pointer(&r.sqeMem[0])
	r.resv = make([]int32, ringEntries)
	r.sqev = make([]uringSQE, 0, ringEntries)
	return r, nil
}

func (r *ring) close() {
	for _, m := range [][]byte{r.sqMem, r.cqMem, r.sqeMem} {
		if m != nil {
			unix.Munmap(m)
		}
	}
	unix.Close(r.fd)
}

// run submits sqes (at most the queue's size; userData is each one's
// index) and waits for all of them; it returns their results (-errno on
// failure), or nil if the ring failed (it is then not used again, nor
// io_uring). The memory the operations point to must stay alive until it
// returns.
func (r *ring) run(sqes []uringSQE) []int32 { return r.runSparse(sqes, len(sqes)) }

// runSparse is run with userData below n (not every index submitted):
// the results are indexed by userData.
func (r *ring) runSparse(sqes []uringSQE, n int) []int32 {
	tail := atomic.LoadUint32(r.sqTail)
	mask := *r.sqMask
	for i := range sqes {
		idx := tail & mask
		*(*uringSQE)(unsafe.Add(r.sqes, uintptr(idx)*64)) = sqes[i]
		*(*uint32)(unsafe.Add(r.sqArray, uintptr(idx)*4)) = idx
		tail++
	}
	atomic.StoreUint32(r.sqTail, tail)
	res := r.resv[:n]
	done, submit := 0, len(sqes)
	for done < len(sqes) {
		n, _, e := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(submit), uintptr(len(sqes)-done), 1 /* GETEVENTS */, 0, 0)
		if e != 0 && e != unix.EINTR && e != unix.EAGAIN && e != unix.EBUSY {
			// Reads submitted still target their buffers: wait for them
			// before giving those back; the ring (with entries perhaps
			// never submitted) is not used again, nor io_uring.
			ringsOff.Store(true)
			r.broken = true
			r.drain(len(sqes) - done - submit)
			return nil
		}
		if e == 0 {
			submit -= min(int(n), submit)
		}
		head := atomic.LoadUint32(r.cqHead)
		for ct := atomic.LoadUint32(r.cqTail); head != ct; head++ {
			c := (*uringCQE)(unsafe.Add(r.cqes, uintptr(head&*r.cqMask)*16))
			if c.userData < uint64(len(res)) {
				res[c.userData] = c.res
				done++
			}
		}
		atomic.StoreUint32(r.cqHead, head)
	}
	return res
}

// drain waits for n submitted operations to complete.
func (r *ring) drain(n int) {
	for n > 0 {
		_, _, e := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), 0, uintptr(n), 1, 0, 0)
		if e != 0 && e != unix.EINTR {
			return
		}
		head := atomic.LoadUint32(r.cqHead)
		for ct := atomic.LoadUint32(r.cqTail); head != ct; head++ {
			n--
		}
		atomic.StoreUint32(r.cqHead, head)
	}
}
