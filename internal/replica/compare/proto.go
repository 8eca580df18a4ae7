package compare

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/tandem-ha/tandem/internal/replica/op"
)

// Query encodings (a Query op's Data) and answers. Integers are varints
// (uvarint unless said), strings a uvarint length and the bytes, hashes 8
// bytes little-endian.
//
//	ListDir    params: inlineMax, pageMax, after (string), only (string)
//	           answer: status; if ok: self entry, count, entries, more (byte)
//	HashBlocks params: blockSize, cut (0: none; Off/Len of the op give
//	           the range, hashed up to cut at most: the primary's size)
//	           answer: status; unless missing: entry; if ok: count, hashes
//	Xattrs     answer: status; if ok: the list (op.AppendXattrs)
//	Skipped    answer: count, paths, overflow (byte)
//	FindInode  params: inode; answer: count, paths, truncated (byte)
//
// An entry: name, st_mode, uid, gid, size (varint), mtime seconds
// (varint), nanoseconds, nlink, inode, rdev, xattr digest (8 bytes),
// flags (byte: 1 hash follows, 2 target follows), [hash], [target].

// Answer statuses.
const (
	statusOK      = 0
	statusMissing = 1 // no such entry (or a parent is missing)
	statusOther   = 2 // another type than asked for (the entry tells which)
)

// Limits of the answers: bounded so one fits a wire reply (4 MiB).
const (
	maxPageEntries  = 4096
	maxPageBytes    = 1 << 20
	maxHashBlocks   = 1 << 16
	maxXattrsAnswer = 3 << 20
	maxSkippedBytes = 1 << 20
	minBlockSize    = 512
	maxBlockSize    = 16 << 20
	maxInline       = 1 << 20
)

// Entry is what the secondary reports of one directory entry, or of the
// file a HashBlocks query asked about.
type Entry struct {
	Name      string
	Mode      uint32 // st_mode: type and permission bits
	Uid, Gid  uint32
	Size      int64
	Mtime     op.Time
	Nlink     uint64
	Ino       uint64 // the secondary's inode number: link groups only
	Rdev      uint64
	Xattrs    uint64 // digest of the extended attributes (0: none)
	Target    string // symlink target
	Hash      uint64 // whole-content hash of a small regular file (HasHash)
	HasHash   bool
	hasTarget bool
}

func (e *Entry) typ() uint32 { return e.Mode & sIFMT }

const sIFMT = 0o170000

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

func appendEntry(b []byte, e *Entry) []byte {
	b = appendString(b, e.Name)
	b = binary.AppendUvarint(b, uint64(e.Mode))
	b = binary.AppendUvarint(b, uint64(e.Uid))
	b = binary.AppendUvarint(b, uint64(e.Gid))
	b = binary.AppendVarint(b, e.Size)
	b = binary.AppendVarint(b, e.Mtime.Sec)
	b = binary.AppendUvarint(b, uint64(e.Mtime.Nsec))
	b = binary.AppendUvarint(b, e.Nlink)
	b = binary.AppendUvarint(b, e.Ino)
	b = binary.AppendUvarint(b, e.Rdev)
	b = binary.LittleEndian.AppendUint64(b, e.Xattrs)
	var flags byte
	if e.HasHash {
		flags |= 1
	}
	if e.hasTarget {
		flags |= 2
	}
	b = append(b, flags)
	if e.HasHash {
		b = binary.LittleEndian.AppendUint64(b, e.Hash)
	}
	if e.hasTarget {
		b = appendString(b, e.Target)
	}
	return b
}

var errTruncated = errors.New("truncated answer")

// reader decodes; the first error sticks and later reads return zeros.
type reader struct {
	b   []byte
	err error
}

func (r *reader) fail() {
	if r.err == nil {
		r.err = errTruncated
	}
	r.b = nil
}

