// Command resyncwork builds and changes the trees of bench/resync, and
// measures the limit (copying only the changed bytes). It is deterministic:
// the same seed on the same tree gives the same files, the same changed
// blocks and the same bytes, so the tree Tandem replicates and the
// references' copies change identically. Each verb prints one JSON result on
// stdout.
//
//	resyncwork gen -dir D [-dir D2 ...] -seed S -files N -file-kb K -big-mb M -dirs SUB
//	    N files of K KiB on average (uniform in [K/2, 3K/2)) spread over SUB
//	    subdirectories, plus one file "big" of M MiB; the same bytes in every
//	    D; every file and directory gets the same fixed mtime.
//	resyncwork change -dir D -seed S -pct P -create N -create-kb K -remove N [-list F]
//	    removes N files, rewrites P % of the 4 KiB blocks of the other files
//	    at random (pwrite, sizes kept), creates N files of K KiB on average;
//	    with -list, writes what changed to F (JSON) for limit.
//	resyncwork limit -list F -src A -dst B [-jobs J]
//	    the limit: copies from A to B only what F names (the changed
//	    extents with pread/pwrite, the created files whole, unlinks the
//	    removed ones), then syncfs(B); timed.
//	resyncwork live -file F -out J [-interval D]
//	    an application writing during a resync: one 4 KiB pwrite to F
//	    every D (default 1ms), rotating over its first MiB, each timed,
//	    until SIGTERM or SIGINT; then writes the latencies (LiveResult) to
//	    J, as JSON.
package main

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"math/rand/v2"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// BlockSize is the unit of the random rewrites.
const BlockSize = 4096

// FixedMtime is the mtime gen gives every file and directory, so that
// copies generated apart are identical to rsync too.
var FixedMtime = time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)

// GenResult is what gen printed.
type GenResult struct {
	Files   int64   `json:"files"`
	Bytes   int64   `json:"bytes"` // per copy
	Copies  int     `json:"copies"`
	Seconds float64 `json:"seconds"`
}

// ChangeResult is what change printed.
type ChangeResult struct {
	Blocks         int64   `json:"blocks"`          // 4 KiB blocks rewritten
	BlocksTotal    int64   `json:"blocks_total"`    // blocks of the files kept
	BytesRewritten int64   `json:"bytes_rewritten"` // bytes pwritten in place
	FilesRewritten int64   `json:"files_rewritten"`
	Created        int64   `json:"created"`
	CreatedBytes   int64   `json:"created_bytes"`
	Removed        int64   `json:"removed"`
	RemovedBytes   int64   `json:"removed_bytes"`
	Seconds        float64 `json:"seconds"`
}

// LimitResult is what limit printed.
type LimitResult struct {
	Bytes   int64   `json:"bytes"` // bytes copied (extents plus created files)
	Extents int64   `json:"extents"`
	Files   int64   `json:"files"` // files written, created or removed
	Seconds float64 `json:"seconds"`
}

// LiveResult is what live wrote: the latencies of its writes.
type LiveResult struct {
	Writes int64   `json:"writes"`
	P50us  float64 `json:"p50_us"`
	P99us  float64 `json:"p99_us"`
	MaxUs  float64 `json:"max_us"`
}

// Extent is a byte range of a file.
type Extent struct {
	Off int64 `json:"off"`
	Len int64 `json:"len"`
}

// FileWrites are the extents rewritten in one file.
type FileWrites struct {
	Path    string   `json:"path"` // relative to the tree
	Extents []Extent `json:"extents"`
}

// List is what change did, for limit.
type List struct {
	Writes  []FileWrites `json:"writes"`
	Created []string     `json:"created"`
	Removed []string     `json:"removed"`
}

type dirList []string

func (d *dirList) String() string     { return strings.Join(*d, ",") }
func (d *dirList) Set(s string) error { *d = append(*d, s); return nil }

