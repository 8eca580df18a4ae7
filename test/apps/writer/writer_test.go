package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

func baseConfig(t *testing.T) runConfig {
	t.Helper()
	d := t.TempDir()
	data := filepath.Join(d, "data")
	if err := os.Mkdir(data, 0o755); err != nil {
		t.Fatal(err)
	}
	return runConfig{
		dir: data, ackLog: filepath.Join(d, "ack.log"),
		records: 400, size: 100, mode: "fdatasync", files: 4,
		ckEvery: 50, keep: 3, ackSync: true,
	}
}

func mustRun(t *testing.T, cfg runConfig) runSummary {
	t.Helper()
	sum, err := run(context.Background(), cfg)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	return sum
}

func mustVerify(t *testing.T, cfg runConfig) *report {
	t.Helper()
	r, err := verify(cfg.dir, cfg.ackLog)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	return r
}

func reportText(r *report) string {
	var b bytes.Buffer
	printReport(&b, r)
	return b.String()
}

func TestRunVerify(t *testing.T) {
	for _, mode := range []string{"fdatasync", "fsync", "odsync", "osync", "none"} {
		t.Run(mode, func(t *testing.T) {
			cfg := baseConfig(t)
			cfg.mode = mode
			sum := mustRun(t, cfg)
			if sum.first != 1 || sum.last != 400 || sum.records != 400 || sum.checkpoints != 8 {
				t.Fatalf("summary %+v", sum)
			}
			r := mustVerify(t, cfg)
			txt := reportText(r)
			if !r.OK || !strings.HasPrefix(txt, "acked 400, present 400, lost 0\n") {
				t.Fatalf("report:\n%s", txt)
			}
			c := r.Checkpoints
			if c.Acked != 3 || c.Present != 3 || c.Removed != 5 {
				t.Errorf("checkpoints %+v", c)
			}
			for _, n := range []string{"checkpoint-6", "checkpoint-8"} {
				if _, err := os.Stat(filepath.Join(cfg.dir, n)); err != nil {
					t.Error(err)
				}
			}
			if _, err := os.Stat(filepath.Join(cfg.dir, "checkpoint-5")); err == nil {
				t.Error("checkpoint-5 not removed")
			}
		})
	}
}

// idsOf returns the acknowledged ids stored in data file k.
func idsOf(k, files int, last uint64) []uint64 {
	var s []uint64
	for id := uint64(k + 1); id <= last; id += uint64(files) {
		s = append(s, id)
	}
	return s
}

func TestDetectTruncate(t *testing.T) {
	cfg := baseConfig(t)
	mustRun(t, cfg)
	// Cut data-1.log in the middle of its third-to-last record.
	path := filepath.Join(cfg.dir, "data-1.log")
	fi, _ := os.Stat(path)
	rec := int64(headerLen + cfg.size)
	if err := os.Truncate(path, fi.Size()-2*rec-rec/2); err != nil {
		t.Fatal(err)
	}
	r := mustVerify(t, cfg)
	ids := idsOf(1, 4, 400)
	want := ids[len(ids)-3:] // 390, 394, 398
	if r.OK || !slices.Equal(r.Lost, want) || !slices.Equal(r.Corrupt, want[:1]) || r.Present != 397 {
		t.Fatalf("lost %v corrupt %v present %d, want lost %v corrupt %v\n%s", r.Lost, r.Corrupt, r.Present, want, want[:1], reportText(r))
	}
	txt := reportText(r)
	if !strings.Contains(txt, "acked 400, present 397, lost 3") || !strings.Contains(txt, "lost ids: 390, 394, 398") {
		t.Errorf("report:\n%s", txt)
	}
	// A cut exactly at a record boundary: missing, not corrupt.
	if err := os.Truncate(path, fi.Size()-3*rec); err != nil {
		t.Fatal(err)
	}
	r = mustVerify(t, cfg)
	if !slices.Equal(r.Lost, want) || len(r.Corrupt) != 0 {
		t.Fatalf("lost %v corrupt %v", r.Lost, r.Corrupt)
	}
	// Resuming on lost acknowledged data is refused.
	_, err := run(context.Background(), cfg)
	var ee *exitError
	if !errors.As(err, &ee) || ee.code != exitFail || !strings.Contains(err.Error(), "acknowledged record 398") {
		t.Fatalf("resume after loss: %v", err)
	}
}

