package compare

import (
	"bytes"
	"encoding/binary"
	"slices"
	"strconv"

	"github.com/tandem-ha/tandem/internal/replica/op"
	"github.com/zeebo/xxh3"
	"golang.org/x/sys/unix"
)

// skipXattr is the LSM label: each host's policy sets it, so it is neither
// compared nor sent (apply's XattrSet leaves it too).
const skipXattr = "security.selinux"

// xattrPath names an entry for the xattr calls: the directory open as dfd
// itself (name ""), whose /proc link is followed, or name inside it,
// reached through our own descriptor's /proc link without following the
// last component (no listxattrat in the kernel API).
type xattrPath struct {
	p      string
	follow bool
}

func xpath(dfd int, name string) xattrPath {
	if name == "" {
		return xattrPath{p: "/proc/self/fd/" + strconv.Itoa(dfd), follow: true}
	}
	return xattrPath{p: "/proc/self/fd/" + strconv.Itoa(dfd) + "/" + name}
}

func (x xattrPath) list(buf []byte) (int, error) {
	if x.follow {
		return unix.Listxattr(x.p, buf)
	}
	return unix.Llistxattr(x.p, buf)
}

func (x xattrPath) get(name string, buf []byte) (int, error) {
	if x.follow {
		return unix.Getxattr(x.p, name, buf)
	}
	return unix.Lgetxattr(x.p, name, buf)
}

// readXattrs returns the entry's attributes sorted by name (without the
// LSM label). An entry that vanished meanwhile has none (ENOENT is
// returned for the caller to decide).
func readXattrs(dfd int, name string) ([]op.Xattr, error) {
	x := xpath(dfd, name)
	var small [1024]byte
	buf := small[:]
	var n int
	for {
		var err error
		n, err = x.list(buf)
		if err == unix.ERANGE && len(buf) < 1<<20 {
			buf = make([]byte, 4*len(buf))
			continue
		}
		if err == unix.ENOTSUP || err == unix.EOPNOTSUPP {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		break
	}
	if n == 0 {
		return nil, nil
	}
	var list []op.Xattr
	var vbuf []byte
	for names := buf[:n]; len(names) > 0; {
		i := bytes.IndexByte(names, 0)
		if i < 0 {
			i = len(names)
		}
		attr := string(names[:i])
		names = names[min(i+1, len(names)):]
		if attr == "" || attr == skipXattr {
			continue
		}
		if vbuf == nil {
			vbuf = make([]byte, 256)
		}
		for {
			m, err := x.get(attr, vbuf)
			if err == unix.ERANGE && len(vbuf) < op.XattrSizeMax {
				vbuf = make([]byte, op.XattrSizeMax)
				continue
			}
			if err == unix.ENODATA {
				break // removed meanwhile
			}
			if err != nil {
				return nil, err
			}
			list = append(list, op.Xattr{Name: attr, Value: slices.Clone(vbuf[:m])})
			break
		}
	}
	slices.SortFunc(list, func(a, b op.Xattr) int {
		return bytes.Compare([]byte(a.Name), []byte(b.Name))
	})
	return list, nil
}

// digestXattrs is a 64-bit digest of a sorted attribute list; 0 stands for
// no attributes.
func digestXattrs(list []op.Xattr) uint64 {
	if len(list) == 0 {
		return 0
	}
	var b []byte
	for _, x := range list {
		b = binary.AppendUvarint(b, uint64(len(x.Name)))
		b = append(b, x.Name...)
		b = binary.AppendUvarint(b, uint64(len(x.Value)))
		b = append(b, x.Value...)
	}
	if d := xxh3.Hash(b); d != 0 {
		return d
	}
	return 1
}

// xattrDigest reads and digests the entry's attributes.
func xattrDigest(dfd int, name string) (uint64, error) {
	list, err := readXattrs(dfd, name)
	if err != nil {
		return 0, err
	}
	return digestXattrs(list), nil
}
