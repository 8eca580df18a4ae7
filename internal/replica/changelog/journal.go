package changelog

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
)

// On-disk format of the journal (one file, "journal" in the directory):
//
//	header (32 bytes):
//	  magic "TNDMCLOG" | version u16 | zone shift u8 | 0 u8 | 0 u32 |
//	  file id u64 (random) | crc32c of the 24 bytes before it u32 | 0 u32
//	records, each:
//	  length u32 (of the body, 1..maxRecord) |
//	  crc32c u32 of (file id u64, record index u64, body) |
//	  body: type u8, then fields as unsigned varints (see the types below):
//	    key = dev, ino; slot = zone index, or 2^64-1 (directory entries),
//	    2^64-2 (attributes), 2^64-3 (extent: lo, n follow);
//	    runs = count (3-byte varint), then (gap from the previous run's
//	    end, length) per run
//	zeros up to the end of the file (preallocated, so that an fdatasync
//	after an append does not change the file size)
//
// All integers are little endian. The crc binds each record to its file
// (a stale block of an older journal is rejected) and to its position (a
// record copied elsewhere is rejected). A file is written as a checkpoint
// (the whole state, ending with recCheckpoint) into a temporary file that is
// synced and renamed over the journal; records are then appended in batches
// of at most maxBatch bytes, each synced before the next is written. So only
// the last batch can be torn by a power cut: the reader stops at the first
// record that is incomplete, fails its crc or is zero, and accepts that only
// if nothing but zeros follows more than maxBatch bytes after it; otherwise
// (or before recCheckpoint) the records are damaged and Open fails with
// ErrLost.

const (
	magic        = "TNDMCLOG"
	version      = 1
	headerSize   = 32
	recHdrSize   = 8
	maxRecord    = 64 << 10
	minZoneShift = 12
	maxZoneShift = 30
)

// maxBatch bounds the bytes written between two fdatasyncs (a variable so
// that tests can lower it).
var maxBatch = 1 << 20

// Record types.
const (
	recCheckpoint   = 1  // end of the checkpoint part
	recNeedFull     = 2  // u8: records incomplete, a full resync is needed
	recAlone        = 3  // u8: running without peer
	recActive       = 4  // key, slot, [lo, n for extents; n for zones]
	recEvict        = 5  // key, slot: left the active set, acknowledged
	recToDirty      = 6  // key, slot, [lo, n]: left the active set into DIRTY
	recDirtyFile    = 7  // key, flags, runs: add to DIRTY
	recDirtyDir     = 8  // key
	recClearFile    = 9  // key: drop the file from DIRTY
	recClearDir     = 10 // key
	recInflightFile = 11 // key, flags, runs: add to the in-flight set
	recInflightDir  = 12 // key
	recInflightDrop = 13 // empty the in-flight set
	recSizes        = 14 // dirty files, dirty dirs, in-flight files, in-flight dirs (map sizes)
	recActiveExt    = 15 // key, log2 zones per extent, first extent, count
	recEvictExt     = 16 // key, first zone of the extent: left the active set
)

const flagMeta = 1

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func encodeHeader(zoneShift uint, id uint64) []byte {
	h := make([]byte, headerSize)
	copy(h, magic)
	binary.LittleEndian.PutUint16(h[8:], version)
	h[10] = byte(zoneShift)
	binary.LittleEndian.PutUint64(h[16:], id)
	binary.LittleEndian.PutUint32(h[24:], crc32.Checksum(h[:24], castagnoli))
	return h
}

func recordCRC(id, index uint64, body []byte) uint32 {
	var pre [16]byte
	binary.LittleEndian.PutUint64(pre[:], id)
	binary.LittleEndian.PutUint64(pre[8:], index)
	return crc32.Update(crc32.Checksum(pre[:], castagnoli), castagnoli, body)
}

// encoder appends records of one file.
type encoder struct {
	id    uint64
	index uint64 // index of the next record
}

// begin starts a record of type t at the end of b; finish completes it.
func (e *encoder) begin(b []byte, t byte) ([]byte, int) {
	start := len(b)
	b = append(b, 0, 0, 0, 0, 0, 0, 0, 0, t)
	return b, start
}

func (e *encoder) finish(b []byte, start int) []byte {
	body := b[start+recHdrSize:]
	binary.LittleEndian.PutUint32(b[start:], uint32(len(body)))
	binary.LittleEndian.PutUint32(b[start+4:], recordCRC(e.id, e.index, body))
	e.index++
	return b
}

func appendKey(b []byte, k Key) []byte {
	b = binary.AppendUvarint(b, k.Dev)
	return binary.AppendUvarint(b, k.Ino)
}