func (r *reader) byte() byte {
	if len(r.b) < 1 {
		r.fail()
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func (r *reader) uvarint() uint64 {
	v, n := binary.Uvarint(r.b)
	if n <= 0 {
		r.fail()
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) varint() int64 {
	v, n := binary.Varint(r.b)
	if n <= 0 {
		r.fail()
		return 0
	}
	r.b = r.b[n:]
	return v
}

func (r *reader) u64() uint64 {
	if len(r.b) < 8 {
		r.fail()
		return 0
	}
	v := binary.LittleEndian.Uint64(r.b)
	r.b = r.b[8:]
	return v
}

func (r *reader) string() string {
	n := r.uvarint()
	if n > uint64(len(r.b)) {
		r.fail()
		return ""
	}
	s := string(r.b[:n])
	r.b = r.b[n:]
	return s
}

func (r *reader) uint32() uint32 {
	v := r.uvarint()
	if v > 1<<32-1 {
		r.fail()
	}
	return uint32(v)
}

func (r *reader) entry(e *Entry) {
	e.Name = r.string()
	e.Mode = r.uint32()
	e.Uid = r.uint32()
	e.Gid = r.uint32()
	e.Size = r.varint()
	e.Mtime.Sec = r.varint()
	e.Mtime.Nsec = int64(r.uvarint())
	e.Nlink = r.uvarint()
	e.Ino = r.uvarint()
	e.Rdev = r.uvarint()
	e.Xattrs = r.u64()
	flags := r.byte()
	if flags&1 != 0 {
		e.HasHash = true
		e.Hash = r.u64()
	}
	if flags&2 != 0 {
		e.hasTarget = true
		e.Target = r.string()
	}
	if flags&^3 != 0 {
		r.fail()
	}
}

// ListParams are a ListDir query's parameters.
type ListParams struct {
	InlineMax int64  // regular files up to this size come with a content hash
	PageMax   int    // entries per answer (at most 4096)
	After     string // the page starts after this name (byte order); "" first
	Only      string // just this entry ("": all)
}

func (p *ListParams) append(b []byte) []byte {
	b = binary.AppendUvarint(b, uint64(p.InlineMax))
	b = binary.AppendUvarint(b, uint64(p.PageMax))
	b = appendString(b, p.After)
	return appendString(b, p.Only)
}

func parseListParams(b []byte) (ListParams, error) {
	r := reader{b: b}
	p := ListParams{InlineMax: int64(r.uvarint()), PageMax: int(r.uvarint()), After: r.string(), Only: r.string()}
	if r.err != nil || len(r.b) != 0 {
		return p, errors.New("bad listdir parameters")
	}
	if p.InlineMax < 0 || p.InlineMax > maxInline {
		return p, fmt.Errorf("listdir: inline hash limit %d out of range 0..%d", p.InlineMax, maxInline)
	}
	if p.PageMax <= 0 || p.PageMax > maxPageEntries {
		p.PageMax = maxPageEntries
	}
	return p, nil
}

// ListAnswer is a decoded ListDir answer.
type ListAnswer struct {
	Status  int
	Self    Entry   // the directory itself (Status ok)
	Entries []Entry // sorted by name
	More    bool    // more entries after the last one
}

// ListDirQuery builds a ListDir query op.
func ListDirQuery(dir string, p ListParams) *op.Op {
	return &op.Op{Kind: op.Query, Flags: op.QueryListDir, Path: dir, Data: p.append(nil)}
}

func appendListAnswer(b []byte, a *ListAnswer) []byte {
	b = append(b, byte(a.Status))
	if a.Status != statusOK {
		return b
	}
	b = appendEntry(b, &a.Self)
	b = binary.AppendUvarint(b, uint64(len(a.Entries)))
	for i := range a.Entries {
		b = appendEntry(b, &a.Entries[i])
	}
	if a.More {
		return append(b, 1)
	}
	return append(b, 0)
}

// ParseListAnswer decodes a ListDir answer.
func ParseListAnswer(b []byte) (*ListAnswer, error) {
	r := reader{b: b}
	a := &ListAnswer{Status: int(r.byte())}
	if a.Status == statusOK {
		r.entry(&a.Self)
		n := r.uvarint()
		if n > uint64(len(r.b)) {
			r.fail()
		} else {
			a.Entries = make([]Entry, n)
			for i := range a.Entries {
				r.entry(&a.Entries[i])
			}
		}
		a.More = r.byte() == 1
	} else if a.Status > statusOther {
		return nil, fmt.Errorf("listdir answer: unknown status %d", a.Status)
	}
	if r.err != nil || len(r.b) != 0 {
		return nil, errors.New("listdir answer: truncated or trailing bytes")
	}
	for i := 1; i < len(a.Entries); i++ {
		if a.Entries[i-1].Name >= a.Entries[i].Name {
			return nil, fmt.Errorf("listdir answer: entries not sorted (%q before %q)", a.Entries[i-1].Name, a.Entries[i].Name)
		}
	}
	return a, nil
}

// HashAnswer is a decoded HashBlocks answer.
type HashAnswer struct {
	Status int
	File   Entry    // unless Status is missing
	Hashes []uint64 // block i covers [Off+i*bs, min(Off+(i+1)*bs, size))
}

// HashBlocksQuery builds a HashBlocks query over [off, off+n), not past
// cut if cut > 0 (the primary's size, so that both sides hash the same
// bytes of its last block). n = 0 asks for the file's attributes only.
func HashBlocksQuery(file string, off, n, blockSize, cut int64) *op.Op {
	return &op.Op{Kind: op.Query, Flags: op.QueryHashBlocks, Path: file, Off: off, Len: n,
		Data: binary.AppendUvarint(binary.AppendUvarint(nil, uint64(blockSize)), uint64(cut))}
}

func appendHashAnswer(b []byte, a *HashAnswer) []byte {
	b = append(b, byte(a.Status))
	if a.Status == statusMissing {
		return b
	}
	b = appendEntry(b, &a.File)
	if a.Status != statusOK {
		return b
	}
	b = binary.AppendUvarint(b, uint64(len(a.Hashes)))
	for _, h := range a.Hashes {
		b = binary.LittleEndian.AppendUint64(b, h)
	}
	return b
}

// ParseHashAnswer decodes a HashBlocks answer.
func ParseHashAnswer(b []byte) (*HashAnswer, error) {
	r := reader{b: b}
	a := &HashAnswer{Status: int(r.byte())}
	if a.Status > statusOther {
		return nil, fmt.Errorf("hashblocks answer: unknown status %d", a.Status)
	}
	if a.Status != statusMissing {
		r.entry(&a.File)
	}
	if a.Status == statusOK {
		n := r.uvarint()
		if n > uint64(len(r.b))/8 {
			r.fail()
		} else {
			a.Hashes = make([]uint64, n)
			for i := range a.Hashes {
				a.Hashes[i] = r.u64()
			}
		}
	}
	if r.err != nil || len(r.b) != 0 {
		return nil, errors.New("hashblocks answer: truncated or trailing bytes")
	}
	return a, nil
}

// XattrsQuery builds an Xattrs query.
func XattrsQuery(p string) *op.Op {
	return &op.Op{Kind: op.Query, Flags: op.QueryXattrs, Path: p}
}

// ParseXattrsAnswer decodes an Xattrs answer: nil, false when the entry is
// missing.
func ParseXattrsAnswer(b []byte) ([]op.Xattr, bool, error) {
	if len(b) < 1 || b[0] > statusMissing {
		return nil, false, errors.New("xattrs answer: bad status")
	}
	if b[0] == statusMissing {
		if len(b) != 1 {
			return nil, false, errors.New("xattrs answer: trailing bytes")
		}
		return nil, false, nil
	}
	list, err := op.ParseXattrs(b[1:])
	if err != nil {
		return nil, false, fmt.Errorf("xattrs answer: %w", err)
	}
	return list, true, nil
}

// SkippedQuery builds a Skipped query.
func SkippedQuery() *op.Op { return &op.Op{Kind: op.Query, Flags: op.QuerySkipped} }

// ParseSkippedAnswer decodes a Skipped answer: the paths, and whether
// more were skipped than the secondary could remember (the engine then
// compares everything again).
func ParseSkippedAnswer(b []byte) (paths []string, overflow bool, err error) {
	r := reader{b: b}
	n := r.uvarint()
	if n > uint64(len(r.b)) {
		r.fail()
	}
	for i := uint64(0); i < n && r.err == nil; i++ {
		p := r.string()
		if err := op.CleanPath(p); err != nil {
			return nil, false, fmt.Errorf("skipped answer: %w", err)
		}
		paths = append(paths, p)
	}
	overflow = r.byte() == 1
	if r.err != nil || len(r.b) != 0 {
		return nil, false, errors.New("skipped answer: truncated or trailing bytes")
	}
	return paths, overflow, nil
}

// FindInodeQuery asks for the names of the secondary's inode ino.
func FindInodeQuery(ino uint64) *op.Op {
	return &op.Op{Kind: op.Query, Flags: op.QueryFindInode, Data: binary.AppendUvarint(nil, ino)}
}

// maxFound bounds the names a FindInode answer lists.
const maxFound = 1024

func appendPaths(b []byte, paths []string, more bool) []byte {
	b = binary.AppendUvarint(b, uint64(len(paths)))
	for _, p := range paths {
		b = appendString(b, p)
	}
	if more {
		return append(b, 1)
	}
	return append(b, 0)
}
