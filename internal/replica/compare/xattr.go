package compare

import (
	"bytes"
	"encoding/binary"
	"runtime"
	"slices"
	"strconv"
	"sync/atomic"
	"unsafe"

	"github.com/tandem-ha/tandem/internal/replica/op"
	"github.com/zeebo/xxh3"
	"golang.org/x/sys/unix"
)

// skipXattr is the LSM label: each host's policy sets it, so it is neither
// compared nor sent (apply's XattrSet leaves it too).
const skipXattr = "security.selinux"

// xattrPath names an entry for the xattr calls: the directory or file
// open as dfd itself (name ""), or name inside dfd, not following a
// symlink. The kernel's descriptor calls are used: flistxattr on dfd, and
// listxattrat/getxattrat (Linux 6.13) for a name. Without those (an O_PATH
// descriptor, an older kernel) the entry is reached through our own
// descriptor's /proc link, a longer path walk.
type xattrPath struct {
	dfd    int
	name   string
	proc   bool // through /proc
	p      string
	follow bool
}

// noXattrAt: the kernel lacks listxattrat/getxattrat (ENOSYS once).
var noXattrAt atomic.Bool

func xpath(dfd int, name string) *xattrPath { return &xattrPath{dfd: dfd, name: name} }

func (x *xattrPath) toProc() {
	x.proc = true
	if x.name == "" {
		x.p, x.follow = "/proc/self/fd/"+strconv.Itoa(x.dfd), true
		return
	}
	x.p = "/proc/self/fd/" + strconv.Itoa(x.dfd) + "/" + x.name
}

func (x *xattrPath) list(buf []byte) (int, error) {
	if !x.proc {
		switch {
		case x.name == "":
			n, err := unix.Flistxattr(x.dfd, buf)
			if err != unix.EBADF { // EBADF: an O_PATH descriptor
				return n, err
			}
		case !noXattrAt.Load():
			n, err := listxattrat(x.dfd, x.name, buf)
			if err != unix.ENOSYS {
				return n, err
			}
			noXattrAt.Store(true)
		}
		x.toProc()
	}
	if x.follow {
		return unix.Listxattr(x.p, buf)
	}
	return unix.Llistxattr(x.p, buf)
}

func (x *xattrPath) get(name string, buf []byte) (int, error) {
	if !x.proc {
		switch {
		case x.name == "":
			n, err := unix.Fgetxattr(x.dfd, name, buf)
			if err != unix.EBADF {
				return n, err
			}
		case !noXattrAt.Load():
			n, err := getxattrat(x.dfd, x.name, name, buf)
			if err != unix.ENOSYS {
				return n, err
			}
			noXattrAt.Store(true)
		}
		x.toProc()
	}
	if x.follow {
		return unix.Getxattr(x.p, name, buf)
	}
	return unix.Lgetxattr(x.p, name, buf)
}

// listxattrat(2) of name inside dfd, not following a symlink.
func listxattrat(dfd int, name string, buf []byte) (int, error) {
	p, err := unix.BytePtrFromString(name)
	if err != nil {
		return 0, err
	}
	var b unsafe.Pointer
	if len(buf) > 0 {
		b = unsafe.Pointer(&buf[0])
	}
	for {
		n, _, e := unix.Syscall6(unix.SYS_LISTXATTRAT, uintptr(dfd), uintptr(unsafe.Pointer(p)),
			unix.AT_SYMLINK_NOFOLLOW, uintptr(b), uintptr(len(buf)), 0)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return 0, e
		}
		return int(n), nil
	}
}

// xattrArgs is the kernel's struct xattr_args.
type xattrArgs struct {
	value uint64
	size  uint32
	flags uint32
}

// getxattrat(2) of attribute attr of name inside dfd, not following a
// symlink.
func getxattrat(dfd int, name, attr string, buf []byte) (int, error) {
	p, err := unix.BytePtrFromString(name)
	if err != nil {
		return 0, err
	}
	a, err := unix.BytePtrFromString(attr)
	if err != nil {
		return 0, err
	}
	args := xattrArgs{size: uint32(len(buf))}
	if len(buf) > 0 {
		args.value = uint64(uintptr(unsafe.Pointer(&buf[0])))
	}
	for {
		n, _, e := unix.Syscall6(unix.SYS_GETXATTRAT, uintptr(dfd), uintptr(unsafe.Pointer(p)),
			unix.AT_SYMLINK_NOFOLLOW, uintptr(unsafe.Pointer(a)), uintptr(unsafe.Pointer(&args)), unsafe.Sizeof(args))
		runtime.KeepAlive(buf)
		if e == unix.EINTR {
			continue
		}
		if e != 0 {
			return 0, e
		}
		return int(n), nil
	}
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
