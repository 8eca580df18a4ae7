package changelog

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// sampleJournal builds a small journal exercising every record type;
// variants 2 and 3 with 64 KiB extents (several zones of one extent moved
// to DIRTY).
func sampleJournal(t testing.TB, variant int) []byte {
	dir := t.TempDir()
	o := testOpts()
	if variant >= 2 {
		o.ExtentSize = 64 << 10
	}
	l, err := Open(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	k := func(i uint64) Key { return Key{uint64(variant), i} }
	l.SetAlone(true)
	touch(t, l, k(1), 3, 0)
	touch(t, l, k(1), 5, 0)
	p, _ := l.Touch(k(2), 0, 1<<30) // extent
	l.Done(p, 0)
	l.Checkpoint()
	l.Close()
	l, err = Open(dir, o) // a checkpoint with DIRTY
	if err != nil {
		t.Fatal(err)
	}
	l.SetAlone(false)
	touch(t, l, k(3), 9, 4)
	p, _ = l.TouchDir(k(4))
	l.Done(p, 5)
	p, _ = l.TouchMeta(k(5))
	l.Done(p, 6)
	if variant%2 == 1 {
		l.Acked(5)
		l.SetAlone(true)
		l.Checkpoint()
		d := l.Dirty()
		l.ClearDirty(d.Files[:1], d.Dirs)
		l.ReleaseInFlight(true)
		l.Reset(0)
	}
	l.crash()
	data, err := os.ReadFile(filepath.Join(dir, "journal"))
	if err != nil {
		t.Fatal(err)
	}
	return append(bytes.TrimRight(data, "\x00"), make([]byte, 16)...)
}

// TestWriteFuzzCorpus writes the checked-in seed corpus
// (CHANGELOG_WRITE_CORPUS=1 go test -run TestWriteFuzzCorpus). Existing
// files are kept: journal0 and journal1 were written before extents, and
// keep the older records decoded.
func TestWriteFuzzCorpus(t *testing.T) {
	if os.Getenv("CHANGELOG_WRITE_CORPUS") == "" {
		t.Skip("set CHANGELOG_WRITE_CORPUS=1 to regenerate testdata/fuzz")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzDecode")
	os.MkdirAll(dir, 0o755)
	for v := 0; v < 4; v++ {
		name := filepath.Join(dir, fmt.Sprintf("journal%d", v))
		if _, err := os.Stat(name); err == nil {
			continue
		}
		data := sampleJournal(t, v)
		body := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", data)
		if err := os.WriteFile(name, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// FuzzDecode: any input decodes without panic; what decodes re-encodes
// (after recovery) to the same state.
func FuzzDecode(f *testing.F) {
	f.Add([]byte{})
	f.Add(encodeHeader(12, 1))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := decode(data)
		if err != nil {
			return
		}
		l := stateOf(r)
		again, err := decode(append(encodeHeader(l.shift, l.enc.id), l.encodeState(nil)...))
		if err != nil {
			t.Fatalf("re-encoded state does not decode: %v", err)
		}
		l2 := stateOf(again)
		if !sameSet(&l.dirty, &l2.dirty) || !sameSet(&l.inflight, &l2.inflight) ||
			l.alone != l2.alone || l.needFull != l2.needFull {
			t.Fatalf("round trip changed the state")
		}
	})
}

func stateOf(r *replay) *Log {
	l := &Log{shift: r.zoneShift, active: map[slotKey]*entry{}, dirty: newSet(), inflight: newSet(), log: quiet}
	l.lru.next, l.lru.prev = &l.lru, &l.lru
	l.enc = encoder{id: 42}
	l.recover(r)
	return l
}

func sameSet(a, b *set) bool {
	if len(a.files) != len(b.files) || len(a.dirs) != len(b.dirs) || a.zones != b.zones {
		return false
	}
	for k, f := range a.files {
		g, ok := b.files[k]
		if !ok || g.meta != f.meta {
			return false
		}
		var t1, t2 [1]run
		x, y := f.ranges(&t1), g.ranges(&t2)
		if len(x) != len(y) {
			return false
		}
		for i := range x {
			if x[i] != y[i] {
				return false
			}
		}
	}
	for k := range a.dirs {
		if _, ok := b.dirs[k]; !ok {
			return false
		}
	}
	return true
}

func TestSampleJournalsDecode(t *testing.T) {
	for v := 0; v < 4; v++ {
		r, err := decode(sampleJournal(t, v))
		if err != nil {
			t.Fatalf("variant %d: %v", v, err)
		}
		if r.records < 8 {
			t.Fatalf("variant %d: only %d records", v, r.records)
		}
	}
}

// FuzzRecords feeds record bodies of the fuzzer's choosing, with valid
// checksums, so that the replay of each record type is explored: no panic,
// and what decodes re-encodes to the same state.
func FuzzRecords(f *testing.F) {
	f.Add([]byte{3, recActive, 1, 2, 5, 1}, uint8(12))
	f.Add([]byte{6, recToDirty, 1, 2, 0xfd, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 1, 9}, uint8(16))
	f.Add([]byte{8, recDirtyFile, 1, 2, 1, 2, 3, 4, 5, 6}, uint8(30))
	f.Add([]byte{5, recSizes, 200, 1, 1, 1, 2, recDirtyDir, 1}, uint8(12))
	f.Add([]byte{6, recActiveExt, 1, 2, 4, 3, 2, 4, recEvictExt, 1, 2, 64}, uint8(12))
	f.Fuzz(func(t *testing.T, data []byte, shift uint8) {
		e := encoder{id: 7}
		b := encodeHeader(uint(shift), e.id)
		var s int
		b, s = e.begin(b, recCheckpoint)
		b = e.finish(b, s)
		for len(data) > 0 {
			n := min(int(data[0]), len(data)-1)
			body := data[1 : 1+n]
			data = data[1+n:]
			if n == 0 {
				continue
			}
			b, s = e.begin(b, body[0])
			b = append(b, body[1:]...)
			b = e.finish(b, s)
		}
		r, err := decode(b)
		if err != nil {
			return
		}
		l := stateOf(r)
		again, err := decode(append(encodeHeader(l.shift, l.enc.id), l.encodeState(nil)...))
		if err != nil {
			t.Fatalf("re-encoded state does not decode: %v", err)
		}
		l2 := stateOf(again)
		if !sameSet(&l.dirty, &l2.dirty) || !sameSet(&l.inflight, &l2.inflight) {
			t.Fatalf("round trip changed the state")
		}
	})
}
