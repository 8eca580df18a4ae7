package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// report is the outcome of verify (also its --json output).
type report struct {
	OK      bool `json:"ok"`
	Acked   int  `json:"acked"`   // acknowledged records
	Present int  `json:"present"` // of those, found intact in their file
	// Lost lists acknowledged ids not found intact; Corrupt the subset
	// whose place in the file holds damaged bytes (the rest is missing).
	Lost    []uint64 `json:"lost"`
	Corrupt []uint64 `json:"corrupt"`
	// Holes lists unacknowledged ids missing before a later intact record
	// of the same file: the writer is sequential, so they were durable too.
	Holes       []uint64         `json:"holes"`
	Records     int              `json:"records"` // intact records, acknowledged or not
	Checkpoints checkpointReport `json:"checkpoints"`
	Problems    []string         `json:"problems"` // order, misplaced or damaged data, ack log errors
	Notes       []string         `json:"notes"`    // harmless: torn tails after the last ack
}

type checkpointReport struct {
	Acked       int      `json:"acked"`   // acknowledged and not removed
	Present     int      `json:"present"` // of those, present with the right content
	Removed     int      `json:"removed"` // removal acknowledged
	Lost        []string `json:"lost"`
	Corrupt     []string `json:"corrupt"`
	Resurrected []string `json:"resurrected"` // removal acknowledged, yet present
}

func (r *report) problem(format string, args ...any) {
	r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
}

// verify checks the data directory against the ack log. The error is for
// when the check itself cannot run (unreadable ack log or directory).
func verify(dir, ackLog string) (*report, error) {
	st, err := readAckLog(ackLog)
	if err != nil {
		return nil, err
	}
	if st == nil {
		return nil, fmt.Errorf("ack log %s is missing or empty: nothing was acknowledged there", ackLog)
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("data directory %s: not a readable directory (%v)", dir, err)
	}
	r := &report{Acked: len(st.acked), Lost: []uint64{}, Corrupt: []uint64{}, Holes: []uint64{}, Problems: []string{}, Notes: []string{}}
	r.Problems = append(r.Problems, st.problems...)
	acked := make([][]uint64, st.files)
	for _, id := range st.acked {
		k := fileOf(id, st.files)
		acked[k] = append(acked[k], id)
	}
	for k := range st.files {
		if err := verifyFile(r, filepath.Join(dir, dataName(k)), k, st.files, acked[k]); err != nil {
			return nil, err
		}
	}
	sortIDs(r.Lost)
	sortIDs(r.Corrupt)
	sortIDs(r.Holes)
	if err := verifyCheckpoints(r, dir, st); err != nil {
		return nil, err
	}
	c := r.Checkpoints
	r.OK = len(r.Lost) == 0 && len(r.Holes) == 0 && len(r.Problems) == 0 &&
		len(c.Lost) == 0 && len(c.Corrupt) == 0 && len(c.Resurrected) == 0
	return r, nil
}

func sortIDs(s []uint64) { sort.Slice(s, func(i, j int) bool { return s[i] < s[j] }) }