func main() {
	if len(os.Args) < 2 {
		fail(errors.New("usage: resyncwork gen|change|limit|live [flags] (see the package comment)"))
	}
	verb, args := os.Args[1], os.Args[2:]
	fl := flag.NewFlagSet("resyncwork "+verb, flag.ExitOnError)
	var dirs dirList
	fl.Var(&dirs, "dir", "gen: tree to write (repeat for identical copies); change: tree to change")
	seed := fl.Uint64("seed", 1, "gen, change: seed of every random choice and byte")
	files := fl.Int("files", 2000, "gen: files")
	fileKB := fl.Int("file-kb", 512, "gen: mean file size, KiB")
	bigMB := fl.Int("big-mb", 0, "gen: size of the file \"big\", MiB (0: none)")
	subdirs := fl.Int("dirs", 20, "gen: subdirectories the files are spread over")
	jobs := fl.Int("jobs", 4, "gen, limit: files handled at once")
	pct := fl.Float64("pct", 1, "change: percent of the 4 KiB blocks rewritten")
	create := fl.Int("create", 20, "change: files created")
	createKB := fl.Int("create-kb", 512, "change: mean size of the created files, KiB")
	remove := fl.Int("remove", 20, "change: files removed")
	list := fl.String("list", "", "change: write what changed here; limit: the list to apply")
	src := fl.String("src", "", "limit: the changed tree")
	dst := fl.String("dst", "", "limit: the copy of the tree before the change")
	file := fl.String("file", "", "live: the file to write")
	outFile := fl.String("out", "", "live: where to write the result")
	interval := fl.Duration("interval", time.Millisecond, "live: time between two writes")
	fl.Parse(args)

	var out any
	var err error
	switch verb {
	case "gen":
		out, err = Gen(dirs, GenOptions{Seed: *seed, Files: *files, FileKB: *fileKB, BigMB: *bigMB, Dirs: *subdirs, Jobs: *jobs})
	case "change":
		if len(dirs) != 1 {
			fail(fmt.Errorf("change: give -dir once (got %d)", len(dirs)))
		}
		var l *List
		out, l, err = Change(dirs[0], ChangeOptions{Seed: *seed, Pct: *pct, Create: *create, CreateKB: *createKB, Remove: *remove})
		if err == nil && *list != "" {
			err = writeList(*list, l)
		}
	case "limit":
		if *list == "" || *src == "" || *dst == "" {
			fail(errors.New("limit: -list, -src and -dst are required"))
		}
		var l *List
		if l, err = readList(*list); err == nil {
			out, err = Limit(l, *src, *dst, *jobs)
		}
	case "live":
		if *file == "" || *outFile == "" {
			fail(errors.New("live: -file and -out are required"))
		}
		var r LiveResult
		if r, err = Live(*file, *interval); err == nil {
			var b []byte
			b, _ = json.Marshal(r)
			err = os.WriteFile(*outFile, b, 0o644)
		}
		out = struct{}{}
	default:
		err = fmt.Errorf("unknown verb %q: gen, change, limit or live", verb)
	}
	if err != nil {
		fail(err)
	}
	b, _ := json.Marshal(out)
	fmt.Println(string(b))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "resyncwork:", err)
	os.Exit(1)
}

// GenOptions shape a generated tree.
type GenOptions struct {
	Seed   uint64
	Files  int
	FileKB int
	BigMB  int
	Dirs   int
	Jobs   int
}

// stream is a deterministic byte source for (seed, stream, index).
func stream(seed, kind, index uint64) *rand.ChaCha8 {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[0:], seed)
	binary.LittleEndian.PutUint64(key[8:], kind)
	binary.LittleEndian.PutUint64(key[16:], index)
	return rand.NewChaCha8(key)
}

// Stream kinds.
const (
	kindGenSize = iota + 1
	kindGenData
	kindBig
	kindPick
	kindBlocks
	kindCreate
)

// FileName is gen's name for file i (relative to the tree).
func FileName(i, dirs int) string {
	return fmt.Sprintf("d%04d/f%07d", i%dirs, i)
}

