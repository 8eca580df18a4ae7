// Package mountinfo reads the kernel's mount table (/proc/PID/mountinfo),
// one parser for the FUSE layer, the agent and the test bed.
package mountinfo

import (
	"os"
	"strconv"
	"strings"
)

// Mount is one line of the table.
type Mount struct {
	Point   string // mount point, unescaped
	Options string // per-mount options, e.g. "ro,relatime"
	FSType  string // e.g. "ext4", "fuse.tandem"
	Source  string // unescaped
	Dev     string // "major:minor"
}

// ReadOnly reports whether the mount itself is read-only.
func (m Mount) ReadOnly() bool {
	for _, o := range strings.Split(m.Options, ",") {
		if o == "ro" {
			return true
		}
	}
	return false
}

// Parse reads mountinfo text:
// "id parent major:minor root point opts [optional...] - fstype source superopts".
func Parse(s string) []Mount {
	var out []Mount
	for _, line := range strings.Split(s, "\n") {
		f := strings.Fields(line)
		if len(f) < 7 {
			continue
		}
		sep := -1
		for i := 6; i < len(f); i++ {
			if f[i] == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+2 >= len(f) {
			continue
		}
		out = append(out, Mount{Point: Unescape(f[4]), Options: f[5], FSType: f[sep+1], Source: Unescape(f[sep+2]), Dev: f[2]})
	}
	return out
}

// Read parses this process's mount table.
func Read() ([]Mount, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	return Parse(string(b)), nil
}

// Top is the uppermost mount at point (the last one listed), if any.
func Top(mounts []Mount, point string) (Mount, bool) {
	for i := len(mounts) - 1; i >= 0; i-- {
		if mounts[i].Point == point {
			return mounts[i], true
		}
	}
	return Mount{}, false
}

// Unescape undoes mountinfo's octal escapes (\040 for a space...).
func Unescape(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
