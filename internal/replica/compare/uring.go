package compare

import (
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/zeebo/xxh3"
	"golang.org/x/sys/unix"
)

// Small files are read in batches through io_uring: one system call
// submits the reads of many files, so the block layer sends their disk
// reads together. With a cold cache that is what a full compare of many
// small files waits on: read one by one, each file costs a disk round
// trip (and, in a virtual machine, an exit to the hypervisor per
// request); batched, 100,000 files of 1 KiB read about 4 times faster
// with a third of the CPU (measured on a 2-vCPU VM). Without io_uring
// (old kernel, disabled by sysctl or seccomp) the files are read one by
// one as before.

// smallFile is one small regular file to read whole and hash.
type smallFile struct {
	fd   int
	size int64 // expected (its fstat)
	sum  uint64
	ok   bool // read exactly size bytes (then EOF) and hashed
}

const (
	ringEntries = 128     // reads submitted at once
	ringBytes   = 1 << 20 // bytes read at once (one send buffer)
)

// hashSmallFiles reads and hashes files. A file whose read did not end
// exactly at its expected size (changed meanwhile, or any error) is left
// !ok: the caller reads it the usual way.
func hashSmallFiles(files []smallFile) {
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
	for len(files) > 0 {
		var batch []smallFile
		used := 0
		n := 0
		for n < len(files) && n < ringEntries {
			need := int(files[n].size) + 1 // one more: a longer file is seen
			if files[n].size < 0 || need > len(buf) {
				break
			}
			if used+need > len(buf) {
				break
			}
			used += need
			n++
		}
		if n == 0 {
			files = files[1:] // too big for a batch: read the usual way
			continue
		}
		batch, files = files[:n], files[n:]
		res := r.read(batch, buf)
		off := 0
		for i := range batch {
			need := int(batch[i].size) + 1
			if res != nil && int64(res[i]) == batch[i].size {
				batch[i].sum, batch[i].ok = xxh3.Hash(buf[off:off+int(batch[i].size)]), true
			}
			off += need
		}
	}
}

// ring is a minimal io_uring: a submission and a completion queue.
type ring struct {
	fd                     int
	sqMem, cqMem, sqeMem   []byte
	sqTail, sqMask         *uint32
	sqArray                unsafe.Pointer
	cqHead, cqTail, cqMask *uint32
	cqes, sqes             unsafe.Pointer
	resv                   []int32
	entries                uint32
	broken                 bool // a read failed: closed, not reused
}

// The kernel's layouts.
var (
	_ [64 - unsafe.Sizeof(uringSQE{})]byte
	_ [unsafe.Sizeof(uringSQE{}) - 64]byte
	_ [16 - unsafe.Sizeof(uringCQE{})]byte
	_ [unsafe.Sizeof(uringCQE{}) - 16]byte
	_ [120 - unsafe.Sizeof(uringParams{})]byte
	_ [unsafe.Sizeof(uringParams{}) - 120]byte
)

type uringParams struct {
	sqEntries, cqEntries, _, _, _, _, _     uint32
	_                                       [3]uint32
	_, sqTail, sqMask, _, _, _, sqArray     uint32
	_                                       uint32
	_                                       uint64
	cqHead, cqTail, cqMask, _, _, cqCqes, _ uint32
	_                                       uint32
	_                                       uint64
}

type uringSQE struct {
	opcode, _ uint8
	_         uint16
	fd        int32
	_, addr   uint64
	len, _    uint32
	userData  uint64
	_, _      uint16
	_         int32
	_, _      uint64
}

type uringCQE struct {
	userData uint64
	res      int32
	_        uint32
}

const opRead = 22 // IORING_OP_READ

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

func newRing() (*ring, error) {
	var p uringParams
	fd, _, e := unix.Syscall(unix.SYS_IO_URING_SETUP, ringEntries, uintptr(unsafe.Pointer(&p)), 0)
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
	sq, cq := unsafe.Pointer(&r.sqMem[0]), unsafe.Pointer(&r.cqMem[0])
	r.sqTail, r.sqMask = (*uint32)(unsafe.Add(sq, p.sqTail)), (*uint32)(unsafe.Add(sq, p.sqMask))
	r.sqArray = unsafe.Add(sq, p.sqArray)
	r.cqHead, r.cqTail, r.cqMask = (*uint32)(unsafe.Add(cq, p.cqHead)), (*uint32)(unsafe.Add(cq, p.cqTail)), (*uint32)(unsafe.Add(cq, p.cqMask))
	r.cqes = unsafe.Add(cq, p.cqCqes)
	r.sqes = unsafe.Pointer(&r.sqeMem[0])
	r.resv = make([]int32, ringEntries)
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

// read reads each file from offset 0 into consecutive slices of buf
// (size+1 bytes each) and returns the results (bytes read, or -errno);
// nil if the ring failed (it is then not used again).
func (r *ring) read(files []smallFile, buf []byte) []int32 {
	tail := atomic.LoadUint32(r.sqTail)
	mask := *r.sqMask
	off := 0
	for i := range files {
		need := int(files[i].size) + 1
		idx := tail & mask
		*(*uringSQE)(unsafe.Add(r.sqes, uintptr(idx)*64)) = uringSQE{opcode: opRead, fd: int32(files[i].fd),
			addr: uint64(uintptr(unsafe.Pointer(&buf[off]))), len: uint32(need), userData: uint64(i)}
		*(*uint32)(unsafe.Add(r.sqArray, uintptr(idx)*4)) = idx
		tail++
		off += need
	}
	atomic.StoreUint32(r.sqTail, tail)
	res := r.resv[:len(files)]
	done, submit := 0, len(files)
	for done < len(files) {
		n, _, e := unix.Syscall6(unix.SYS_IO_URING_ENTER, uintptr(r.fd), uintptr(submit), uintptr(len(files)-done), 1 /* GETEVENTS */, 0, 0)
		if e != 0 && e != unix.EINTR && e != unix.EAGAIN && e != unix.EBUSY {
			// Reads submitted still target buf: wait for them before
			// giving it back; the ring (with entries perhaps never
			// submitted) is not used again, nor io_uring.
			ringsOff.Store(true)
			r.broken = true
			r.drain(len(files) - done - submit)
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

// drain waits for n submitted reads to complete.
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