// runsBody appends to a record body begun by begin: the key, the flags and
// as many of rs as fit in maxRecord; it returns the runs left for another
// record.
func runsBody(b []byte, start int, k Key, meta bool, rs []run) ([]byte, []run) {
	b = appendKey(b, k)
	var flags uint64
	if meta {
		flags |= flagMeta
	}
	b = binary.AppendUvarint(b, flags)
	// The count is patched: a fixed 3-byte varint (count < 2^21).
	cpos := len(b)
	b = append(b, 0x80, 0x80, 0)
	var prev uint64
	n := 0
	for len(rs) > 0 && len(b)-start < maxRecord-32 {
		r := rs[0]
		b = binary.AppendUvarint(b, r.lo-prev)
		b = binary.AppendUvarint(b, r.hi-r.lo)
		prev = r.hi
		rs = rs[1:]
		n++
	}
	b[cpos] = byte(n) | 0x80
	b[cpos+1] = byte(n>>7) | 0x80
	b[cpos+2] = byte(n >> 14)
	return b, rs
}

// replay is the state read back from a journal.
type replay struct {
	zoneShift uint
	needFull  bool
	alone     bool
	active    map[slotKey]run // extent slots keep their hull
	ext       map[slotKey]run // active extents by first zone: their zones
	dirty     set
	inflight  set
	records   int
	bytes     int // size of the journal read
	// tornAt is the offset where reading stopped before the end of the data
	// (a torn tail), or -1.
	tornAt int64
}

// errCorrupt wraps ErrLost with what is wrong.
func corrupt(format string, a ...any) error {
	return fmt.Errorf("%s: %w", fmt.Sprintf(format, a...), ErrLost)
}

// decode reads a whole journal. It never panics on any input: damage
// returns an error wrapping ErrLost.
func decode(data []byte) (*replay, error) {
	if len(data) < headerSize {
		return nil, corrupt("journal is %d bytes, shorter than its header", len(data))
	}
	h := data[:headerSize]
	if string(h[:8]) != magic {
		return nil, corrupt("journal header: bad magic %q", h[:8])
	}
	if crc32.Checksum(h[:24], castagnoli) != binary.LittleEndian.Uint32(h[24:]) {
		return nil, corrupt("journal header: checksum mismatch")
	}
	if v := binary.LittleEndian.Uint16(h[8:]); v != version {
		return nil, fmt.Errorf("journal format version %d, this agent reads version %d: run the matching tandem version, or start a full resync: %w", v, version, ErrLost)
	}
	shift := uint(h[10])
	if shift < minZoneShift || shift > maxZoneShift {
		return nil, corrupt("journal header: zone size 2^%d out of range", shift)
	}
	id := binary.LittleEndian.Uint64(h[16:])
	r := &replay{zoneShift: shift, active: map[slotKey]run{}, ext: map[slotKey]run{}, dirty: newSet(), inflight: newSet(), tornAt: -1, bytes: len(data)}
	off := headerSize
	var index uint64
	checkpointed := false
	for off < len(data) {
		bad := ""
		var body []byte
		switch {
		case len(data)-off < recHdrSize:
			bad = "incomplete record header"
		default:
			n := int(binary.LittleEndian.Uint32(data[off:]))
			sum := binary.LittleEndian.Uint32(data[off+4:])
			switch {
			case n == 0:
				bad = "end"
			case n > maxRecord:
				bad = fmt.Sprintf("record length %d", n)
			case n > len(data)-off-recHdrSize:
				bad = "incomplete record"
			default:
				body = data[off+recHdrSize : off+recHdrSize+n]
				if recordCRC(id, index, body) != sum {
					bad = "checksum mismatch"
				}
			}
		}
		if bad != "" {
			if !checkpointed {
				return nil, corrupt("record %d at offset %d: %s before the end of the checkpoint", index, off, bad)
			}
			// A torn tail is at most one batch long; beyond it only zeros.
			tail := data[min(len(data), off+maxBatch):]
			if len(bytes.TrimRight(tail, "\x00")) != 0 {
				return nil, corrupt("record %d at offset %d: %s, with data more than %d bytes after it: damaged, not torn by a power cut", index, off, bad, maxBatch)
			}
			if bad != "end" || len(bytes.TrimRight(data[off:], "\x00")) != 0 {
				r.tornAt = int64(off)
			}
			break
		}
		if err := r.apply(body, &checkpointed); err != nil {
			return nil, corrupt("record %d at offset %d: %v", index, off, err)
		}
		off += recHdrSize + len(body)
		index++
		r.records++
	}
	if !checkpointed {
		return nil, corrupt("journal ends at offset %d before the end of its checkpoint", len(data))
	}
	return r, nil
}

var errShort = errors.New("truncated field")

type reader struct {
	b   []byte
	max uint64 // zone indices are below
	err error
}

func (d *reader) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errShort
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *reader) key() Key { return Key{Dev: d.uvarint(), Ino: d.uvarint()} }