func TestDetectCorruptByte(t *testing.T) {
	cfg := baseConfig(t)
	mustRun(t, cfg)
	path := filepath.Join(cfg.dir, "data-2.log")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	rec := headerLen + cfg.size
	data[10*rec+50] ^= 0x40 // the payload of the 11th record: id 3+40
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	r := mustVerify(t, cfg)
	if r.OK || !slices.Equal(r.Lost, []uint64{43}) || !slices.Equal(r.Corrupt, []uint64{43}) || r.Present != 399 {
		t.Fatalf("report:\n%s", reportText(r))
	}
	if !strings.Contains(reportText(r), "data-2.log: damaged bytes at 1200-1320") {
		t.Errorf("report:\n%s", reportText(r))
	}
	// A record header damaged (id field): found again after the damage.
	data[10*rec+50] ^= 0x40
	data[20*rec+5] ^= 1
	os.WriteFile(path, data, 0o644)
	r = mustVerify(t, cfg)
	if !slices.Equal(r.Corrupt, []uint64{83}) || r.Records != 399 {
		t.Fatalf("report:\n%s", reportText(r))
	}
}

func TestDetectCheckpoints(t *testing.T) {
	cfg := baseConfig(t)
	mustRun(t, cfg)
	os.Remove(filepath.Join(cfg.dir, "checkpoint-7"))
	os.WriteFile(filepath.Join(cfg.dir, "checkpoint-8"), []byte("x"), 0o644)
	os.WriteFile(filepath.Join(cfg.dir, "checkpoint-2"), []byte("back"), 0o644)
	r := mustVerify(t, cfg)
	c := r.Checkpoints
	if r.OK || !slices.Equal(c.Lost, []string{"checkpoint-7"}) || !slices.Equal(c.Corrupt, []string{"checkpoint-8"}) ||
		!slices.Equal(c.Resurrected, []string{"checkpoint-2"}) || len(r.Lost) != 0 {
		t.Fatalf("report:\n%s", reportText(r))
	}
	txt := reportText(r)
	if !strings.Contains(txt, "lost checkpoint-7") || !strings.Contains(txt, "FAILED") {
		t.Errorf("report:\n%s", txt)
	}
}

func TestDetectHole(t *testing.T) {
	cfg := baseConfig(t)
	mustRun(t, cfg)
	// Drop record 393 and its acknowledgement, as if a write that returned
	// were lost while the next one (397) of the same file survived.
	ack, _ := os.ReadFile(cfg.ackLog)
	ack = bytes.Replace(ack, []byte("\nr 393\n"), []byte("\n"), 1)
	os.WriteFile(cfg.ackLog, ack, 0o644)
	path := filepath.Join(cfg.dir, "data-0.log")
	data, _ := os.ReadFile(path)
	rec := headerLen + cfg.size
	n := len(data) / rec // the last two records are 393 and 397
	data = append(data[:(n-2)*rec], data[(n-1)*rec:]...)
	os.WriteFile(path, data, 0o644)
	r := mustVerify(t, cfg)
	if r.OK || !slices.Equal(r.Holes, []uint64{393}) || len(r.Lost) != 0 {
		t.Fatalf("holes %v\n%s", r.Holes, reportText(r))
	}
}

