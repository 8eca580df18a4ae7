package demo

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// The data file holds one line per record, "<id> <payload>\n": ids are
// decimal, payloads 32 hex digits derived from the id, so a record is
// checkable without the client's log and a record at the wrong id fails.
const (
	// DataDir is the replicated directory the demo application writes to.
	DataDir = "/srv/tandem-demo"
	// DataFile is the application's data file in DataDir.
	DataFile = "records.log"
	// AppPort is the demo application's TCP port (on the VIP).
	AppPort = 7000

	payloadLen = 32
	maxLine    = 64 // longer lines are not records
)

// Payload is the content record id must hold.
func Payload(id uint64) string {
	sum := sha256.Sum256([]byte("tandem-demo:" + strconv.FormatUint(id, 10)))
	return hex.EncodeToString(sum[:payloadLen/2])
}

// recordLine is what the application appends for record id.
func recordLine(id uint64, payload string) string {
	return strconv.FormatUint(id, 10) + " " + payload + "\n"
}

// parseRecord parses one line without its newline.
func parseRecord(line []byte) (id uint64, payload string, ok bool) {
	sp := bytes.IndexByte(line, ' ')
	if sp <= 0 || len(line)-sp-1 != payloadLen {
		return 0, "", false
	}
	id, err := strconv.ParseUint(string(line[:sp]), 10, 64)
	if err != nil || id == 0 {
		return 0, "", false
	}
	p := string(line[sp+1:])
	if !isHex(p) {
		return 0, "", false
	}
	return id, p, true
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

// scanValid returns the length of the longest prefix of data made of whole,
// well-formed records with increasing ids, and the last id in it. A crash
// can leave a torn line at the end; the application cuts it off before
// appending again.
func scanValid(data []byte) (end int64, last uint64) {
	off := 0
	for off < len(data) {
		nl := bytes.IndexByte(data[off:], '\n')
		if nl < 0 {
			break
		}
		id, _, ok := parseRecord(data[off : off+nl])
		if !ok || id <= last {
			break
		}
		last = id
		off += nl + 1
	}
	return int64(off), last
}

// Verdict is the check of one copy of the data file.
type Verdict struct {
	Acked   int      // acknowledged ids looked for
	Present int      // found, intact
	Lost    []uint64 // acknowledged but absent or damaged
	Damaged int      // lines that are not intact records (any id)
}

// verifyData checks that every acknowledged id is in data, intact.
func verifyData(data []byte, acked []uint64) Verdict {
	have := make(map[uint64]bool, len(acked))
	var damaged int
	for line := range bytes.SplitSeq(data, []byte{'\n'}) {
		if len(line) == 0 {
			continue
		}
		id, p, ok := parseRecord(line)
		if !ok || p != Payload(id) {
			damaged++
			continue
		}
		have[id] = true
	}
	c := Verdict{Acked: len(acked), Damaged: damaged}
	for _, id := range acked {
		if have[id] {
			c.Present++
		} else {
			c.Lost = append(c.Lost, id)
		}
	}
	return c
}

// idRanges writes ids compactly: "3, 7-9, 12" (at most 10 ranges).
func idRanges(ids []uint64) string {
	s := append([]uint64(nil), ids...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	var parts []string
	for i := 0; i < len(s); {
		j := i
		for j+1 < len(s) && s[j+1] == s[j]+1 {
			j++
		}
		if len(parts) == 10 {
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
