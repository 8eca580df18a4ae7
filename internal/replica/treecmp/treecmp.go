// Package treecmp compares two directory trees exhaustively: names, types,
// bytes, sizes, mode bits, owners, extended attributes, hard-link groups,
// symlink targets, mtimes and optionally sparse-file holes. The replication
// tests use it to prove that a secondary holds exactly what the primary
// holds.
//
// The walk never follows symlinks and resolves every entry relative to its
// parent's open directory (openat/fstatat), so trees deeper than PATH_MAX and
// names changed under a full path cannot mislead it.
package treecmp

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Kinds of difference, in Diff.What.
const (
	Missing   = "missing"    // in a, absent from b
	Extra     = "extra"      // in b, absent from a
	Type      = "type"       // file type differs (children are not compared)
	Size      = "size"       // regular file size
	Content   = "content"    // bytes differ (A/B name the first differing offset)
	Mode      = "mode"       // permission and special bits (07777)
	UID       = "uid"        // owner
	GID       = "gid"        // group
	Xattr     = "xattr"      // one extended attribute (A/B: name=value or absent)
	Nlink     = "nlink"      // link count of a non-directory
	LinkGroup = "link-group" // the names sharing this entry's inode differ
	Symlink   = "symlink"    // symlink target
	Mtime     = "mtime"      // modification time beyond the tolerance
	Rdev      = "rdev"       // device number of a device node
	Holes     = "holes"      // data/hole map (Options.Holes)
)

// Diff is one difference. Path is relative to the roots ("." for the roots
// themselves); A and B describe each side.
type Diff struct {
	Path, What, A, B string
}

func (d Diff) String() string {
	return fmt.Sprintf("%s: %s differs (a: %s, b: %s)", d.Path, d.What, d.A, d.B)
}

// Options tune Compare. The zero value compares everything except
// security.* attributes and holes, with exact mtimes.
type Options struct {
	// Security also compares security.* attributes (SELinux labels, file
	// capabilities); off by default as labels often differ between hosts.
	Security bool
	// Holes compares each regular file's data/hole map (SEEK_DATA/SEEK_HOLE).
	// Meaningful only when both trees live on the same kind of filesystem.
	Holes bool
	// MtimeTolerance is the largest mtime difference not reported.
	MtimeTolerance time.Duration
	// IgnoreMtime skips mtimes altogether; IgnoreDirMtime only those of
	// directories.
	IgnoreMtime, IgnoreDirMtime bool
	// Exclude skips entries (and whole subtrees) whose relative path or
	// base name matches one of these path.Match patterns.
	Exclude []string
	// MaxDiffs stops the walk after that many differences (0: no limit).
	MaxDiffs int
}

// errEnough stops the walk once MaxDiffs is reached.
var errEnough = errors.New("enough differences")

type inoKey struct{ dev, ino uint64 }

// linkPair records the inode of one path on each side; a zero key means the
// inode has a single name there.
type linkPair struct{ a, b inoKey }

type cmp struct {
	opts  Options
	diffs []Diff
	links map[string]linkPair // common non-directory paths with nlink > 1 on a side
	done  map[[2]inoKey]bool  // inode pairs whose content was compared already
	bufA  []byte
	bufB  []byte
}

// Compare walks the trees rooted at a and b and returns every difference,
// sorted by path. An error means the walk itself failed (unreadable entry,
// I/O error) and names the entry; differences found so far are returned
// with it.
//
// Not compared: atime, ctime, directory sizes and link counts (they follow
// from the entries), inode numbers, and the mode of symlinks (always 0777).
func Compare(a, b string, opts Options) ([]Diff, error) {
	for _, p := range opts.Exclude {
		if _, err := path.Match(p, ""); err != nil {
			return nil, fmt.Errorf("treecmp: exclude pattern %q: %w", p, err)
		}
	}
	ra, err := openRoot(a)
	if err != nil {
		return nil, err
	}
	defer ra.Close()
	rb, err := openRoot(b)
	if err != nil {
		return nil, err
	}
	defer rb.Close()

	c := &cmp{
		opts:  opts,
		links: map[string]linkPair{},
		done:  map[[2]inoKey]bool{},
		bufA:  make([]byte, 256<<10),
		bufB:  make([]byte, 256<<10),
	}
	err = c.root(ra, rb, a, b)
	if err == nil {
		c.linkGroups()
	}
	if errors.Is(err, errEnough) {
		err = nil
	}
	sort.SliceStable(c.diffs, func(i, j int) bool { return pathLess(c.diffs[i].Path, c.diffs[j].Path) })
	return c.diffs, err
}

