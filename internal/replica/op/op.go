// Package op is the vocabulary of replication: one Op per mutating
// filesystem operation, as intercepted on the primary (replica/fs), carried
// by the stream (replica/wire) and applied on the secondary (replica/apply).
// Paths are relative to the replicated directory's root.
package op

import (
	"encoding/binary"
	"errors"
	"fmt"
	"path"
	"strings"
)

// Kind names a mutation.
type Kind uint8

const (
	Invalid     Kind = iota
	Write            // Data at Off to Path
	Truncate         // Path to size Off
	Create           // regular file Path with Mode (Flags: O_EXCL etc. informative)
	Mknod            // node Path with Mode and Rdev (fifo, socket, device)
	Mkdir            // directory Path with Mode
	Unlink           // file Path
	Rmdir            // directory Path
	Rename           // Path -> Path2 with Flags (RENAME_NOREPLACE, RENAME_EXCHANGE)
	Link             // hard link Path2 to existing Path
	Symlink          // symlink Path whose target is string(Data)
	Chmod            // Path to Mode (permission and special bits)
	Chown            // Path to Uid/Gid (-1 = unchanged), not following a symlink
	Utimens          // Path times Atime/Mtime (see Time), not following a symlink
	SetXattr         // Name = Data on Path with Flags (XATTR_CREATE/REPLACE)
	RemoveXattr      // Name from Path
	Fallocate        // Path, Flags = mode, Off, Len
	Fsync            // Path's data (and metadata unless Flags&DataOnly) durable
	// SyncAll makes everything before it durable (syncfs on the secondary).
	SyncAll
	// Query asks the secondary a question about its copy during an online
	// resynchronisation (replica/compare): Flags is the query type
	// (QueryListDir...), Path the entry asked about, Off/Len a byte range,
	// Data the encoded parameters. Applying it changes nothing; the answer
	// travels back out of band.
	Query
	// RemoveTree removes Path and everything below it, never following a
	// symlink; an absent Path is no error.
	RemoveTree
	// XattrSet replaces the whole set of extended attributes of Path (not
	// following a symlink) with the list encoded in Data (AppendXattrs):
	// names not listed are removed (except security.selinux, the host's
	// business), listed ones set, those marked Keep left as they are.
	XattrSet
	kindEnd
)

// Query types, in a Query op's Flags. The encodings of parameters and
// answers belong to replica/compare.
const (
	QueryListDir    = 1 // entries of directory Path, with attributes
	QueryHashBlocks = 2 // block hashes of regular file Path over [Off, Off+Len)
	QueryXattrs     = 3 // the extended attributes of Path
	QuerySkipped    = 4 // paths of ops the secondary skipped as diverged
	QueryFindInode  = 5 // the names of one of the secondary's inodes
	QueryHashBatch  = 6 // several QueryHashBlocks at once (Data lists them)
	queryEnd        = 7
)

var queryNames = [...]string{"", "listdir", "hashblocks", "xattrs", "skipped", "findinode", "hashbatch"}

// DataOnly in an Fsync op's Flags: fdatasync.
const DataOnly = 1

// ResyncDone in a SyncAll op's Flags: the resynchronisation that came
// before it is complete; once it is durable the secondary is up to date.
const ResyncDone = 1

// Background in a SyncAll op's Flags: nobody waits for it (the primary's
// periodic sync for its change records), so the secondary may flush while
// it applies the ops that follow instead of holding them back.
const Background = 2

var kindNames = [...]string{"invalid", "write", "truncate", "create", "mknod", "mkdir", "unlink", "rmdir",
	"rename", "link", "symlink", "chmod", "chown", "utimens", "setxattr", "removexattr", "fallocate", "fsync", "syncall",
	"query", "removetree", "xattrset"}

