package compare

import (
	"bytes"
	"encoding/binary"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// estimate is a full compare's progress total, without a stat of its
// own per file (one costs as much as a quarter of the compare of a small
// file): the sizes of the regular files the listings met so far, plus,
// for the files the prescan counted but no listing reached yet, the mean
// of those sizes. It grows exact as the walk goes; on a tree of similar
// files it is close from the start.
type estimate struct {
	counted atomic.Int64 // regular files (names) the prescan found
	listed  atomic.Int64 // regular files (names) the listings found
	bytes   atomic.Int64 // their sizes (a hard-linked inode's shared among its names)
}

// add notes a listing's regular files and their bytes (negative: a page
// refused as stale, listed again).
func (r *run) addListed(files, n int64) {
	if !r.scope.Full || files == 0 {
		return
	}
	r.est.listed.Add(files)
	r.est.bytes.Add(n)
	r.storeEstimate()
}

func (r *run) storeEstimate() {
	l, b, c := r.est.listed.Load(), r.est.bytes.Load(), r.est.counted.Load()
	total := b
	if l > 0 && c > l {
		total += (c - l) * (b / l)
	}
	r.e.prog.total.Store(total)
}

// listedBytes: the regular files among pents that t compares whole, and
// their sizes, for the estimate.
func listedBytes(t *task, pents []*pEntry) (files, n int64) {
	for _, p := range pents {
		if p.st.Mode&unix.S_IFMT != unix.S_IFREG || !fullAt(t, join(t.path, p.name)) {
			continue
		}
		files++
		n += p.st.Size / int64(max(p.st.Nlink, 1))
	}
	return files, n
}

// prescan counts the primary's regular files for the progress of a full
// compare, from the directories' entries alone (their types; a stat only
// where the filesystem does not give them). It stops with the run.
func (r *run) prescan() {
	buf := make([]byte, 32<<10)
	// Resuming: only what the walk compares whole counts.
	walkTask := &task{recurse: true, from: r.scope.From}
	var walk func(fd int, path string, depth int)
	walk = func(fd int, path string, depth int) {
		var dirs []string
		for r.ctx.Err() == nil {
			n, err := unix.Getdents(fd, buf)
			if err == unix.EINTR {
				continue
			}
			if err != nil || n <= 0 {
				break
			}
			var files int64
			for b := buf[:n]; len(b) >= 19; {
				// struct linux_dirent64: ino, off, reclen, type, name.
				reclen := int(binary.NativeEndian.Uint16(b[16:18]))
				if reclen < 19 || reclen > len(b) {
					break
				}
				typ, name := b[18], b[19:reclen]
				b = b[reclen:]
				if i := bytes.IndexByte(name, 0); i >= 0 {
					name = name[:i]
				}
				if typ == unix.DT_UNKNOWN {
					var st unix.Stat_t
					if unix.Fstatat(fd, string(name), &st, unix.AT_SYMLINK_NOFOLLOW) != nil {
						continue
					}
					switch st.Mode & unix.S_IFMT {
					case unix.S_IFREG:
						typ = unix.DT_REG
					case unix.S_IFDIR:
						typ = unix.DT_DIR
					}
				}
				if walkTask.from != "" && (typ == unix.DT_REG || typ == unix.DT_DIR) && !fullAt(walkTask, join(path, string(name))) {
					continue
				}
				switch typ {
				case unix.DT_REG:
					files++
				case unix.DT_DIR:
					if s := string(name); s != "." && s != ".." && depth < 4096 {
						dirs = append(dirs, s)
					}
				}
			}
			r.est.counted.Add(files)
			r.storeEstimate()
		}
		for _, d := range dirs {
			if r.ctx.Err() != nil {
				break
			}
			if cfd, err := openatNoatime(fd, d, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW); err == nil {
				walk(cfd, join(path, d), depth+1)
			}
		}
		unix.Close(fd)
	}
	if fd, err := openatNoatime(r.root, ".", unix.O_RDONLY|unix.O_DIRECTORY); err == nil {
		walk(fd, "", 0)
	}
}
