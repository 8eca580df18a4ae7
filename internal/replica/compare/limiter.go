package compare

import (
	"context"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// limiter is a token bucket of bytes per second, shared by the file
// workers. The burst is a tenth of a second, at least one send chunk.
type limiter struct {
	mu     sync.Mutex
	rate   float64
	burst  float64
	tokens float64
	last   time.Time
}

func newLimiter(rate int64) *limiter {
	b := max(float64(rate)/10, sendChunk)
	return &limiter{rate: float64(rate), burst: b, tokens: b, last: time.Now()}
}

// wait takes n bytes' worth of tokens, sleeping as needed.
func (l *limiter) wait(ctx context.Context, n int64) error {
	if l == nil || n <= 0 {
		return nil
	}
	l.mu.Lock()
	now := time.Now()
	l.tokens = min(l.burst, l.tokens+now.Sub(l.last).Seconds()*l.rate)
	l.last = now
	l.tokens -= float64(n)
	var d time.Duration
	if l.tokens < 0 {
		d = time.Duration(-l.tokens / l.rate * float64(time.Second))
	}
	l.mu.Unlock()
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// prescan sums the sizes of the primary's regular files (each inode once)
// for the progress of a full compare. It only stats, and stops with the
// run.
func (r *run) prescan() {
	seen := map[inoKey]bool{}
	var walk func(fd int, depth int)
	walk = func(fd int, depth int) {
		f := os.NewFile(uintptr(fd), "")
		defer f.Close()
		for r.ctx.Err() == nil {
			names, err := f.Readdirnames(1024)
			if err != nil || len(names) == 0 {
				return
			}
			for _, n := range names {
				var st unix.Stat_t
				if unix.Fstatat(fd, n, &st, unix.AT_SYMLINK_NOFOLLOW) != nil {
					continue
				}
				switch st.Mode & unix.S_IFMT {
				case unix.S_IFREG:
					if st.Nlink > 1 {
						k := inoKey{st.Dev, st.Ino}
						if seen[k] {
							continue
						}
						seen[k] = true
					}
					r.e.prog.total.Add(st.Size)
				case unix.S_IFDIR:
					if depth > 4096 {
						continue
					}
					if cfd, err := openatNoatime(fd, n, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW); err == nil {
						walk(cfd, depth+1)
					}
				}
			}
		}
	}
	if fd, err := openatNoatime(r.root, ".", unix.O_RDONLY|unix.O_DIRECTORY); err == nil {
		walk(fd, 0)
	}
}