func verifyFile(r *report, path string, k, files int, acked []uint64) error {
	name := filepath.Base(path)
	s, err := scanFile(path)
	if errors.Is(err, os.ErrNotExist) {
		if len(acked) > 0 {
			r.Lost = append(r.Lost, acked...)
			r.problem("%s is missing: %d acknowledged records lost (%s)", name, len(acked), idRanges(acked))
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("scan %s: %w", path, err)
	}
	for _, id := range s.badPayload {
		r.problem("%s: record %d has a valid checksum but not the payload of its id (writer bug?)", name, id)
	}
	r.Records += len(s.records)
	present := make(map[uint64]bool, len(s.records))
	var prev uint64
	for _, rec := range s.records {
		if fileOf(rec.id, files) != k {
			r.problem("%s: record %d at byte %d belongs in %s", name, rec.id, rec.off, dataName(fileOf(rec.id, files)))
		}
		if rec.id <= prev {
			r.problem("%s: record %d at byte %d comes after record %d: out of order or duplicated", name, rec.id, rec.off, prev)
		}
		prev = max(prev, rec.id)
		present[rec.id] = true
	}
	var lastAcked uint64
	if len(acked) > 0 {
		lastAcked = acked[len(acked)-1]
	}
	// Damaged bytes are harmless only as a torn tail after every
	// acknowledged record (an interrupted, unacknowledged append).
	for i, d := range s.damaged {
		tail := i == len(s.damaged)-1 && d.end == s.size
		if tail && !ackedAfter(s, acked, d.start) {
			r.Notes = append(r.Notes, fmt.Sprintf("%s: torn tail at bytes %d-%d after the last acknowledged record (an unacknowledged append)", name, d.start, d.end))
			continue
		}
		r.problem("%s: damaged bytes at %d-%d", name, d.start, d.end)
	}
	var lost []uint64
	for _, id := range acked {
		if present[id] {
			r.Present++
			continue
		}
		lost = append(lost, id)
		r.Lost = append(r.Lost, id)
	}
	if len(lost) > 0 {
		corrupt := damagedIDs(s, k, files)
		for _, id := range lost {
			if corrupt(id) {
				r.Corrupt = append(r.Corrupt, id)
			}
		}
	}
	if len(lost) > 0 {
		r.problem("%s: %d acknowledged records not intact (%s); file is %d bytes, %d intact records",
			name, len(lost), idRanges(lost), s.size, len(s.records))
	}
	// Holes: this file's unacknowledged ids missing below its highest
	// intact or acknowledged id.
	top := max(prev, lastAcked)
	ackSet := make(map[uint64]bool, len(acked))
	for _, id := range acked {
		ackSet[id] = true
	}
	for id := uint64(k + 1); id < top; id += uint64(files) {
		if !present[id] && !ackSet[id] {
			r.Holes = append(r.Holes, id)
		}
	}
	return nil
}

// ackedAfter reports whether an acknowledged id's place lies at or after
// byte off: either not intact before off, or intact after it.
func ackedAfter(s *fileScan, acked []uint64, off int64) bool {
	before := map[uint64]bool{}
	for _, rec := range s.records {
		if rec.end <= off {
			before[rec.id] = true
		}
	}
	for _, id := range acked {
		if !before[id] {
			return true
		}
	}
	return false
}

// damagedIDs estimates which ids of file k had their place overwritten by
// damaged bytes: in each gap between intact records, as many of the gap's
// ids (in order) as the damaged bytes there can hold, at the size of a
// neighbouring intact record (all of them when no record is intact).
func damagedIDs(s *fileScan, k, files int) func(id uint64) bool {
	type span struct{ first, last uint64 } // ids of one residue, inclusive
	var spans []span
	stride := uint64(files)
	for i := 0; i <= len(s.records); i++ {
		start, end := int64(0), s.size
		first := uint64(k + 1)    // first id of the gap
		last := uint64(1<<64 - 1) // last id of the gap
		recLen := int64(0)
		if i > 0 {
			p := s.records[i-1]
			start, first, recLen = p.end, p.id+stride, p.end-p.off
		}
		if i < len(s.records) {
			n := s.records[i]
			end, recLen = n.off, n.end-n.off
			if n.id <= first {
				continue // no id fits before it (or out of order: reported elsewhere)
			}
			last = n.id - stride
		}
		var dam int64
		for _, d := range s.damaged {
			dam += max(0, min(d.end, end)-max(d.start, start))
		}
		if dam == 0 {
			continue
		}
		if recLen > 0 {
			count := uint64((dam + recLen - 1) / recLen)
			if count <= (last-first)/stride {
				last = first + (count-1)*stride
			}
		}
		spans = append(spans, span{first, last})
	}
	return func(id uint64) bool {
		for _, sp := range spans {
			if id >= sp.first && id <= sp.last {
				return true
			}
		}
		return false
	}
}

func verifyCheckpoints(r *report, dir string, st *ackState) error {
	c := &r.Checkpoints
	c.Lost, c.Corrupt, c.Resurrected = []string{}, []string{}, []string{}
	ns := make([]uint64, 0, len(st.checkpoints))
	for n := range st.checkpoints {
		ns = append(ns, n)
	}
	sortIDs(ns)
	for _, n := range ns {
		name := checkpointName(n)
		data, err := os.ReadFile(filepath.Join(dir, name))
		exists := err == nil
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("read %s: %w", filepath.Join(dir, name), err)
		}
		switch {
		case st.removed[n]:
			c.Removed++
			if exists {
				c.Resurrected = append(c.Resurrected, name)
			}
			continue
		case st.removing[n] && !exists:
			continue // removal begun, not acknowledged: either state is fine
		}
		if !st.removing[n] {
			c.Acked++
		}
		switch {
		case !exists:
			c.Lost = append(c.Lost, name)
		case !bytes.Equal(data, checkpointContent(n, st.checkpoints[n])):
			c.Corrupt = append(c.Corrupt, name)
		default:
			if !st.removing[n] {
				c.Present++
			}
		}
	}
	return nil
}