// pathLess orders paths component by component, so "a/b" sorts before "a.b".
func pathLess(x, y string) bool {
	return slices.Compare(strings.Split(x, "/"), strings.Split(y, "/")) < 0
}

func openRoot(dir string) (*os.File, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("treecmp: open root %s: %w (want a readable directory)", dir, err)
	}
	return os.NewFile(uintptr(fd), dir), nil
}

func (c *cmp) add(p, what, a, b string) error {
	c.diffs = append(c.diffs, Diff{Path: p, What: what, A: a, B: b})
	if c.opts.MaxDiffs > 0 && len(c.diffs) >= c.opts.MaxDiffs {
		return errEnough
	}
	return nil
}

func (c *cmp) excluded(rel string) bool {
	for _, p := range c.opts.Exclude {
		if ok, _ := path.Match(p, rel); ok {
			return true
		}
		if ok, _ := path.Match(p, path.Base(rel)); ok {
			return true
		}
	}
	return false
}

func (c *cmp) root(ra, rb *os.File, a, b string) error {
	var sa, sb unix.Stat_t
	if err := unix.Fstat(int(ra.Fd()), &sa); err != nil {
		return fmt.Errorf("treecmp: stat %s: %w", a, err)
	}
	if err := unix.Fstat(int(rb.Fd()), &sb); err != nil {
		return fmt.Errorf("treecmp: stat %s: %w", b, err)
	}
	ea := entry{full: a, dir: ra, st: sa}
	eb := entry{full: b, dir: rb, st: sb}
	if err := c.attrs(".", &ea, &eb); err != nil {
		return err
	}
	return c.dir(".", ra, rb, a, b)
}

// entry is one side of a compared name.
type entry struct {
	full   string   // for error messages
	parent *os.File // directory holding it (nil for a root)
	name   string
	dir    *os.File // open directory, for directories
	st     unix.Stat_t
}

