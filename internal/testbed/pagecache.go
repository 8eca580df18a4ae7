package testbed

import (
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Resident counts the pages of f's [off, off+n) (off page-aligned, n > 0)
// that are in the page cache, without reading them (mincore).
func Resident(f *os.File, off, n int64) (int, error) {
	m, err := unix.Mmap(int(f.Fd()), off, int(n), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return 0, fmt.Errorf("mmap %s at %d (+%d): %w", f.Name(), off, n, err)
	}
	defer unix.Munmap(m)
	vec := make([]byte, (len(m)+os.Getpagesize()-1)/os.Getpagesize())
	// x/sys/unix has no Mincore for Linux.
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		return 0, fmt.Errorf("mincore %s: %w", f.Name(), e)
	}
	in := 0
	for _, v := range vec {
		in += int(v & 1)
	}
	return in, nil
}

// Uncache writes f back and drops its pages from the page cache. False
// when the filesystem keeps them (tmpfs): a test of what gets read cannot
// run there.
func Uncache(f *os.File) (bool, error) {
	if err := f.Sync(); err != nil {
		return false, err
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		return false, fmt.Errorf("fadvise DONTNEED %s: %w", f.Name(), err)
	}
	st, err := f.Stat()
	if err != nil || st.Size() == 0 {
		return err == nil, err
	}
	in, err := Resident(f, 0, st.Size())
	return in == 0, err
}
