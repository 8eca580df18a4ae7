package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runArgs(t *testing.T, args ...string) (int, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := mainArgs(args, &out, &errb)
	return code, out.String() + errb.String()
}

// Both journal modes: run, verify, resume, verify; then damage the
// database or the ack log and check verify notices.
func TestRunVerify(t *testing.T) {
	for _, j := range []string{"wal", "delete"} {
		t.Run(j, func(t *testing.T) {
			dir := t.TempDir()
			ack := filepath.Join(t.TempDir(), "acks")
			for i := range 2 {
				if code, out := runArgs(t, "run", "--dir", dir, "--ack-log", ack, "--journal", j, "--duration", "300ms"); code != exitOK {
					t.Fatalf("run %d: exit %d: %s", i, code, out)
				}
				code, out := runArgs(t, "verify", "--dir", dir, "--ack-log", ack)
				if code != exitOK || !strings.Contains(out, `integrity "ok"`) || !strings.Contains(out, "journal "+j) {
					t.Fatalf("verify %d: exit %d: %s", i, code, out)
				}
				t.Log(strings.TrimSpace(out))
			}
			acks, err := readAcks(ack)
			if err != nil || len(acks) < 2 {
				t.Fatalf("ack log: %v %v", acks, err)
			}

			// A torn last line does not count; an acknowledged id beyond
			// the database is a loss.
			f, err := os.OpenFile(ack, os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			f.WriteString("99999999")
			if code, out := runArgs(t, "verify", "--dir", dir, "--ack-log", ack); code != exitOK {
				t.Fatalf("torn ack line counted: exit %d: %s", code, out)
			}
			f.WriteString("\n")
			f.Close()
			if code, out := runArgs(t, "verify", "--dir", dir, "--ack-log", ack); code != exitFail || !strings.Contains(out, "acknowledged transaction 99999999 is missing") {
				t.Fatalf("lost ack not found: exit %d: %s", code, out)
			}

			// A torn transaction (a row gone) is damage.
			good := filepath.Join(t.TempDir(), "acks")
			if err := os.WriteFile(good, []byte("1\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			db, err := open(dir, "", "")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := db.Exec("DELETE FROM rows WHERE tx=1 AND k=2"); err != nil {
				t.Fatal(err)
			}
			db.Close()
			if code, out := runArgs(t, "verify", "--dir", dir, "--ack-log", good); code != exitFail || !strings.Contains(out, "transaction 1 has 2 rows") {
				t.Fatalf("torn transaction not found: exit %d: %s", code, out)
			}
		})
	}
}

func TestUsage(t *testing.T) {
	for _, args := range [][]string{nil, {"run"}, {"run", "--dir", "x", "--ack-log", "y", "--journal", "truncate"}, {"verify", "--dir", "x"}, {"bogus"}} {
		if code, _ := runArgs(t, args...); code != exitUsage {
			t.Errorf("%q: exit %d, want %d", args, code, exitUsage)
		}
	}
	if code, out := runArgs(t, "verify", "--dir", t.TempDir(), "--ack-log", filepath.Join(t.TempDir(), "none")); code != exitFail || !strings.Contains(out, "read ack log") {
		t.Errorf("missing ack log: exit %d: %s", code, out)
	}
}

func TestPayloadDeterministic(t *testing.T) {
	a, b := payload(7, 2, 3000), payload(7, 2, 3000)
	if !bytes.Equal(a, b) || len(a) < 16 || len(a) > 3000 {
		t.Fatalf("payload not deterministic or out of range: %d bytes", len(a))
	}
	if bytes.Equal(a, payload(7, 3, 3000)) {
		t.Fatal("payloads of two rows are equal")
	}
}