func (c *cmp) dir(rel string, da, db *os.File, fullA, fullB string) error {
	na, err := readNames(da, fullA)
	if err != nil {
		return err
	}
	nb, err := readNames(db, fullB)
	if err != nil {
		return err
	}
	i, j := 0, 0
	for i < len(na) || j < len(nb) {
		var name string
		inA, inB := false, false
		switch {
		case j >= len(nb) || i < len(na) && na[i] < nb[j]:
			name, inA = na[i], true
			i++
		case i >= len(na) || nb[j] < na[i]:
			name, inB = nb[j], true
			j++
		default:
			name, inA, inB = na[i], true, true
			i++
			j++
		}
		p := name
		if rel != "." {
			p = rel + "/" + name
		}
		if c.excluded(p) {
			continue
		}
		ea := entry{full: fullA + "/" + name, parent: da, name: name}
		eb := entry{full: fullB + "/" + name, parent: db, name: name}
		if inA {
			if err := statAt(&ea); err != nil {
				return err
			}
		}
		if inB {
			if err := statAt(&eb); err != nil {
				return err
			}
		}
		switch {
		case inA && !inB:
			err = c.add(p, Missing, typeName(ea.st.Mode), "absent")
		case inB && !inA:
			err = c.add(p, Extra, "absent", typeName(eb.st.Mode))
		default:
			err = c.entry(p, &ea, &eb)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func readNames(d *os.File, full string) ([]string, error) {
	if _, err := d.Seek(0, io.SeekStart); err != nil {
		return nil, fmt.Errorf("treecmp: rewind directory %s: %w", full, err)
	}
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, fmt.Errorf("treecmp: read directory %s: %w", full, err)
	}
	sort.Strings(names)
	return names, nil
}

func statAt(e *entry) error {
	if err := unix.Fstatat(int(e.parent.Fd()), e.name, &e.st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return fmt.Errorf("treecmp: stat %s: %w", e.full, err)
	}
	return nil
}

func (c *cmp) entry(p string, ea, eb *entry) error {
	ta, tb := ea.st.Mode&unix.S_IFMT, eb.st.Mode&unix.S_IFMT
	if ta != tb {
		return c.add(p, Type, typeName(ea.st.Mode), typeName(eb.st.Mode))
	}
	if ta == unix.S_IFDIR {
		var err error
		if ea.dir, err = openDirAt(ea); err != nil {
			return err
		}
		defer ea.dir.Close()
		if eb.dir, err = openDirAt(eb); err != nil {
			return err
		}
		defer eb.dir.Close()
	}
	if err := c.attrs(p, ea, eb); err != nil {
		return err
	}
	switch ta {
	case unix.S_IFDIR:
		return c.dir(p, ea.dir, eb.dir, ea.full, eb.full)
	case unix.S_IFREG:
		return c.regular(p, ea, eb)
	case unix.S_IFLNK:
		la, err := readlinkAt(ea)
		if err != nil {
			return err
		}
		lb, err := readlinkAt(eb)
		if err != nil {
			return err
		}
		if la != lb {
			return c.add(p, Symlink, strconv.Quote(la), strconv.Quote(lb))
		}
	case unix.S_IFCHR, unix.S_IFBLK:
		if ea.st.Rdev != eb.st.Rdev {
			return c.add(p, Rdev, devString(ea.st.Rdev), devString(eb.st.Rdev))
		}
	}
	return nil
}

func openDirAt(e *entry) (*os.File, error) {
	fd, err := unix.Openat(int(e.parent.Fd()), e.name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("treecmp: open directory %s: %w", e.full, err)
	}
	return os.NewFile(uintptr(fd), e.full), nil
}

func readlinkAt(e *entry) (string, error) {
	buf := make([]byte, 256)
	for {
		n, err := unix.Readlinkat(int(e.parent.Fd()), e.name, buf)
		if err != nil {
			return "", fmt.Errorf("treecmp: read symlink %s: %w", e.full, err)
		}
		if n < len(buf) {
			return string(buf[:n]), nil
		}
		buf = make([]byte, 2*len(buf))
	}
}

// attrs compares what every kind of entry has: mode, owner, link count,
// mtime and extended attributes.
func (c *cmp) attrs(p string, ea, eb *entry) error {
	sa, sb := &ea.st, &eb.st
	isDir := sa.Mode&unix.S_IFMT == unix.S_IFDIR
	isLink := sa.Mode&unix.S_IFMT == unix.S_IFLNK
	if !isLink && sa.Mode&07777 != sb.Mode&07777 {
		if err := c.add(p, Mode, fmt.Sprintf("%#o", sa.Mode&07777), fmt.Sprintf("%#o", sb.Mode&07777)); err != nil {
			return err
		}
	}
	if sa.Uid != sb.Uid {
		if err := c.add(p, UID, strconv.FormatUint(uint64(sa.Uid), 10), strconv.FormatUint(uint64(sb.Uid), 10)); err != nil {
			return err
		}
	}
	if sa.Gid != sb.Gid {
		if err := c.add(p, GID, strconv.FormatUint(uint64(sa.Gid), 10), strconv.FormatUint(uint64(sb.Gid), 10)); err != nil {
			return err
		}
	}
	if !isDir {
		if sa.Nlink != sb.Nlink {
			if err := c.add(p, Nlink, strconv.FormatUint(sa.Nlink, 10), strconv.FormatUint(sb.Nlink, 10)); err != nil {
				return err
			}
		}
		if sa.Nlink > 1 || sb.Nlink > 1 {
			var lp linkPair
			if sa.Nlink > 1 {
				lp.a = inoKey{sa.Dev, sa.Ino}
			}
			if sb.Nlink > 1 {
				lp.b = inoKey{sb.Dev, sb.Ino}
			}
			c.links[p] = lp
		}
	}
	if !c.opts.IgnoreMtime && !(isDir && c.opts.IgnoreDirMtime) {
		ma := time.Unix(sa.Mtim.Sec, sa.Mtim.Nsec)
		mb := time.Unix(sb.Mtim.Sec, sb.Mtim.Nsec)
		d := ma.Sub(mb)
		if d < 0 {
			d = -d
		}
		if d > c.opts.MtimeTolerance {
			if err := c.add(p, Mtime, fmtTime(ma), fmtTime(mb)); err != nil {
				return err
			}
		}
	}
	return c.xattrs(p, ea, eb)
}

func fmtTime(t time.Time) string { return t.UTC().Format("2006-01-02T15:04:05.000000000Z") }

func (c *cmp) xattrs(p string, ea, eb *entry) error {
	xa, err := readXattrs(ea)
	if err != nil {
		return err
	}
	xb, err := readXattrs(eb)
	if err != nil {
		return err
	}
	names := make([]string, 0, len(xa)+len(xb))
	for n := range xa {
		names = append(names, n)
	}
	for n := range xb {
		if _, ok := xa[n]; !ok {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	for _, n := range names {
		if !c.opts.Security && strings.HasPrefix(n, "security.") {
			continue
		}
		va, okA := xa[n]
		vb, okB := xb[n]
		if okA && okB && bytes.Equal(va, vb) {
			continue
		}
		da, db := "absent", "absent"
		if okA {
			da = n + "=" + fmtValue(va)
		}
		if okB {
			db = n + "=" + fmtValue(vb)
		}
		if err := c.add(p, Xattr, da, db); err != nil {
			return err
		}
	}
	return nil
}

// fmtValue shows an attribute value as a quoted string when printable,
// else as hex; long values are cut.
func fmtValue(v []byte) string {
	const maxShown = 64
	cut := ""
	if len(v) > maxShown {
		cut = fmt.Sprintf("...(%d bytes)", len(v))
		v = v[:maxShown]
	}
	printable := true
	for _, ch := range v {
		if ch < 0x20 || ch > 0x7e {
			printable = false
			break
		}
	}
	if printable {
		return strconv.Quote(string(v)) + cut
	}
	return "0x" + fmt.Sprintf("%x", v) + cut
}

// readXattrs lists every attribute the kernel shows this process. There is
// no listxattrat in x/sys, so an O_PATH descriptor reached through
// /proc/self/fd stands for the entry: it works for symlinks and special
// files too and never follows a symlink.
func readXattrs(e *entry) (map[string][]byte, error) {
	var fd int
	if e.dir != nil {
		fd = int(e.dir.Fd())
	} else {
		var err error
		fd, err = unix.Openat(int(e.parent.Fd()), e.name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return nil, fmt.Errorf("treecmp: open %s for its attributes: %w", e.full, err)
		}
		defer unix.Close(fd)
	}
	proc := "/proc/self/fd/" + strconv.Itoa(fd)
	var list []byte
	for size := 1024; ; size *= 4 {
		buf := make([]byte, size)
		n, err := unix.Listxattr(proc, buf)
		if errors.Is(err, unix.ERANGE) && size < 1<<24 {
			continue
		}
		if errors.Is(err, unix.ENOTSUP) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("treecmp: list attributes of %s: %w", e.full, err)
		}
		list = buf[:n]
		break
	}
	out := map[string][]byte{}
	for _, name := range strings.Split(string(list), "\x00") {
		if name == "" {
			continue
		}
		v, err := getXattr(proc, name)
		if errors.Is(err, unix.ENODATA) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("treecmp: read attribute %s of %s: %w", name, e.full, err)
		}
		out[name] = v
	}
	return out, nil
}

func getXattr(proc, name string) ([]byte, error) {
	for size := 256; ; size *= 4 {
		buf := make([]byte, size)
		n, err := unix.Getxattr(proc, name, buf)
		if errors.Is(err, unix.ERANGE) && size < 1<<24 {
			continue
		}
		if err != nil {
			return nil, err
		}
		return buf[:n], nil
	}
}

func (c *cmp) regular(p string, ea, eb *entry) error {
	sa, sb := &ea.st, &eb.st
	if sa.Size != sb.Size {
		if err := c.add(p, Size, strconv.FormatInt(sa.Size, 10), strconv.FormatInt(sb.Size, 10)); err != nil {
			return err
		}
	}
	pair := [2]inoKey{{sa.Dev, sa.Ino}, {sb.Dev, sb.Ino}}
	if c.done[pair] {
		return nil // another name of the same two inodes, compared already
	}
	if sa.Nlink > 1 || sb.Nlink > 1 {
		c.done[pair] = true
	}
	fa, err := openFileAt(ea)
	if err != nil {
		return err
	}
	defer fa.Close()
	fb, err := openFileAt(eb)
	if err != nil {
		return err
	}
	defer fb.Close()
	off, same, err := c.sameBytes(fa, fb, ea.full, eb.full)
	if err != nil {
		return err
	}
	// A longer file with the same prefix is a size difference only.
	if !same && !(sa.Size != sb.Size && off == min(sa.Size, sb.Size)) {
		at := "first difference at byte " + strconv.FormatInt(off, 10)
		if err := c.add(p, Content, at, at); err != nil {
			return err
		}
	}
	if c.opts.Holes {
		ha, err := dataMap(fa, ea.full)
		if err != nil {
			return err
		}
		hb, err := dataMap(fb, eb.full)
		if err != nil {
			return err
		}
		if !slices.Equal(ha, hb) {
			return c.add(p, Holes, fmtExtents(ha), fmtExtents(hb))
		}
	}
	return nil
}

func openFileAt(e *entry) (*os.File, error) {
	const flags = unix.O_RDONLY | unix.O_NOFOLLOW | unix.O_CLOEXEC | unix.O_NONBLOCK
	// O_NOATIME keeps the walk from touching atimes; it needs ownership or
	// CAP_FOWNER, so fall back without it.
	fd, err := unix.Openat(int(e.parent.Fd()), e.name, flags|unix.O_NOATIME, 0)
	if errors.Is(err, unix.EPERM) {
		fd, err = unix.Openat(int(e.parent.Fd()), e.name, flags, 0)
	}
	if err != nil {
		return nil, fmt.Errorf("treecmp: open %s: %w", e.full, err)
	}
	return os.NewFile(uintptr(fd), e.full), nil
}

// sameBytes streams both files in chunks; when they differ it returns the
// offset of the first differing byte (or the shorter file's length).
func (c *cmp) sameBytes(fa, fb *os.File, nameA, nameB string) (int64, bool, error) {
	var off int64
	for {
		na, errA := io.ReadFull(fa, c.bufA)
		nb, errB := io.ReadFull(fb, c.bufB)
		if errA != nil && errA != io.EOF && errA != io.ErrUnexpectedEOF {
			return 0, false, fmt.Errorf("treecmp: read %s at %d: %w", nameA, off, errA)
		}
		if errB != nil && errB != io.EOF && errB != io.ErrUnexpectedEOF {
			return 0, false, fmt.Errorf("treecmp: read %s at %d: %w", nameB, off, errB)
		}
		n := min(na, nb)
		if !bytes.Equal(c.bufA[:n], c.bufB[:n]) {
			for i := range n {
				if c.bufA[i] != c.bufB[i] {
					return off + int64(i), false, nil
				}
			}
		}
		if na != nb {
			return off + int64(n), false, nil
		}
		off += int64(n)
		if na < len(c.bufA) {
			return off, true, nil
		}
	}
}

// extent is a [start, end) range holding data.
type extent struct{ start, end int64 }

// dataMap lists a file's data extents with SEEK_DATA/SEEK_HOLE.
func dataMap(f *os.File, name string) ([]extent, error) {
	fd := int(f.Fd())
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("treecmp: stat %s: %w", name, err)
	}
	var out []extent
	var off int64
	for off < st.Size {
		start, err := unix.Seek(fd, off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole remains
		}
		if err != nil {
			return nil, fmt.Errorf("treecmp: seek data in %s from %d: %w", name, off, err)
		}
		end, err := unix.Seek(fd, start, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("treecmp: seek hole in %s from %d: %w", name, start, err)
		}
		out = append(out, extent{start, end})
		off = end
	}
	return out, nil
}

func fmtExtents(x []extent) string {
	if len(x) == 0 {
		return "no data"
	}
	var b strings.Builder
	b.WriteString("data at ")
	for i, e := range x {
		if i == 8 {
			fmt.Fprintf(&b, " ... (%d extents)", len(x))
			break
		}
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%d-%d", e.start, e.end)
	}
	return b.String()
}

// linkGroups reports names whose hard-link partners differ: two names of
// the tree share an inode in a if and only if they share one in b.
func (c *cmp) linkGroups() {
	groupsA := map[inoKey][]string{}
	groupsB := map[inoKey][]string{}
	for p, lp := range c.links {
		if lp.a != (inoKey{}) {
			groupsA[lp.a] = append(groupsA[lp.a], p)
		}
		if lp.b != (inoKey{}) {
			groupsB[lp.b] = append(groupsB[lp.b], p)
		}
	}
	group := func(groups map[inoKey][]string, k inoKey, p string) []string {
		if k == (inoKey{}) {
			return []string{p}
		}
		g := groups[k]
		sort.Slice(g, func(i, j int) bool { return pathLess(g[i], g[j]) })
		return g
	}
	paths := make([]string, 0, len(c.links))
	for p := range c.links {
		paths = append(paths, p)
	}
	sort.Slice(paths, func(i, j int) bool { return pathLess(paths[i], paths[j]) })
	for _, p := range paths {
		lp := c.links[p]
		ga, gb := group(groupsA, lp.a, p), group(groupsB, lp.b, p)
		if !slices.Equal(ga, gb) {
			if c.add(p, LinkGroup, fmtGroup(ga), fmtGroup(gb)) != nil {
				return
			}
		}
	}
}

func fmtGroup(g []string) string {
	if len(g) == 1 {
		return "no other name in the tree"
	}
	const maxShown = 8
	if len(g) > maxShown {
		return fmt.Sprintf("names of the inode: %s ... (%d names)", strings.Join(g[:maxShown], ", "), len(g))
	}
	return "names of the inode: " + strings.Join(g, ", ")
}

func typeName(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "regular file"
	case unix.S_IFDIR:
		return "directory"
	case unix.S_IFLNK:
		return "symlink"
	case unix.S_IFIFO:
		return "fifo"
	case unix.S_IFSOCK:
		return "socket"
	case unix.S_IFCHR:
		return "char device"
	case unix.S_IFBLK:
		return "block device"
	}
	return fmt.Sprintf("type %#o", mode&unix.S_IFMT)
}

