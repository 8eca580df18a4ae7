package compare

import (
	"context"
	"time"

	"golang.org/x/sys/unix"
)

// scopeAhead bounds how far the scope's read-ahead runs ahead of the
// workers: zone bytes advised that no worker has reached yet. 0: none (a
// benchmark's knob).
var scopeAhead int64 = 64 << 20

// aheadFile is a scope file's zones, copied when the run is seeded (the
// workers then own the tasks).
type aheadFile struct {
	path  string
	zones []Zone
}

// readAheadScope advises the kernel to read the scope files' zones, in
// the order the workers take the files, at most window bytes ahead of
// reached (the zone bytes the workers have started on), until the list
// ends or ctx is done; it returns the bytes advised. A worker reads ahead
// only the file it holds: with small files that leaves a few reads in
// flight, where the records name thousands of scattered zones, so the
// disk waits between them. This keeps its queue full across files, as
// the kernel's own read-ahead does for one sequential file. Advice only: a
// file gone or unreadable is skipped, and the workers read what they need
// whether or not it came.
func readAheadScope(ctx context.Context, root int, files []aheadFile, window int64, reached func() int64) int64 {
	var advised int64
	for _, f := range files {
		fd := -1
		for _, z := range f.zones {
			for advised-reached() >= window && ctx.Err() == nil {
				time.Sleep(time.Millisecond)
			}
			if ctx.Err() != nil {
				if fd >= 0 {
					unix.Close(fd)
				}
				return advised
			}
			if fd < 0 {
				var err error
				if fd, err = openNoatime(root, f.path, unix.O_RDONLY|unix.O_NONBLOCK); err != nil {
					break
				}
			}
			if unix.Fadvise(fd, z.Off, z.Len, unix.FADV_WILLNEED) == nil {
				advised += z.Len
			}
		}
		if fd >= 0 {
			unix.Close(fd)
		}
	}
	return advised
}

// awaitCached returns once [off, off+n) of fd, read ahead before, has
// come from the disk, or most of it: it reads one byte every 256 KiB
// and the last one, each read waiting for its page. A worker then waits
// for the disk outside its freeze, not inside it, for the cost of a few
// system calls. (cachestat(2) cannot tell: it counts pages still being
// read as cached.)
func awaitCached(fd int, off, n int64) {
	var b [1]byte
	for p := off; p < off+n; p += 256 << 10 {
		_, _ = unix.Pread(fd, b[:], p)
	}
	if n > 0 {
		_, _ = unix.Pread(fd, b[:], off+n-1)
	}
}
