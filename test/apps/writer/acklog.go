package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
)

// The ack log is a text file outside the replicated directory, one event a
// line, appended only after the matching operation was durable:
//
//	tandem-writer ack-log v1 files=4 checkpoint-every=100 keep-checkpoints=3
//	start next=1 pid=123 mode=fdatasync size=4096
//	r 17        record 17 is durable
//	c 2 200     checkpoint-2 (taken after record 200) is durable under its name
//	D 1         removal of checkpoint-1 begins: it may or may not exist
//	d 1         checkpoint-1 is durably gone
//
// A last line without its newline is a torn append and does not count.
const ackHeader = "tandem-writer ack-log v1"

// ackState is what an ack log says.
type ackState struct {
	files, ckEvery, keep int
	acked                []uint64          // increasing
	checkpoints          map[uint64]uint64 // n -> last id, acknowledged created
	removing             map[uint64]bool   // removal started (D)
	removed              map[uint64]bool   // removal acknowledged (d)
	lastCheckpoint       uint64
	validLen             int64 // bytes up to the last complete line
	problems             []string
}

func (s *ackState) lastAcked() uint64 {
	if len(s.acked) == 0 {
		return 0
	}
	return s.acked[len(s.acked)-1]
}

// readAckLog parses an ack log; a missing or empty file gives a nil state.
func readAckLog(path string) (*ackState, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("open ack log: %w", err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat ack log: %w", err)
	}
	// Read only what is there now (a device such as /dev/full never ends).
	r := bufio.NewReaderSize(io.LimitReader(f, fi.Size()), 1<<20)
	s := &ackState{checkpoints: map[uint64]uint64{}, removing: map[uint64]bool{}, removed: map[uint64]bool{}}
	lineNo := 0
	for {
		line, err := r.ReadString('\n')
		if errors.Is(err, io.EOF) {
			break // a torn last line (or none) does not count
		}
		if err != nil {
			return nil, fmt.Errorf("read ack log %s: %w", path, err)
		}
		lineNo++
		s.validLen += int64(len(line))
		line = strings.TrimSuffix(line, "\n")
		if lineNo == 1 {
			if err := s.parseHeader(line); err != nil {
				return nil, fmt.Errorf("ack log %s line 1: %w", path, err)
			}
			continue
		}
		if err := s.parseLine(line); err != nil {
			s.problems = append(s.problems, fmt.Sprintf("ack log %s line %d: %v", path, lineNo, err))
		}
	}
	if lineNo == 0 {
		return nil, nil
	}
	return s, nil
}

func (s *ackState) parseHeader(line string) error {
	rest, ok := strings.CutPrefix(line, ackHeader+" ")
	if !ok {
		return fmt.Errorf("%q is not a writer ack log header (want %q ...)", line, ackHeader)
	}
	for _, kv := range strings.Fields(rest) {
		k, v, _ := strings.Cut(kv, "=")
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return fmt.Errorf("header field %q: want key=number", kv)
		}
		switch k {
		case "files":
			s.files = n
		case "checkpoint-every":
			s.ckEvery = n
		case "keep-checkpoints":
			s.keep = n
		}
	}
	if s.files < 1 {
		return fmt.Errorf("header %q: files must be at least 1", line)
	}
	return nil
}

func (s *ackState) parseLine(line string) error {
	f := strings.Fields(line)
	if len(f) == 0 {
		return errors.New("empty line")
	}
	num := func(i int) (uint64, error) {
		if i >= len(f) {
			return 0, fmt.Errorf("%q: missing field %d", line, i)
		}
		return strconv.ParseUint(f[i], 10, 64)
	}
	switch f[0] {
	case "start":
		return nil
	case "r":
		id, err := num(1)
		if err != nil {
			return err
		}
		if id <= s.lastAcked() {
			return fmt.Errorf("record %d acknowledged after %d: ids must increase", id, s.lastAcked())
		}
		s.acked = append(s.acked, id)
	case "c":
		n, err := num(1)
		if err != nil {
			return err
		}
		last, err := num(2)
		if err != nil {
			return err
		}
		s.checkpoints[n] = last
		delete(s.removing, n)
		delete(s.removed, n)
		s.lastCheckpoint = max(s.lastCheckpoint, n)
	case "D", "d":
		n, err := num(1)
		if err != nil {
			return err
		}
		if f[0] == "D" {
			s.removing[n] = true
		} else {
			s.removed[n] = true
		}
	default:
		return fmt.Errorf("unknown event %q", line)
	}
	return nil
}
