package config

import (
	"bytes"
	"encoding/hex"
	"fmt"
	"os"
)

// MinKeyLen is the smallest accepted cluster key, in bytes.
const MinKeyLen = 16

// LoadKey reads the shared cluster key. The file holds either raw bytes or
// hex text; a trailing newline is ignored. It must be at least MinKeyLen
// bytes (after hex decoding) and readable by its owner only.
func LoadKey(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("cluster key %s: %w (create one: head -c 32 /dev/urandom > %s && chmod 600 %s)",
			path, unwrapPathError(err), path, path)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("cluster key %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("cluster key %s: not a regular file", path)
	}
	if perm := st.Mode().Perm(); perm&0o077 != 0 {
		return nil, fmt.Errorf("cluster key %s: mode %04o lets group or others access it; run: chmod 600 %s", path, perm, path)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("cluster key %s: %w", path, unwrapPathError(err))
	}
	data = bytes.TrimSuffix(data, []byte("\n"))
	data = bytes.TrimSuffix(data, []byte("\r"))
	key := data
	how := "bytes"
	if len(data)%2 == 0 && isHex(data) {
		key = make([]byte, len(data)/2)
		if _, err := hex.Decode(key, data); err != nil {
			return nil, fmt.Errorf("cluster key %s: %w", path, err)
		}
		how = "bytes after hex decoding"
	}
	if len(key) < MinKeyLen {
		return nil, fmt.Errorf("cluster key %s: %d %s, need at least %d (create one: head -c 32 /dev/urandom > %s)",
			path, len(key), how, MinKeyLen, path)
	}
	return key, nil
}

func isHex(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}
