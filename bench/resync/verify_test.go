package resync

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
)

// maxDiffs bounds the differences verify lists.
const maxDiffs = 10

// verify compares two trees: the same entries, types, sizes, permissions
// and contents (not times or owners). A difference fails the test: a
// resync that leaves the copies different is a bug, not a figure.
func verify(t *testing.T, a, b, what string) {
	t.Helper()
	v := verifyParallel(a, b, 4)
	if len(v.diffs) > 0 {
		t.Errorf("%s (%s, %s) differ in %d entries (first %d):\n%s", what, a, b, v.n, len(v.diffs), joinLines(v.diffs))
		return
	}
	t.Logf("%s identical: %d entries, %s compared; %d files with another mtime", what, v.entries, mib(v.bytes), v.mtimes)
}

// verifyParallel compares the top directory's subdirectories jobs at once
// (a million small files read cold one by one takes long).
func verifyParallel(a, b string, jobs int) *verifier {
	top := newVerifier()
	top.sub = make(chan string)
	var wg sync.WaitGroup
	var all []*verifier
	for range jobs {
		w := newVerifier()
		all = append(all, w)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for rel := range top.sub {
				w.dir(a, b, rel)
			}
		}()
	}
	top.dir(a, b, ".")
	close(top.sub)
	wg.Wait()
	for _, w := range all {
		top.n += w.n
		top.entries += w.entries
		top.mtimes += w.mtimes
		top.bytes += w.bytes
		for _, d := range w.diffs {
			if len(top.diffs) < maxDiffs {
				top.diffs = append(top.diffs, d)
			}
		}
	}
	return top
}

func newVerifier() *verifier {
	return &verifier{buf1: make([]byte, 1<<20), buf2: make([]byte, 1<<20)}
}

type verifier struct {
	// sub, when set, takes the subdirectories of the top directory.
	sub                chan string
	diffs              []string
	n, entries, mtimes int
	bytes              int64
	buf1, buf2         []byte
}

func (v *verifier) diff(format string, args ...any) {
	v.n++
	if len(v.diffs) < maxDiffs {
		v.diffs = append(v.diffs, fmt.Sprintf(format, args...))
	}
}

func joinLines(s []string) string {
	var b bytes.Buffer
	for _, l := range s {
		b.WriteString("  " + l + "\n")
	}
	return b.String()
}

func (v *verifier) dir(a, b, rel string) {
	ea, err := os.ReadDir(filepath.Join(a, rel))
	if err != nil {
		v.diff("%s: %v", rel, err)
		return
	}
	eb, err := os.ReadDir(filepath.Join(b, rel))
	if err != nil {
		v.diff("%s: %v", rel, err)
		return
	}
	i, j := 0, 0
	for i < len(ea) || j < len(eb) {
		switch {
		case j >= len(eb) || (i < len(ea) && ea[i].Name() < eb[j].Name()):
			v.diff("%s: only in the first copy", filepath.Join(rel, ea[i].Name()))
			i++
		case i >= len(ea) || eb[j].Name() < ea[i].Name():
			v.diff("%s: only in the second copy", filepath.Join(rel, eb[j].Name()))
			j++
		default:
			v.entry(a, b, filepath.Join(rel, ea[i].Name()))
			i++
			j++
		}
	}
}

func (v *verifier) entry(a, b, rel string) {
	v.entries++
	sa, err := os.Lstat(filepath.Join(a, rel))
	if err != nil {
		v.diff("%s: %v", rel, err)
		return
	}
	sb, err := os.Lstat(filepath.Join(b, rel))
	if err != nil {
		v.diff("%s: %v", rel, err)
		return
	}
	if sa.Mode() != sb.Mode() {
		v.diff("%s: mode %v against %v", rel, sa.Mode(), sb.Mode())
		return
	}
	switch {
	case sa.IsDir() && v.sub != nil:
		v.sub <- rel
	case sa.IsDir():
		v.dir(a, b, rel)
	case sa.Mode().IsRegular():
		if sa.Size() != sb.Size() {
			v.diff("%s: %d bytes against %d", rel, sa.Size(), sb.Size())
			return
		}
		if !sa.ModTime().Equal(sb.ModTime()) {
			v.mtimes++
		}
		if off, err := v.sameContent(filepath.Join(a, rel), filepath.Join(b, rel)); err != nil {
			v.diff("%s: %v", rel, err)
		} else if off >= 0 {
			v.diff("%s: contents differ from byte %d", rel, off)
		}
		v.bytes += sa.Size()
	case sa.Mode()&os.ModeSymlink != 0:
		la, _ := os.Readlink(filepath.Join(a, rel))
		lb, _ := os.Readlink(filepath.Join(b, rel))
		if la != lb {
			v.diff("%s: symlink to %q against %q", rel, la, lb)
		}
	}
}

// sameContent returns the first differing offset, or -1.
func (v *verifier) sameContent(a, b string) (int64, error) {
	fa, err := os.Open(a)
	if err != nil {
		return 0, err
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return 0, err
	}
	defer fb.Close()
	var off int64
	for {
		na, ea := io.ReadFull(fa, v.buf1)
		nb, eb := io.ReadFull(fb, v.buf2)
		if na != nb || !bytes.Equal(v.buf1[:na], v.buf2[:nb]) {
			for k := 0; k < min(na, nb); k++ {
				if v.buf1[k] != v.buf2[k] {
					return off + int64(k), nil
				}
			}
			return off + int64(min(na, nb)), nil
		}
		off += int64(na)
		if ea == io.EOF || ea == io.ErrUnexpectedEOF {
			if eb != ea {
				return off, nil
			}
			return -1, nil
		}
		if ea != nil {
			return 0, ea
		}
		if eb != nil {
			return 0, eb
		}
	}
}