func TestTornTails(t *testing.T) {
	cfg := baseConfig(t)
	cfg.records = 100
	mustRun(t, cfg)
	// An unacknowledged half record and a torn ack line are harmless.
	f, _ := os.OpenFile(filepath.Join(cfg.dir, "data-0.log"), os.O_WRONLY|os.O_APPEND, 0)
	f.Write(encodeRecord(nil, 101, cfg.size)[:60])
	f.Close()
	a, _ := os.OpenFile(cfg.ackLog, os.O_WRONLY|os.O_APPEND, 0)
	a.WriteString("r 10")
	a.Close()
	r := mustVerify(t, cfg)
	if !r.OK || r.Acked != 100 || len(r.Notes) != 1 || !strings.Contains(r.Notes[0], "torn tail") {
		t.Fatalf("report:\n%s", reportText(r))
	}
	// Resume cuts both tails and continues at 101.
	sum := mustRun(t, cfg)
	if sum.first != 101 || sum.last != 200 {
		t.Fatalf("resumed %+v", sum)
	}
	r = mustVerify(t, cfg)
	if !r.OK || r.Acked != 200 || r.Present != 200 || len(r.Notes) != 0 || r.Checkpoints.Removed != 1 {
		t.Fatalf("report:\n%s", reportText(r))
	}
	// A record durable but never acknowledged (killed before the ack):
	// resuming continues after it.
	f, _ = os.OpenFile(filepath.Join(cfg.dir, "data-0.log"), os.O_WRONLY|os.O_APPEND, 0)
	f.Write(encodeRecord(nil, 201, cfg.size))
	f.Close()
	cfg.records = 3
	if sum := mustRun(t, cfg); sum.first != 202 {
		t.Fatalf("resumed %+v", sum)
	}
	if r := mustVerify(t, cfg); !r.OK || r.Records != 204 || r.Acked != 203 {
		t.Fatalf("report:\n%s", reportText(r))
	}
	// Different layout flags on the same ack log are refused.
	cfg.files = 3
	if _, err := run(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "files=4") {
		t.Fatalf("changed --files: %v", err)
	}
}