// Gen writes the tree into every dir (which must exist).
func Gen(dirs []string, o GenOptions) (GenResult, error) {
	res := GenResult{Copies: len(dirs)}
	if len(dirs) == 0 {
		return res, errors.New("gen: give at least one -dir")
	}
	if o.Files < 0 || o.FileKB < 1 || o.BigMB < 0 || o.Dirs < 1 || o.Jobs < 1 {
		return res, fmt.Errorf("gen: -files ≥ 0, -file-kb ≥ 1, -big-mb ≥ 0, -dirs ≥ 1, -jobs ≥ 1 (got %d, %d, %d, %d, %d)", o.Files, o.FileKB, o.BigMB, o.Dirs, o.Jobs)
	}
	start := time.Now()
	for _, d := range dirs {
		for s := range min(o.Dirs, max(o.Files, 1)) {
			if err := os.MkdirAll(filepath.Join(d, fmt.Sprintf("d%04d", s)), 0o755); err != nil {
				return res, fmt.Errorf("gen: %w", err)
			}
		}
	}
	var bytes atomic.Int64
	var firstErr error
	var errOnce sync.Once
	next := make(chan int)
	var wg sync.WaitGroup
	for range o.Jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, (3*o.FileKB/2+1)<<10)
			for i := range next {
				size := GenSize(o.Seed, i, o.FileKB)
				b := buf[:size]
				stream(o.Seed, kindGenData, uint64(i)).Read(b)
				for _, d := range dirs {
					if err := writeFile(filepath.Join(d, FileName(i, o.Dirs)), b); err != nil {
						errOnce.Do(func() { firstErr = err })
					}
				}
				bytes.Add(size)
			}
		}()
	}
	for i := range o.Files {
		next <- i
	}
	close(next)
	wg.Wait()
	if firstErr != nil {
		return res, firstErr
	}
	if o.BigMB > 0 {
		if err := genBig(dirs, o.Seed, int64(o.BigMB)<<20); err != nil {
			return res, err
		}
		bytes.Add(int64(o.BigMB) << 20)
	}
	for _, d := range dirs {
		for s := range min(o.Dirs, max(o.Files, 1)) {
			if err := os.Chtimes(filepath.Join(d, fmt.Sprintf("d%04d", s)), FixedMtime, FixedMtime); err != nil {
				return res, fmt.Errorf("gen: %w", err)
			}
		}
		if err := os.Chtimes(d, FixedMtime, FixedMtime); err != nil {
			return res, fmt.Errorf("gen: %w", err)
		}
	}
	res.Files, res.Bytes, res.Seconds = int64(o.Files)+int64(min(o.BigMB, 1)), bytes.Load(), time.Since(start).Seconds()
	return res, nil
}

// GenSize is the size of gen's file i: uniform in [K/2, 3K/2) KiB.
func GenSize(seed uint64, i, kb int) int64 {
	r := rand.New(stream(seed, kindGenSize, uint64(i)))
	return int64(kb)<<9 + r.Int64N(int64(kb)<<10)
}

// writeFile creates path with b and the fixed mtime.
func writeFile(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("gen: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = setMtime(f)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("gen: write %s: %w", path, err)
	}
	return nil
}

func setMtime(f *os.File) error {
	ts := unix.NsecToTimespec(FixedMtime.UnixNano())
	return unix.UtimesNanoAt(unix.AT_FDCWD, fmt.Sprintf("/proc/self/fd/%d", f.Fd()), []unix.Timespec{ts, ts}, 0)
}