func (k Kind) String() string {
	if int(k) < len(kindNames) {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// Valid reports whether k is a known kind.
func (k Kind) Valid() bool { return k > Invalid && k < kindEnd }

// Time is one timestamp of a Utimens op.
type Time struct {
	Sec  int64
	Nsec int64 // or UtimeNow / UtimeOmit (as in utimensat(2))
}

// Special Nsec values of Time, as in utimensat(2).
const (
	UtimeNow  = (1 << 30) - 1
	UtimeOmit = (1 << 30) - 2
)

// Op is one mutation. Fields not used by its Kind are zero.
type Op struct {
	Kind  Kind
	Path  string
	Path2 string // Rename target, Link new name
	Data  []byte // Write data, Symlink target, SetXattr value
	Off   int64  // Write/Fallocate offset, Truncate size
	Len   int64  // Fallocate length
	Mode  uint32 // Create/Mknod/Mkdir/Chmod
	Rdev  uint64 // Mknod
	Uid   int64  // Chown, -1 = unchanged; Create/Mknod/Mkdir/Symlink owner
	Gid   int64  // idem
	Atime Time   // Utimens; see Stamped
	Mtime Time   // Utimens; see Stamped
	Flags uint32 // Rename flags, SetXattr flags, Fallocate mode, Fsync DataOnly
	Name  string // xattr name
}

// String is a short description for logs (no data).
func (o *Op) String() string {
	switch o.Kind {
	case Write:
		return fmt.Sprintf("write %q %d@%d", o.Path, len(o.Data), o.Off)
	case Rename, Link:
		return fmt.Sprintf("%s %q -> %q", o.Kind, o.Path, o.Path2)
	case Query:
		t := fmt.Sprintf("type(%d)", o.Flags)
		if o.Flags < queryEnd && o.Flags > 0 {
			t = queryNames[o.Flags]
		}
		if o.Flags == QueryHashBlocks {
			return fmt.Sprintf("query %s %q %d@%d", t, o.Path, o.Len, o.Off)
		}
		return fmt.Sprintf("query %s %q", t, o.Path)
	}
	return fmt.Sprintf("%s %q", o.Kind, o.Path)
}

// Size is the op's approximate wire size, for lag accounting.
func (o *Op) Size() int { return 64 + len(o.Path) + len(o.Path2) + len(o.Data) + len(o.Name) }

// CleanPath checks a relative path from the wire: no absolute path, no
// "..", no empty element, no NUL; "" is the root.
func CleanPath(p string) error {
	if p == "" {
		return nil
	}
	if strings.HasPrefix(p, "/") || strings.IndexByte(p, 0) >= 0 || path.Clean(p) != p || p == "." || p == ".." ||
		strings.HasPrefix(p, "../") {
		return fmt.Errorf("bad replicated path %q", p)
	}
	return nil
}

// Validate checks an op received from the network before it is applied.
func (o *Op) Validate() error {
	if !o.Kind.Valid() {
		return fmt.Errorf("unknown op kind %d", o.Kind)
	}
	if err := CleanPath(o.Path); err != nil {
		return err
	}
	if o.Kind == Rename || o.Kind == Link {
		if err := CleanPath(o.Path2); err != nil {
			return err
		}
		if o.Path2 == "" {
			return fmt.Errorf("%s to the root", o.Kind)
		}
	}
	if o.Path == "" {
		switch o.Kind {
		case Chmod, Chown, Utimens, SetXattr, RemoveXattr, Fsync, SyncAll, Query, XattrSet:
		default:
			return fmt.Errorf("%s on the root", o.Kind)
		}
	}
	if o.Off < 0 || o.Len < 0 {
		return fmt.Errorf("%s %q: negative offset or length", o.Kind, o.Path)
	}
	switch o.Kind {
	case Query:
		if o.Flags == 0 || o.Flags >= queryEnd {
			return fmt.Errorf("query %q: unknown query type %d", o.Path, o.Flags)
		}
	case XattrSet:
		if _, err := ParseXattrs(o.Data); err != nil {
			return fmt.Errorf("xattrset %q: %w", o.Path, err)
		}
	}
	return nil
}

// Stamped reports whether a non-Utimens op carries the times the primary's
// entry had right after it (Atime may be UtimeOmit): the secondary then sets
// them, so the copies' mtimes stay identical. A zero Mtime means none.
func (o *Op) Stamped() bool {
	if o.Kind == Utimens || o.Mtime == (Time{}) {
		return false
	}
	switch o.Kind {
	case Write, Truncate, Fallocate, Create, Mkdir, Mknod, Symlink, Link, Chmod, Chown, SetXattr, RemoveXattr:
		return true
	}
	return false
}

// Xattr is one extended attribute of an XattrSet op's list. Keep leaves
// the attribute's current value on the secondary (it is equal already);
// otherwise Value is set.
type Xattr struct {
	Name  string
	Value []byte
	Keep  bool
}

// Limits of the Linux VFS: XATTR_NAME_MAX and XATTR_SIZE_MAX.
const (
	XattrNameMax = 255
	XattrSizeMax = 64 << 10
)

// AppendXattrs appends the encoding of list, an XattrSet op's Data: a
// uvarint count, then per attribute a uvarint name length, the name, and a
// uvarint that is 0 for Keep or 1 + the value length, followed by the
// value.
func AppendXattrs(dst []byte, list []Xattr) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(list)))
	for _, x := range list {
		dst = binary.AppendUvarint(dst, uint64(len(x.Name)))
		dst = append(dst, x.Name...)
		if x.Keep {
			dst = append(dst, 0)
			continue
		}
		dst = binary.AppendUvarint(dst, uint64(len(x.Value))+1)
		dst = append(dst, x.Value...)
	}
	return dst
}

// ParseXattrs decodes AppendXattrs's encoding. Values alias b. Names must
// be non-empty, unique, without NUL and within the VFS limits.
func ParseXattrs(b []byte) ([]Xattr, error) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)) {
		return nil, errors.New("bad attribute list: truncated count")
	}
	b = b[k:]
	list := make([]Xattr, 0, n)
	seen := make(map[string]bool, n)
	for range n {
		l, k := binary.Uvarint(b)
		if k <= 0 || l > uint64(len(b)-k) {
			return nil, errors.New("bad attribute list: truncated name")
		}
		name := string(b[k : k+int(l)])
		b = b[k+int(l):]
		if name == "" || len(name) > XattrNameMax || strings.IndexByte(name, 0) >= 0 || seen[name] {
			return nil, fmt.Errorf("bad attribute list: name %q empty, too long, with NUL or repeated", name)
		}
		seen[name] = true
		v, k := binary.Uvarint(b)
		if k <= 0 || (v > 0 && v-1 > uint64(len(b)-k)) {
			return nil, fmt.Errorf("bad attribute list: truncated value of %q", name)
		}
		b = b[k:]
		x := Xattr{Name: name, Keep: v == 0}
		if v > 0 {
			if v-1 > XattrSizeMax {
				return nil, fmt.Errorf("bad attribute list: value of %q is %d bytes, more than %d", name, v-1, XattrSizeMax)
			}
			x.Value = b[: v-1 : v-1]
			b = b[v-1:]
		}
		list = append(list, x)
	}
	if len(b) != 0 {
		return nil, fmt.Errorf("bad attribute list: %d bytes after the last attribute", len(b))
	}
	return list, nil
}
