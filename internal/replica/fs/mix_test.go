package fs

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestRandomMix runs seeded random operations from several goroutines at
// once through the mount, then checks that replaying the recorded ops gives
// the same tree. Replay a failure with TANDEM_FS_SEED=<seed>.
func TestRandomMix(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("TANDEM_FS_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("TANDEM_FS_SEED: %v", err)
		}
		seed = v
	}
	t.Logf("seed %d (set TANDEM_FS_SEED=%d to replay)", seed, seed)
	e := newEnv(t, Options{})
	const workers, steps = 3, 1500
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := mixWorker(e, rand.New(rand.NewPCG(seed, uint64(w))), steps); err != nil {
				errs <- fmt.Errorf("worker %d: %w", w, err)
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

// bad are errors that random operations must never produce.
func bad(err error) error {
	for _, b := range []syscall.Errno{unix.EIO, unix.ENOTCONN, unix.ESTALE, unix.EBADF, unix.EFAULT, unix.ENOSYS, unix.ENAMETOOLONG} {
		if errors.Is(err, b) {
			return err
		}
	}
	return nil
}

func mixWorker(e *env, rng *rand.Rand, steps int) error {
	dirs := []string{"", "d0", "d1", "d0/e", "d1/e", "d0/e/g"}
	rp := func() string {
		return filepath.Join(dirs[rng.IntN(len(dirs))], "f"+strconv.Itoa(rng.IntN(6)))
	}
	rd := func() string { return dirs[1+rng.IntN(len(dirs)-1)] }
	data := func() []byte {
		n := rng.IntN(3) * rng.IntN(70000)
		return bytes.Repeat([]byte{byte('a' + rng.IntN(26))}, n+1)
	}
	off := func() int64 {
		if rng.IntN(4) == 0 {
			return rng.Int64N(4 << 20) // holes
		}
		return rng.Int64N(100000)
	}
	var open []*os.File
	defer func() {
		for _, f := range open {
			f.Close()
		}
	}()
	for range steps {
		var err error
		switch rng.IntN(17) {
		case 0:
			var f *os.File
			if f, err = os.OpenFile(e.p(rp()), os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
				_, err = f.WriteAt(data(), off())
				if cerr := f.Close(); err == nil {
					err = cerr
				}
			}
		case 1:
			if len(open) < 6 {
				flags := os.O_RDWR
				if rng.IntN(3) == 0 {
					flags = os.O_WRONLY | os.O_APPEND
				}
				var f *os.File
				if f, err = os.OpenFile(e.p(rp()), flags|os.O_CREATE, 0o600); err == nil {
					open = append(open, f)
				}
			}
		case 2, 3:
			if len(open) > 0 {
				f := open[rng.IntN(len(open))]
				if rng.IntN(2) == 0 {
					_, err = f.Write(data())
				} else {
					_, err = f.WriteAt(data(), off())
					if err != nil && bytes.Contains([]byte(err.Error()), []byte("O_APPEND")) {
						err = nil // os refuses WriteAt on O_APPEND files
					}
				}
			}
		case 4:
			if len(open) > 0 {
				i := rng.IntN(len(open))
				err = open[i].Close()
				open = append(open[:i], open[i+1:]...)
			}
		case 5:
			err = os.Truncate(e.p(rp()), rng.Int64N(200000))
		case 6:
			flags := []uint{0, 0, unix.RENAME_NOREPLACE, unix.RENAME_EXCHANGE}[rng.IntN(4)]
			a, b := rp(), rp()
			if rng.IntN(4) == 0 {
				a, b = rd(), rd()
			}
			err = unix.Renameat2(unix.AT_FDCWD, e.p(a), unix.AT_FDCWD, e.p(b), flags)
		case 7:
			err = os.Remove(e.p(rp()))
		case 8:
			err = os.Mkdir(e.p(rd()), 0o755)
		case 9:
			err = unix.Rmdir(e.p(rd()))
		case 10:
			err = os.Link(e.p(rp()), e.p(rp()))
		case 11:
			err = os.Symlink("../f"+strconv.Itoa(rng.IntN(6)), e.p(rp()))
		case 12:
			err = unix.Chmod(e.p(rp()), uint32(0o600+rng.IntN(0o200)))
		case 13:
			if rng.IntN(2) == 0 {
				err = unix.Setxattr(e.p(rp()), "user.k"+strconv.Itoa(rng.IntN(3)), bytes.Repeat([]byte{'v'}, rng.IntN(20)+1), 0)
			} else {
				err = unix.Removexattr(e.p(rp()), "user.k"+strconv.Itoa(rng.IntN(3)))
			}
		case 14:
			if len(open) > 0 {
				f := open[rng.IntN(len(open))]
				err = unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, rng.Int64N(100000), rng.Int64N(50000)+1)
			}
		case 15:
			tm := time.Unix(rng.Int64N(1<<31), rng.Int64N(1e9))
			err = os.Chtimes(e.p(rp()), tm, tm)
		case 16:
			if len(open) > 0 {
				err = open[rng.IntN(len(open))].Sync()
			}
		}
		if b := bad(err); b != nil {
			return b
		}
	}
	return nil
}