// genBig writes "big" in every dir, 1 MiB at a time.
func genBig(dirs []string, seed uint64, size int64) error {
	var fs []*os.File
	defer func() {
		for _, f := range fs {
			f.Close()
		}
	}()
	for _, d := range dirs {
		f, err := os.OpenFile(filepath.Join(d, "big"), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
		if err != nil {
			return fmt.Errorf("gen: %w", err)
		}
		fs = append(fs, f)
	}
	src := stream(seed, kindBig, 0)
	buf := make([]byte, 1<<20)
	for left := size; left > 0; left -= int64(len(buf)) {
		b := buf[:min(left, int64(len(buf)))]
		src.Read(b)
		for _, f := range fs {
			if _, err := f.Write(b); err != nil {
				return fmt.Errorf("gen: write %s: %w", f.Name(), err)
			}
		}
	}
	for _, f := range fs {
		if err := setMtime(f); err != nil {
			return fmt.Errorf("gen: mtime of %s: %w", f.Name(), err)
		}
	}
	return nil
}

// ChangeOptions shape a change.
type ChangeOptions struct {
	Seed     uint64
	Pct      float64
	Create   int
	CreateKB int
	Remove   int
}

type fileInfo struct {
	path string // relative
	size int64
}

// walk lists the regular files of root, relative, in lexical order.
func walk(root string) ([]fileInfo, error) {
	var out []fileInfo
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		st, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		out = append(out, fileInfo{rel, st.Size()})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list the files of %s: %w", root, err)
	}
	return out, nil
}

// maxRemovable keeps change from removing the big file.
const maxRemovable = 64 << 20

// Change changes the tree at root as the package comment says.
func Change(root string, o ChangeOptions) (ChangeResult, *List, error) {
	var res ChangeResult
	l := &List{}
	if o.Pct < 0 || o.Pct > 50 || o.Create < 0 || o.CreateKB < 1 || o.Remove < 0 {
		return res, nil, fmt.Errorf("change: -pct in [0, 50], -create ≥ 0, -create-kb ≥ 1, -remove ≥ 0 (got %v, %d, %d, %d)", o.Pct, o.Create, o.CreateKB, o.Remove)
	}
	start := time.Now()
	files, err := walk(root)
	if err != nil {
		return res, nil, err
	}
	pick := rand.New(stream(o.Seed, kindPick, 0))

	// Files removed: among those under maxRemovable.
	var cands []int
	for i, f := range files {
		if f.size < maxRemovable {
			cands = append(cands, i)
		}
	}
	if o.Remove > len(cands) {
		return res, nil, fmt.Errorf("change: -remove %d but %s has only %d removable files", o.Remove, root, len(cands))
	}
	removed := map[int]bool{}
	for _, k := range pick.Perm(len(cands))[:o.Remove] {
		removed[cands[k]] = true
	}
	var kept []fileInfo
	for i, f := range files {
		if removed[i] {
			l.Removed = append(l.Removed, f.path)
			res.RemovedBytes += f.size
			continue
		}
		kept = append(kept, f)
	}
	slices.Sort(l.Removed)

	// Blocks rewritten: distinct, uniform over the kept files' blocks.
	first := make([]int64, len(kept)+1) // first block index of each file
	for i, f := range kept {
		first[i+1] = first[i] + (f.size+BlockSize-1)/BlockSize
	}
	total := first[len(kept)]
	res.BlocksTotal = total
	k := int64(float64(total)*o.Pct/100 + 0.5)
	chosen := make(map[int64]bool, k)
	for int64(len(chosen)) < k {
		chosen[pick.Int64N(total)] = true
	}
	blocks := make([]int64, 0, k)
	for b := range chosen {
		blocks = append(blocks, b)
	}
	slices.Sort(blocks)
	data := stream(o.Seed, kindBlocks, 0)
	buf := make([]byte, BlockSize)
	for i := 0; i < len(blocks); {
		fi, _ := slices.BinarySearch(first, blocks[i]+1)
		fi-- // the file holding blocks[i]
		f := kept[fi]
		fw := FileWrites{Path: f.path}
		for ; i < len(blocks) && blocks[i] < first[fi+1]; i++ {
			off := (blocks[i] - first[fi]) * BlockSize
			n := min(BlockSize, f.size-off)
			if m := len(fw.Extents); m > 0 && fw.Extents[m-1].Off+fw.Extents[m-1].Len == off {
				fw.Extents[m-1].Len += n
			} else {
				fw.Extents = append(fw.Extents, Extent{off, n})
			}
		}
		if err := rewrite(filepath.Join(root, f.path), fw.Extents, data, buf); err != nil {
			return res, nil, err
		}
		l.Writes = append(l.Writes, fw)
		for _, e := range fw.Extents {
			res.BytesRewritten += e.Len
		}
		res.FilesRewritten++
	}
	res.Blocks = k

	for _, p := range l.Removed {
		if err := os.Remove(filepath.Join(root, p)); err != nil {
			return res, nil, fmt.Errorf("change: %w", err)
		}
	}
	res.Removed = int64(len(l.Removed))

	// Created files: next to a random kept file, with names of this seed.
	if o.Create > 0 && len(kept) == 0 {
		return res, nil, fmt.Errorf("change: -create %d but %s has no file to create them next to", o.Create, root)
	}
	cbuf := make([]byte, (3*o.CreateKB/2+1)<<10)
	for i := range o.Create {
		dir := filepath.Dir(kept[pick.IntN(len(kept))].path)
		p := filepath.Join(dir, fmt.Sprintf("new-%d-%d", o.Seed, i))
		size := int64(o.CreateKB)<<9 + pick.Int64N(int64(o.CreateKB)<<10)
		b := cbuf[:size]
		stream(o.Seed, kindCreate, uint64(i)).Read(b)
		if err := os.WriteFile(filepath.Join(root, p), b, 0o644); err != nil {
			return res, nil, fmt.Errorf("change: create: %w", err)
		}
		l.Created = append(l.Created, p)
		res.CreatedBytes += size
	}
	res.Created = int64(o.Create)
	res.Seconds = time.Since(start).Seconds()
	return res, l, nil
}

