package wire

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/tandem-ha/tandem/internal/replica/op"
)

// Op encoding: kind (1 byte), a uvarint mask of the fields present (the
// non-zero ones), then each present field in mask order. Strings and bytes
// are a uvarint length and the bytes; integers are varints (zigzag where a
// field may be negative). Zero fields cost nothing, so a 4 KiB write costs
// about 4 KiB + path + 8 bytes.
const (
	fPath = 1 << iota
	fPath2
	fData
	fOff
	fLen
	fMode
	fRdev
	fUid
	fGid
	fAtime
	fMtime
	fFlags
	fName
	fAll = 1<<iota - 1
)

// MaxOpData is the largest Data an encoded op may carry. The Sender splits
// larger writes.
const MaxOpData = 4 << 20

var errShort = errors.New("truncated op")

// AppendOp appends the encoding of o to dst.
func AppendOp(dst []byte, o *op.Op) []byte {
	var mask uint64
	if o.Path != "" {
		mask |= fPath
	}
	if o.Path2 != "" {
		mask |= fPath2
	}
	if len(o.Data) != 0 {
		mask |= fData
	}
	if o.Off != 0 {
		mask |= fOff
	}
	if o.Len != 0 {
		mask |= fLen
	}
	if o.Mode != 0 {
		mask |= fMode
	}
	if o.Rdev != 0 {
		mask |= fRdev
	}
	if o.Uid != 0 {
		mask |= fUid
	}
	if o.Gid != 0 {
		mask |= fGid
	}
	if o.Atime != (op.Time{}) {
		mask |= fAtime
	}
	if o.Mtime != (op.Time{}) {
		mask |= fMtime
	}
	if o.Flags != 0 {
		mask |= fFlags
	}
	if o.Name != "" {
		mask |= fName
	}
	dst = append(dst, byte(o.Kind))
	dst = binary.AppendUvarint(dst, mask)
	if mask&fPath != 0 {
		dst = appendString(dst, o.Path)
	}
	if mask&fPath2 != 0 {
		dst = appendString(dst, o.Path2)
	}
	if mask&fData != 0 {
		dst = binary.AppendUvarint(dst, uint64(len(o.Data)))
		dst = append(dst, o.Data...)
	}
	if mask&fOff != 0 {
		dst = binary.AppendVarint(dst, o.Off)
	}
	if mask&fLen != 0 {
		dst = binary.AppendVarint(dst, o.Len)
	}
	if mask&fMode != 0 {
		dst = binary.AppendUvarint(dst, uint64(o.Mode))
	}
	if mask&fRdev != 0 {
		dst = binary.AppendUvarint(dst, o.Rdev)
	}
	if mask&fUid != 0 {
		dst = binary.AppendVarint(dst, o.Uid)
	}
	if mask&fGid != 0 {
		dst = binary.AppendVarint(dst, o.Gid)
	}
	if mask&fAtime != 0 {
		dst = binary.AppendVarint(dst, o.Atime.Sec)
		dst = binary.AppendVarint(dst, o.Atime.Nsec)
	}
	if mask&fMtime != 0 {
		dst = binary.AppendVarint(dst, o.Mtime.Sec)
		dst = binary.AppendVarint(dst, o.Mtime.Nsec)
	}
	if mask&fFlags != 0 {
		dst = binary.AppendUvarint(dst, uint64(o.Flags))
	}
	if mask&fName != 0 {
		dst = appendString(dst, o.Name)
	}
	return dst
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// DecodeOp decodes one op from the start of b into o and returns the number
// of bytes used. o.Data aliases b (no copy): it is valid as long as b is.
// The strings are copies, except that a string equal to the one already in
// o is kept, so decoding a run of ops on one file into the same Op
// allocates nothing. The op is not validated (op.Validate does that).
func DecodeOp(b []byte, o *op.Op) (int, error) {
	d := decoder{b: b}
	kind := op.Kind(d.byte())
	mask := d.uvarint()
	if d.err != nil {
		return 0, d.err
	}
	if mask&^fAll != 0 {
		return 0, fmt.Errorf("op with unknown fields %#x", mask)
	}
	prev := *o
	*o = op.Op{Kind: kind}
	if mask&fPath != 0 {
		o.Path = d.string(prev.Path)
	}
	if mask&fPath2 != 0 {
		o.Path2 = d.string(prev.Path2)
	}
	if mask&fData != 0 {
		o.Data = d.bytes()
	}
	if mask&fOff != 0 {
		o.Off = d.varint()
	}
	if mask&fLen != 0 {
		o.Len = d.varint()
	}
	if mask&fMode != 0 {
		o.Mode = d.uint32()
	}
	if mask&fRdev != 0 {
		o.Rdev = d.uvarint()
	}
	if mask&fUid != 0 {
		o.Uid = d.varint()
	}
	if mask&fGid != 0 {
		o.Gid = d.varint()
	}
	if mask&fAtime != 0 {
		o.Atime = op.Time{Sec: d.varint(), Nsec: d.varint()}
	}
	if mask&fMtime != 0 {
		o.Mtime = op.Time{Sec: d.varint(), Nsec: d.varint()}
	}
	if mask&fFlags != 0 {
		o.Flags = d.uint32()
	}
	if mask&fName != 0 {
		o.Name = d.string(prev.Name)
	}
	if d.err != nil {
		*o = op.Op{}
		return 0, fmt.Errorf("%s op: %w", kind, d.err)
	}
	return d.off, nil
}

type decoder struct {
	b   []byte
	off int
	err error
}

func (d *decoder) fail(err error) {
	if d.err == nil {
		d.err = err
	}
	d.off = len(d.b)
}

func (d *decoder) byte() byte {
	if d.off >= len(d.b) {
		d.fail(errShort)
		return 0
	}
	d.off++
	return d.b[d.off-1]
}

func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b[d.off:])
	if n <= 0 {
		d.fail(errShort)
		return 0
	}
	d.off += n
	return v
}

func (d *decoder) varint() int64 {
	v, n := binary.Varint(d.b[d.off:])
	if n <= 0 {
		d.fail(errShort)
		return 0
	}
	d.off += n
	return v
}

func (d *decoder) uint32() uint32 {
	v := d.uvarint()
	if v > 1<<32-1 {
		d.fail(errors.New("32-bit field out of range"))
		return 0
	}
	return uint32(v)
}

func (d *decoder) bytes() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)-d.off) || n > MaxOpData {
		d.fail(errShort)
		return nil
	}
	b := d.b[d.off : d.off+int(n) : d.off+int(n)]
	d.off += int(n)
	return b
}

func (d *decoder) string(prev string) string {
	b := d.bytes()
	if string(b) == prev { // no allocation for the comparison
		return prev
	}
	return string(b)
}