func devString(d uint64) string {
	return fmt.Sprintf("%d:%d", unix.Major(d), unix.Minor(d))
}

// Summary counts what a tree holds: files are non-directory names (every
// hard link counts), dirs the directories below root, and bytes the sizes
// of regular files, each inode counted once. Symlinks are not followed.
func Summary(root string) (files, dirs int, bytes int64, err error) {
	r, err := openRoot(root)
	if err != nil {
		return 0, 0, 0, err
	}
	defer r.Close()
	seen := map[inoKey]bool{}
	var walk func(d *os.File, full string) error
	walk = func(d *os.File, full string) error {
		names, err := readNames(d, full)
		if err != nil {
			return err
		}
		for _, name := range names {
			e := entry{full: full + "/" + name, parent: d, name: name}
			if err := statAt(&e); err != nil {
				return err
			}
			switch e.st.Mode & unix.S_IFMT {
			case unix.S_IFDIR:
				dirs++
				sub, err := openDirAt(&e)
				if err != nil {
					return err
				}
				err = walk(sub, e.full)
				sub.Close()
				if err != nil {
					return err
				}
			case unix.S_IFREG:
				files++
				k := inoKey{e.st.Dev, e.st.Ino}
				if e.st.Nlink > 1 {
					if seen[k] {
						continue
					}
					seen[k] = true
				}
				bytes += e.st.Size
			default:
				files++
			}
		}
		return nil
	}
	err = walk(r, root)
	return files, dirs, bytes, err
}