// rewrite pwrites random bytes over the extents of path.
func rewrite(path string, ext []Extent, data io.Reader, buf []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return fmt.Errorf("change: %w", err)
	}
	for _, e := range ext {
		for off := e.Off; off < e.Off+e.Len; off += BlockSize {
			b := buf[:min(BlockSize, e.Off+e.Len-off)]
			data.Read(b)
			if _, err := f.WriteAt(b, off); err != nil {
				f.Close()
				return fmt.Errorf("change: rewrite %s at %d: %w", path, off, err)
			}
		}
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("change: close %s: %w", path, err)
	}
	return nil
}

func writeList(path string, l *List) error {
	b, err := json.Marshal(l)
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("change: write the list: %w", err)
	}
	return nil
}

func readList(path string) (*List, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("limit: read the list: %w", err)
	}
	var l List
	if err := json.Unmarshal(b, &l); err != nil {
		return nil, fmt.Errorf("limit: list %s: %w (write it with resyncwork change -list)", path, err)
	}
	return &l, nil
}

// Limit copies from src to dst only what l names, jobs files at once, then
// syncfs(dst), and times it all.
func Limit(l *List, src, dst string, jobs int) (LimitResult, error) {
	var res LimitResult
	if jobs < 1 {
		return res, fmt.Errorf("limit: -jobs %d: want ≥ 1", jobs)
	}
	start := time.Now()
	type task struct {
		w      *FileWrites
		create string
	}
	tasks := make(chan task)
	var bytes, extents atomic.Int64
	var firstErr error
	var errOnce sync.Once
	var wg sync.WaitGroup
	for range jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 1<<20)
			for t := range tasks {
				var n, e int64
				var err error
				if t.w != nil {
					n, e, err = copyExtents(filepath.Join(src, t.w.Path), filepath.Join(dst, t.w.Path), t.w.Extents, buf)
				} else {
					n, err = copyWhole(filepath.Join(src, t.create), filepath.Join(dst, t.create), buf)
				}
				if err != nil {
					errOnce.Do(func() { firstErr = err })
				}
				bytes.Add(n)
				extents.Add(e)
			}
		}()
	}
	for i := range l.Writes {
		tasks <- task{w: &l.Writes[i]}
	}
	for _, p := range l.Created {
		tasks <- task{create: p}
	}
	close(tasks)
	wg.Wait()
	if firstErr != nil {
		return res, firstErr
	}
	for _, p := range l.Removed {
		if err := os.Remove(filepath.Join(dst, p)); err != nil {
			return res, fmt.Errorf("limit: %w", err)
		}
	}
	d, err := os.Open(dst)
	if err != nil {
		return res, fmt.Errorf("limit: %w", err)
	}
	err = unix.Syncfs(int(d.Fd()))
	d.Close()
	if err != nil {
		return res, fmt.Errorf("limit: syncfs %s: %w", dst, err)
	}
	res.Seconds = time.Since(start).Seconds()
	res.Bytes, res.Extents = bytes.Load(), extents.Load()
	res.Files = int64(len(l.Writes) + len(l.Created) + len(l.Removed))
	return res, nil
}