// idRanges prints ids compactly: "3-7, 9, 12-15", cut after 20 ranges.
func idRanges(ids []uint64) string {
	if len(ids) == 0 {
		return "none"
	}
	s := append([]uint64(nil), ids...)
	sortIDs(s)
	var parts []string
	for i := 0; i < len(s); {
		j := i
		for j+1 < len(s) && s[j+1] == s[j]+1 {
			j++
		}
		if len(parts) == 20 {
			parts = append(parts, fmt.Sprintf("... (%d ids in all)", len(s)))
			break
		}
		if i == j {
			parts = append(parts, strconv.FormatUint(s[i], 10))
		} else {
			parts = append(parts, fmt.Sprintf("%d-%d", s[i], s[j]))
		}
		i = j + 1
	}
	return strings.Join(parts, ", ")
}

// printReport writes the human-readable report.
func printReport(w io.Writer, r *report) {
	fmt.Fprintf(w, "acked %d, present %d, lost %d\n", r.Acked, r.Present, len(r.Lost))
	if len(r.Lost) > 0 {
		fmt.Fprintf(w, "lost ids: %s\n", idRanges(r.Lost))
	}
	if len(r.Corrupt) > 0 {
		fmt.Fprintf(w, "corrupt ids: %s\n", idRanges(r.Corrupt))
	}
	if len(r.Holes) > 0 {
		fmt.Fprintf(w, "holes (unacknowledged ids missing before later records): %s\n", idRanges(r.Holes))
	}
	c := r.Checkpoints
	fmt.Fprintf(w, "checkpoints: acked %d, present %d, removed %d", c.Acked, c.Present, c.Removed)
	if len(c.Lost) > 0 {
		fmt.Fprintf(w, ", lost %s", strings.Join(c.Lost, " "))
	}
	if len(c.Corrupt) > 0 {
		fmt.Fprintf(w, ", corrupt %s", strings.Join(c.Corrupt, " "))
	}
	if len(c.Resurrected) > 0 {
		fmt.Fprintf(w, ", present though removed %s", strings.Join(c.Resurrected, " "))
	}
	fmt.Fprintln(w)
	for _, p := range r.Problems {
		fmt.Fprintf(w, "problem: %s\n", p)
	}
	for _, n := range r.Notes {
		fmt.Fprintf(w, "note: %s\n", n)
	}
	if r.OK {
		fmt.Fprintln(w, "OK: every acknowledged write is present and intact")
	} else {
		fmt.Fprintln(w, "FAILED: acknowledged data is lost or damaged")
	}
}