func (d *reader) byte() byte {
	if d.err != nil {
		return 0
	}
	if len(d.b) == 0 {
		d.err = errShort
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

// zoneRange reads lo, n and checks the range.
func (d *reader) zoneRange() (uint64, uint64) {
	lo, n := d.uvarint(), d.uvarint()
	if d.err == nil && (n == 0 || lo >= d.max || n > d.max-lo) {
		d.err = fmt.Errorf("zone range %d+%d out of bounds", lo, n)
	}
	return lo, lo + n
}

func (d *reader) slot() uint64 {
	s := d.uvarint()
	if d.err == nil && s >= d.max && s != slotDir && s != slotMeta && s != slotExtent {
		d.err = fmt.Errorf("slot %d out of bounds", s)
	}
	return s
}

func (d *reader) runs() ([]run, error) {
	n := d.uvarint()
	if d.err != nil {
		return nil, d.err
	}
	if n > uint64(len(d.b)) {
		return nil, fmt.Errorf("%d runs in %d bytes", n, len(d.b))
	}
	rs := make([]run, 0, n)
	var prev uint64
	for i := uint64(0); i < n; i++ {
		gap, l := d.uvarint(), d.uvarint()
		if d.err != nil {
			return nil, d.err
		}
		if (i > 0 && gap == 0) || l == 0 || gap >= d.max-prev || l > d.max-prev-gap {
			return nil, fmt.Errorf("run %d (+%d, %d) out of order or bounds", i, gap, l)
		}
		lo := prev + gap
		rs = append(rs, run{lo, lo + l})
		prev = lo + l
	}
	return rs, nil
}

// apply replays one record body.
func (r *replay) apply(body []byte, checkpointed *bool) error {
	// Zone indices address at most 2^63 bytes.
	d := &reader{b: body[1:], max: 1 << (63 - r.zoneShift)}
	t := body[0]
	switch t {
	case recCheckpoint:
		if *checkpointed {
			return errors.New("second checkpoint end")
		}
		*checkpointed = true
	case recNeedFull:
		r.needFull = d.byte() != 0
	case recAlone:
		r.alone = d.byte() != 0
	case recActive:
		k, s := d.key(), d.slot()
		switch s {
		case slotDir, slotMeta:
			r.active[slotKey{k, s}] = run{}
		case slotExtent:
			lo, hi := d.zoneRange()
			if d.err != nil {
				break
			}
			sk := slotKey{k, s}
			if old, ok := r.active[sk]; ok {
				lo, hi = min(lo, old.lo), max(hi, old.hi)
			}
			r.active[sk] = run{lo, hi}
		default:
			n := d.uvarint()
			if d.err == nil && (n == 0 || n > maxTouchZones || n > d.max-s) {
				return fmt.Errorf("active zone count %d", n)
			}
			for z := s; z < s+n; z++ {
				r.active[slotKey{k, z}] = run{}
			}
		}
	case recEvict:
		k, s := d.key(), d.slot()
		delete(r.active, slotKey{k, s})
	case recActiveExt:
		k, xs, x, n := d.key(), d.uvarint(), d.uvarint(), d.uvarint()
		if d.err != nil {
			break
		}
		if xs > maxExtentShift-minZoneShift || n == 0 || n > maxTouchZones || x >= d.max>>xs || n > d.max>>xs-x {
			return fmt.Errorf("active extents %d+%d of 2^%d zones out of bounds", x, n, xs)
		}
		for i := x; i < x+n; i++ {
			lo := i << xs
			r.ext[slotKey{k, lo}] = run{lo, lo + 1<<xs}
		}
	case recEvictExt:
		k, lo := d.key(), d.uvarint()
		delete(r.ext, slotKey{k, lo})
	case recToDirty:
		k, s := d.key(), d.slot()
		var lo, hi uint64
		if s == slotExtent {
			lo, hi = d.zoneRange()
		}
		if d.err == nil {
			delete(r.active, slotKey{k, s})
			r.dirty.addSlot(k, s, lo, hi, 0)
		}
	case recDirtyFile, recInflightFile:
		k := d.key()
		flags := d.uvarint()
		rs, err := d.runs()
		if err != nil {
			return err
		}
		if flags&^flagMeta != 0 {
			return fmt.Errorf("unknown flags %#x", flags)
		}
		s := &r.dirty
		if t == recInflightFile {
			s = &r.inflight
		}
		if flags&flagMeta != 0 {
			s.addMeta(k, 0)
		}
		for _, x := range rs {
			s.addZones(k, x.lo, x.hi, 0)
		}
	case recDirtyDir:
		r.dirty.addDir(d.key(), 0)
	case recInflightDir:
		r.inflight.addDir(d.key(), 0)
	case recClearFile:
		r.dirty.dropFile(d.key())
	case recClearDir:
		delete(r.dirty.dirs, d.key())
	case recInflightDrop:
		r.inflight = newSet()
	case recSizes:
		// Presize the maps (bounded by what the journal can hold: each
		// entry takes more than 8 bytes).
		var n [4]int
		for i := range n {
			n[i] = int(min(d.uvarint(), uint64(r.bytes/8)))
		}
		if d.err == nil && r.dirty.len() == 0 && r.inflight.len() == 0 {
			r.dirty = set{files: make(map[Key]fileSet, n[0]), dirs: make(map[Key]uint64, n[1])}
			r.inflight = set{files: make(map[Key]fileSet, n[2]), dirs: make(map[Key]uint64, n[3])}
		}
	default:
		return fmt.Errorf("unknown record type %d (written by a newer version?)", t)
	}
	if d.err != nil {
		return fmt.Errorf("type %d: %v", t, d.err)
	}
	if len(d.b) != 0 {
		return fmt.Errorf("type %d: %d unexpected trailing bytes", t, len(d.b))
	}
	return nil
}