func copyExtents(src, dst string, ext []Extent, buf []byte) (n, e int64, err error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, 0, fmt.Errorf("limit: %w", err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY, 0)
	if err != nil {
		return 0, 0, fmt.Errorf("limit: %w", err)
	}
	for _, x := range ext {
		for off := x.Off; off < x.Off+x.Len; {
			b := buf[:min(int64(len(buf)), x.Off+x.Len-off)]
			if _, err := in.ReadAt(b, off); err != nil {
				out.Close()
				return n, e, fmt.Errorf("limit: read %s at %d: %w", src, off, err)
			}
			if _, err := out.WriteAt(b, off); err != nil {
				out.Close()
				return n, e, fmt.Errorf("limit: write %s at %d: %w", dst, off, err)
			}
			off += int64(len(b))
			n += int64(len(b))
		}
		e++
	}
	if err := out.Close(); err != nil {
		return n, e, fmt.Errorf("limit: close %s: %w", dst, err)
	}
	return n, e, nil
}

// copyWhole copies src to a new dst with read/write (no copy_file_range:
// the limit copies bytes, as a replicator receiving them would).
func copyWhole(src, dst string, buf []byte) (int64, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, fmt.Errorf("limit: %w", err)
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return 0, fmt.Errorf("limit: %w", err)
	}
	var n int64
	for {
		m, rerr := in.Read(buf)
		if m > 0 {
			if _, err := out.Write(buf[:m]); err != nil {
				out.Close()
				return n, fmt.Errorf("limit: write %s: %w", dst, err)
			}
			n += int64(m)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			out.Close()
			return n, fmt.Errorf("limit: read %s: %w", src, rerr)
		}
	}
	if err := out.Close(); err != nil {
		return n, fmt.Errorf("limit: close %s: %w", dst, err)
	}
	return n, nil
}

// Live writes 4 KiB to file every interval until SIGTERM or SIGINT and
// returns the latencies of the writes.
func Live(file string, interval time.Duration) (LiveResult, error) {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, unix.SIGTERM, unix.SIGINT)
	if err := os.MkdirAll(filepath.Dir(file), 0o755); err != nil {
		return LiveResult{}, err
	}
	f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return LiveResult{}, err
	}
	defer f.Close()
	buf := make([]byte, BlockSize)
	var lat []time.Duration
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for i := 0; ; i++ {
		select {
		case <-stop:
			if len(lat) == 0 {
				return LiveResult{}, errors.New("live: stopped before its first write")
			}
			slices.Sort(lat)
			us := func(d time.Duration) float64 { return float64(d) / 1e3 }
			return LiveResult{Writes: int64(len(lat)), P50us: us(lat[len(lat)/2]), P99us: us(lat[len(lat)*99/100]), MaxUs: us(lat[len(lat)-1])}, nil
		case <-tick.C:
		}
		buf[0] = byte(i)
		t0 := time.Now()
		if _, err := f.WriteAt(buf, int64(i%256)*BlockSize); err != nil {
			return LiveResult{}, fmt.Errorf("live: write %s: %w", file, err)
		}
		lat = append(lat, time.Since(t0))
	}
}
