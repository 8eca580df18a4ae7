package membership

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// stateSubdir is the directory under Config.StateDir that holds
// "incarnation" (ours) and "peer-NAME" (highest incarnation seen per peer).
const stateSubdir = "membership"

// readCounter reads a decimal uint64 written by writeCounter. A missing file
// reads as 0 with ok=false.
func readCounter(path string) (v uint64, ok bool, err error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("read %s: %w", path, err)
	}
	v, err = strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, false, fmt.Errorf("read %s: not a decimal counter (%q): the file is damaged", path, truncate(b, 40))
	}
	return v, true, nil
}

// writeCounter replaces path with v durably: write a temporary file, fsync
// it, rename it over path, fsync the directory. A crash leaves either the
// old or the new value, never a torn one.
func writeCounter(path string, v uint64) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	_, err = f.WriteString(strconv.FormatUint(v, 10) + "\n")
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("write %s: open directory to sync: %w", path, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("write %s: sync directory: %w", path, err)
	}
	return nil
}

// nextIncarnation reads our last incarnation, picks the next one and
// persists it before any datagram carries it. The next value is also at
// least the current unix time in seconds so that a node whose state
// directory was lost (disk replaced) still comes back with an incarnation
// higher than the one its peers remember, instead of being refused.
func nextIncarnation(path string, now time.Time) (inc uint64, warn error, err error) {
	prev, _, rerr := readCounter(path)
	if rerr != nil {
		// A damaged counter must not keep the node down: the clock floor
		// below still gives a fresh, higher incarnation.
		warn, prev = rerr, 0
	}
	inc = prev + 1
	if t := now.Unix(); t > 0 && uint64(t) > inc {
		inc = uint64(t)
	}
	if err := writeCounter(path, inc); err != nil {
		return 0, warn, err
	}
	return inc, warn, nil
}

func truncate(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}
