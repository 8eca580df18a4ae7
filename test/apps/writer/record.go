package main

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"strconv"
)

// Record layout in data-<k>.log (little endian):
//
//	0  magic "TWR1"
//	4  id      uint64
//	12 length  uint32 (payload bytes)
//	16 crc32c  uint32 over bytes 0-15 and the payload
//	20 payload: deterministic from id (see fillPayload)
//
// A record is self-checking: its content can be verified without the ack
// log, and a record copied to the wrong place or id still fails the check.
const (
	headerLen  = 20
	maxPayload = 16 << 20
)

var magic = [4]byte{'T', 'W', 'R', '1'}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// dataName is the file record id goes to: ids are spread round-robin over
// files, so every file holds an increasing sequence with stride files.
func dataName(k int) string { return "data-" + strconv.Itoa(k) + ".log" }

func fileOf(id uint64, files int) int { return int((id - 1) % uint64(files)) }

func checkpointName(n uint64) string { return "checkpoint-" + strconv.FormatUint(n, 10) }

// splitmix64 is a tiny deterministic generator: payloads need only be
// distinct per id and reproducible, not random.
type splitmix64 uint64

func (s *splitmix64) next() uint64 {
	*s += 0x9e3779b97f4a7c15
	z := uint64(*s)
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9
	z = (z ^ (z >> 27)) * 0x94d049bb133111eb
	return z ^ (z >> 31)
}

func fillPayload(p []byte, seed uint64) {
	s := splitmix64(seed)
	i := 0
	for ; i+8 <= len(p); i += 8 {
		binary.LittleEndian.PutUint64(p[i:], s.next())
	}
	if i < len(p) {
		var tail [8]byte
		binary.LittleEndian.PutUint64(tail[:], s.next())
		copy(p[i:], tail[:])
	}
}

// encodeRecord writes record id with a payload of size bytes into buf
// (grown if needed) and returns it.
func encodeRecord(buf []byte, id uint64, size int) []byte {
	n := headerLen + size
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	buf = buf[:n]
	copy(buf, magic[:])
	binary.LittleEndian.PutUint64(buf[4:], id)
	binary.LittleEndian.PutUint32(buf[12:], uint32(size))
	fillPayload(buf[headerLen:], id)
	crc := crc32.Update(crc32.Checksum(buf[:16], castagnoli), castagnoli, buf[headerLen:])
	binary.LittleEndian.PutUint32(buf[16:], crc)
	return buf
}

// checkpointContent is what checkpoint n, taken after record last, holds.
func checkpointContent(n, last uint64) []byte {
	head := fmt.Sprintf("tandem-writer checkpoint %d last-id %d\n", n, last)
	b := make([]byte, len(head)+1000)
	copy(b, head)
	fillPayload(b[len(head):], n<<32^0xc0ffee)
	return b
}

// recInfo is one intact record of a data file.
type recInfo struct {
	id       uint64
	off, end int64
}

// region is a damaged byte range [start, end) between intact records.
type region struct{ start, end int64 }

// fileScan is what a data file holds.
type fileScan struct {
	size    int64
	records []recInfo
	damaged []region
	// badPayload counts records whose checksum is right but whose payload
	// is not the one of their id (a writer bug, never a replication one).
	badPayload []uint64
}

// validEnd is the end of the intact prefix: where the first damaged range
// starts, or the file size.
func (s *fileScan) validEnd() int64 {
	if len(s.damaged) > 0 {
		return s.damaged[0].start
	}
	return s.size
}

// window reads a file through a sliding buffer, so files of any size are
// scanned without holding them in memory.
type window struct {
	f    *os.File
	size int64
	buf  []byte
	base int64
	n    int
}

// at returns up to need bytes at off (fewer at the end of the file).
func (w *window) at(off int64, need int) ([]byte, error) {
	if off >= w.base && off+int64(need) <= w.base+int64(w.n) {
		return w.buf[off-w.base : off-w.base+int64(need)], nil
	}
	if need > len(w.buf) {
		w.buf = make([]byte, need)
	}
	w.base = off
	n, err := w.f.ReadAt(w.buf, off)
	if err != nil && !errors.Is(err, io.EOF) {
		w.n = 0
		return nil, err
	}
	w.n = n
	return w.buf[:min(n, need)], nil
}

// scanFile parses a data file: intact records in file order and the damaged
// ranges between them (a torn tail is a damaged range at the end).
func scanFile(path string) (*fileScan, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	w := &window{f: f, size: fi.Size(), buf: make([]byte, 1<<20)}
	s := &fileScan{size: fi.Size()}
	expect := make([]byte, 0, 64<<10)
	// try reports the record at off, or ok=false when none is intact there.
	try := func(off int64) (rec recInfo, ok bool, err error) {
		h, err := w.at(off, headerLen)
		if err != nil || len(h) < headerLen || !bytes.Equal(h[:4], magic[:]) {
			return rec, false, err
		}
		id := binary.LittleEndian.Uint64(h[4:])
		n := int(binary.LittleEndian.Uint32(h[12:]))
		if n > maxPayload || off+int64(headerLen+n) > w.size || id == 0 {
			return rec, false, nil
		}
		r, err := w.at(off, headerLen+n)
		if err != nil || len(r) < headerLen+n {
			return rec, false, err
		}
		crc := crc32.Update(crc32.Checksum(r[:16], castagnoli), castagnoli, r[headerLen:])
		if crc != binary.LittleEndian.Uint32(r[16:]) {
			return rec, false, nil
		}
		expect = encodeRecord(expect, id, n)
		if !bytes.Equal(expect, r) {
			s.badPayload = append(s.badPayload, id)
			return rec, false, nil
		}
		return recInfo{id: id, off: off, end: off + int64(headerLen+n)}, true, nil
	}
	var off int64
	for off < s.size {
		rec, ok, err := try(off)
		if err != nil {
			return nil, fmt.Errorf("read %s at byte %d: %w", path, off, err)
		}
		if ok {
			s.records = append(s.records, rec)
			off = rec.end
			continue
		}
		// Damaged: look for the next intact record after off.
		start, next := off, s.size
		pos := off + 1
	search:
		for pos < s.size {
			chunk, err := w.at(pos, 1<<20)
			if err != nil {
				return nil, fmt.Errorf("read %s at byte %d: %w", path, pos, err)
			}
			if len(chunk) == 0 {
				break
			}
			found := bytes.Index(chunk, magic[:])
			if found < 0 {
				// Keep 3 bytes: a magic may straddle the chunk boundary.
				pos += int64(max(1, len(chunk)-3))
				if len(chunk) < 4 {
					break
				}
				continue
			}
			cand := pos + int64(found)
			_, ok, err := try(cand)
			if err != nil {
				return nil, fmt.Errorf("read %s at byte %d: %w", path, cand, err)
			}
			if ok {
				next = cand
				break search
			}
			pos = cand + 1
		}
		s.damaged = append(s.damaged, region{start, next})
		off = next
	}
	return s, nil
}