func TestStopRate(t *testing.T) {
	cfg := baseConfig(t)
	cfg.records = 0
	cfg.rate = 200
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	t0 := time.Now()
	sum, err := run(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	// 200/s for 0.3 s: about 60, far from unthrottled.
	if el := time.Since(t0); el > 2*time.Second || sum.records < 10 || sum.records > 70 {
		t.Fatalf("%d records in %v", sum.records, el)
	}
	if r := mustVerify(t, cfg); !r.OK || r.Acked != int(sum.records) {
		t.Fatalf("report:\n%s", reportText(r))
	}
}

func TestExitCodes(t *testing.T) {
	if _, err := os.Stat("/dev/full"); err != nil {
		t.Skip("no /dev/full")
	}
	cfg := baseConfig(t)
	if err := os.Symlink("/dev/full", filepath.Join(cfg.dir, "data-0.log")); err != nil {
		t.Fatal(err)
	}
	var out, errb bytes.Buffer
	code := mainArgs([]string{"run", "--dir", cfg.dir, "--ack-log", cfg.ackLog, "--records", "10"}, &out, &errb)
	if code != exitDiskFull || !strings.Contains(errb.String(), "record 1") || !strings.Contains(errb.String(), "no space") {
		t.Fatalf("exit %d, stderr %s", code, errb.String())
	}
	cfg2 := baseConfig(t)
	errb.Reset()
	code = mainArgs([]string{"run", "--dir", cfg2.dir, "--ack-log", "/dev/full", "--records", "10"}, &out, &errb)
	if code != exitAckLog {
		t.Fatalf("ack log on /dev/full: exit %d, stderr %s", code, errb.String())
	}
	for _, args := range [][]string{
		{}, {"nope"}, {"run"}, {"run", "--dir", cfg.dir, "--ack-log", cfg.ackLog, "--mode", "bad"},
		{"verify", "--dir", cfg.dir}, {"verify", "--dir", cfg.dir, "--ack-log", filepath.Join(cfg.dir, "none")},
	} {
		if code := mainArgs(args, &out, &errb); code != exitUsage {
			t.Errorf("%v: exit %d, want %d", args, code, exitUsage)
		}
	}
	errb.Reset()
	if code := mainArgs([]string{"run", "--dir", filepath.Join(cfg.dir, "missing"), "--ack-log", cfg.ackLog}, &out, &errb); code != exitFail ||
		!strings.Contains(errb.String(), "not a directory") {
		t.Errorf("missing dir: exit %d: %s", code, errb.String())
	}
}

func TestVerifyJSON(t *testing.T) {
	cfg := baseConfig(t)
	cfg.records = 20
	var out, errb bytes.Buffer
	args := []string{"--dir", cfg.dir, "--ack-log", cfg.ackLog}
	if code := mainArgs(append([]string{"run", "--records", "20", "--checkpoint-every", "5", "--keep-checkpoints", "2"}, args...), &out, &errb); code != 0 {
		t.Fatalf("run exit %d: %s", code, errb.String())
	}
	if !strings.Contains(out.String(), "acknowledged 20 records (ids 1-20), 4 checkpoints") {
		t.Errorf("run output %q", out.String())
	}
	os.Remove(filepath.Join(cfg.dir, "data-3.log"))
	out.Reset()
	code := mainArgs(append([]string{"verify", "--json"}, args...), &out, &errb)
	var r struct {
		OK      bool     `json:"ok"`
		Acked   int      `json:"acked"`
		Present int      `json:"present"`
		Lost    []uint64 `json:"lost"`
		Corrupt []uint64 `json:"corrupt"`
	}
	if err := json.Unmarshal(out.Bytes(), &r); err != nil {
		t.Fatalf("%v: %s", err, out.String())
	}
	if code != exitFail || r.OK || r.Acked != 20 || r.Present != 15 || !slices.Equal(r.Lost, []uint64{4, 8, 12, 16, 20}) || r.Corrupt == nil {
		t.Fatalf("exit %d, %+v", code, r)
	}
	// Resuming with a whole data file gone is refused.
	errb.Reset()
	if code := mainArgs(append([]string{"run", "--records", "1", "--checkpoint-every", "5", "--keep-checkpoints", "2"}, args...), &out, &errb); code != exitFail ||
		!strings.Contains(errb.String(), "data-3.log is missing") {
		t.Fatalf("resume without data-3.log: exit %d: %s", code, errb.String())
	}
}

func TestDetectZeroedRanges(t *testing.T) {
	cfg := baseConfig(t)
	mustRun(t, cfg)
	rec := headerLen + cfg.size
	// Two whole records of data-3.log zeroed (ids 4+4*5, 4+4*6).
	path := filepath.Join(cfg.dir, "data-3.log")
	data, _ := os.ReadFile(path)
	clear(data[5*rec : 7*rec])
	os.WriteFile(path, data, 0o644)
	r := mustVerify(t, cfg)
	if !slices.Equal(r.Lost, []uint64{24, 28}) || !slices.Equal(r.Corrupt, []uint64{24, 28}) {
		t.Fatalf("report:\n%s", reportText(r))
	}
	// data-1.log entirely zeroed: every one of its ids is corrupt.
	path = filepath.Join(cfg.dir, "data-1.log")
	data, _ = os.ReadFile(path)
	clear(data)
	os.WriteFile(path, data, 0o644)
	r = mustVerify(t, cfg)
	if len(r.Corrupt) != 102 || r.Present != 298 {
		t.Fatalf("corrupt %d present %d\n%s", len(r.Corrupt), r.Present, reportText(r))
	}
}

// The end-to-end tests read the longest record latency from run's output.
func TestMaxLatencyReported(t *testing.T) {
	cfg := baseConfig(t)
	var out, errb bytes.Buffer
	code := mainArgs([]string{"run", "--dir", cfg.dir, "--ack-log", cfg.ackLog, "--records", "5", "--slow", "1ns"}, &out, &errb)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errb.String())
	}
	if !strings.Contains(out.String(), "writer: max record latency ") || !strings.Contains(out.String(), "(record ") {
		t.Errorf("no max latency line in %q", out.String())
	}
	if !strings.Contains(errb.String(), "writer: slow record 1: ") {
		t.Errorf("--slow 1ns did not report record 1: %q", errb.String())
	}
}
