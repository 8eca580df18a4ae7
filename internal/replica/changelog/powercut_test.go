package changelog

import (
	"bytes"
	"encoding/binary"
	"errors"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// fastTempDir is on tmpfs when there is one: these tests open thousands of
// journals and test the format, not the disk.
func fastTempDir(t *testing.T) string {
	t.Helper()
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		d, err := os.MkdirTemp("/dev/shm", "changelog-test-")
		if err == nil {
			t.Cleanup(func() { os.RemoveAll(d) })
			return d
		}
	}
	return t.TempDir()
}

type durable struct {
	zone uint64
	end  int64 // journal size once its Touch returned
}

// TestPowerCut simulates a power cut at every byte of the records appended
// after the last checkpoint: the journal is cut there, followed by garbage
// (random bytes, a valid record copied from elsewhere, or nothing), then
// the preallocated zeros or the end of the file. Open must accept it, keep
// every change whose Touch had returned before the cut, and accept nothing
// from the cut record or the garbage.
func TestPowerCut(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("CHANGELOG_SEED"); s != "" {
		seed, _ = strconv.ParseUint(s, 10, 64)
	}
	t.Logf("seed %d (rerun with CHANGELOG_SEED=%d)", seed, seed)
	r := rand.New(rand.NewPCG(seed, 2))
	old := growBytes
	growBytes = 8 << 10 // thousands of Opens: keep the zero tail short
	t.Cleanup(func() { growBytes = old })
	base := fastTempDir(t)
	src := filepath.Join(base, "src")
	o := testOpts()
	l := mustOpen(t, src, o)
	k := Key{7, 7}
	var ds []durable
	var aloneAt int64
	for z := uint64(0); z < 100; z++ {
		if z == 20 {
			l.Acked(10) // zones 0..9 acknowledged
			if err := l.SetAlone(true); err != nil {
				t.Fatal(err)
			}
			aloneAt = l.Stats().JournalBytes
		}
		seq := z + 1
		if z >= 20 {
			seq = 0
		}
		touch(t, l, k, z, seq) // with 64 slots: evictions, moves to DIRTY
		ds = append(ds, durable{z, l.Stats().JournalBytes})
	}
	ckptEnd := l.ckpt
	l.crash()
	data, err := os.ReadFile(filepath.Join(src, "journal"))
	if err != nil {
		t.Fatal(err)
	}
	end := ds[len(ds)-1].end
	if int64(len(data)) <= end || len(bytes.TrimRight(data[end:], "\x00")) != 0 {
		t.Fatalf("journal of %d bytes: expected zeros after the records (%d)", len(data), end)
	}
	// The last record (zone 99's activation), for the "copied" garbage: a
	// valid record of this file, at the wrong position.
	var last int64
	for off := ckptEnd; off < end; off += recHdrSize + int64(binary.LittleEndian.Uint32(data[off:])) {
		last = off
	}
	copied := data[last:end]

	dir := filepath.Join(base, "cut")
	opens := 0
	check := func(cut int64, variant string, file []byte) {
		t.Helper()
		os.RemoveAll(dir)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "journal"), file, 0o600); err != nil {
			t.Fatal(err)
		}
		l, err := Open(dir, o)
		opens++
		if err != nil {
			t.Fatalf("cut at %d (%s): %v", cut, variant, err)
		}
		defer l.Close()
		in, dirty := l.InFlight(), l.Dirty()
		alone := cut >= aloneAt
		if l.Alone() != alone {
			t.Fatalf("cut at %d (%s): alone %v, want %v", cut, variant, l.Alone(), alone)
		}
		for _, d := range ds {
			got := has(in, k, d.zone) || has(dirty, k, d.zone)
			switch {
			case d.end <= cut && d.zone >= 10 && !got:
				t.Fatalf("cut at %d (%s): durable zone %d (record ends at %d) lost", cut, variant, d.zone, d.end)
			case d.end <= cut && d.zone >= 20 && alone && !has(dirty, k, d.zone):
				t.Fatalf("cut at %d (%s): zone %d changed alone is not in DIRTY", cut, variant, d.zone)
			case d.end > cut && got:
				t.Fatalf("cut at %d (%s): zone %d whose record ends at %d accepted", cut, variant, d.zone, d.end)
			}
		}
	}
	for cut := ckptEnd; cut <= end; cut++ {
		g := make([]byte, 1+r.IntN(64))
		for i := range g {
			g[i] = byte(r.Uint32())
		}
		// A byte equal to the one it replaces would not be garbage.
		g[0] = data[cut] ^ byte(1+r.IntN(255))
		file := append(append(append([]byte{}, data[:cut]...), g...), make([]byte, int(end)-int(cut)+256)...)
		check(cut, "random garbage, then zeros", file)
		if end-cut < 400 {
			check(cut, "zeros", append(append([]byte{}, data[:cut]...), make([]byte, 4096)...))
			check(cut, "end of file", data[:cut])
			if cut != last { // at its own place it is the real record
				check(cut, "copied record", append(append([]byte{}, data[:cut]...), copied...))
			}
		}
	}
	t.Logf("%d cut points, %d opens", end-ckptEnd+1, opens)
}

// TestGarbageBeyondBatchIsLost: data more than one batch after a bad record
// cannot come from a torn write: Open refuses it.
func TestGarbageBeyondBatchIsLost(t *testing.T) {
	base := fastTempDir(t)
	l := mustOpen(t, base, testOpts())
	touch(t, l, Key{1, 1}, 1, 1)
	end := l.Stats().JournalBytes
	l.crash()
	p := filepath.Join(base, "journal")
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	at := end + int64(maxBatch) + 10
	if int64(len(data)) <= at { // the zero tail Open wrote is shorter
		data = append(data, make([]byte, at+1-int64(len(data)))...)
	}
	data[at] = 1
	os.WriteFile(p, data, 0o600)
	if _, err := Open(base, testOpts()); !errors.Is(err, ErrLost) {
		t.Fatalf("open: %v, want ErrLost", err)
	}
}
