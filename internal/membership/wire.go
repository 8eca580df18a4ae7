package membership

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
)

// Wire format of one heartbeat datagram (big endian):
//
//	off  size  field
//	0    4     magic "TDM1"
//	4    1     version (1)
//	5    1     flags (bit 0: the sender is leaving)
//	6    1     network index (position in the cluster's network list)
//	7    1     sender name length (1..255)
//	8    1     cluster name length (1..255)
//	9    1     destination node name length (1..255)
//	10   4     payload length (<= MaxPayload)
//	14   8     sender incarnation
//	22   8     sequence (one counter per sender->destination, shared by networks)
//	30   8     echo: the destination's incarnation as last seen by the sender (0 = none)
//	38   8     timestamp, unix nanoseconds (informative only)
//	46   ...   sender, cluster, destination, payload
//	end-32 32  HMAC-SHA256 with the cluster key over every preceding byte
//
// The destination name and the echo bind a datagram to one receiver and to
// that receiver's current run, so a datagram cannot be redirected to another
// node nor replayed into a receiver that restarted (see receive).
const (
	magic       = "TDM1"
	wireVersion = 1
	headerLen   = 46
	macLen      = sha256.Size

	flagLeaving = 1 << 0

	// MaxPayload bounds SetPayload so that a datagram with 255-byte names
	// still fits in one UDP datagram (65507 bytes over IPv4).
	MaxPayload = 60 << 10
)

// datagram is a decoded heartbeat. Byte slices alias the decoded buffer.
type datagram struct {
	Version     uint8
	Flags       uint8
	NetIndex    uint8
	Incarnation uint64
	Seq         uint64
	Echo        uint64
	Timestamp   int64
	Sender      []byte
	Cluster     []byte
	Dest        []byte
	Payload     []byte
}

func (d *datagram) leaving() bool { return d.Flags&flagLeaving != 0 }

var errShort = errors.New("shorter than the fixed header")

// appendDatagram encodes d, appends its MAC computed with mac (an HMAC
// already keyed with the cluster key) and returns the extended dst.
func appendDatagram(dst []byte, d *datagram, mac hash.Hash) []byte {
	start := len(dst)
	dst = append(dst, magic...)
	dst = append(dst, wireVersion, d.Flags, d.NetIndex,
		byte(len(d.Sender)), byte(len(d.Cluster)), byte(len(d.Dest)))
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(d.Payload)))
	dst = binary.BigEndian.AppendUint64(dst, d.Incarnation)
	dst = binary.BigEndian.AppendUint64(dst, d.Seq)
	dst = binary.BigEndian.AppendUint64(dst, d.Echo)
	dst = binary.BigEndian.AppendUint64(dst, uint64(d.Timestamp))
	dst = append(dst, d.Sender...)
	dst = append(dst, d.Cluster...)
	dst = append(dst, d.Dest...)
	dst = append(dst, d.Payload...)
	mac.Reset()
	mac.Write(dst[start:])
	return mac.Sum(dst)
}

// decodeDatagram checks the structure of b (lengths, magic, version) and
// returns its fields. It does not check the MAC: see verifyMAC.
func decodeDatagram(b []byte) (datagram, error) {
	var d datagram
	if len(b) < headerLen+macLen {
		return d, fmt.Errorf("%d bytes: %w", len(b), errShort)
	}
	if string(b[:4]) != magic {
		return d, fmt.Errorf("bad magic %q (not a tandem heartbeat)", b[:4])
	}
	d.Version = b[4]
	if d.Version != wireVersion {
		return d, fmt.Errorf("unsupported version %d (we speak %d): run the same tandem version on every node", d.Version, wireVersion)
	}
	d.Flags = b[5]
	d.NetIndex = b[6]
	sl, cl, dl := int(b[7]), int(b[8]), int(b[9])
	pl := binary.BigEndian.Uint32(b[10:14])
	if sl == 0 || cl == 0 || dl == 0 {
		return d, errors.New("empty sender, cluster or destination name")
	}
	if pl > MaxPayload {
		return d, fmt.Errorf("payload length %d exceeds %d", pl, MaxPayload)
	}
	want := headerLen + sl + cl + dl + int(pl) + macLen
	if len(b) != want {
		return d, fmt.Errorf("length %d, header says %d", len(b), want)
	}
	d.Incarnation = binary.BigEndian.Uint64(b[14:22])
	d.Seq = binary.BigEndian.Uint64(b[22:30])
	d.Echo = binary.BigEndian.Uint64(b[30:38])
	d.Timestamp = int64(binary.BigEndian.Uint64(b[38:46]))
	off := headerLen
	d.Sender = b[off : off+sl : off+sl]
	off += sl
	d.Cluster = b[off : off+cl : off+cl]
	off += cl
	d.Dest = b[off : off+dl : off+dl]
	off += dl
	d.Payload = b[off : off+int(pl) : off+int(pl)]
	return d, nil
}

// verifyMAC reports whether the trailing MAC of b (a datagram that
// decodeDatagram accepted) is right. mac is an HMAC keyed with the cluster
// key; sum is scratch space of at least macLen bytes capacity.
func verifyMAC(b []byte, mac hash.Hash, sum []byte) bool {
	if len(b) < macLen {
		return false
	}
	body := len(b) - macLen
	mac.Reset()
	mac.Write(b[:body])
	return hmac.Equal(mac.Sum(sum[:0]), b[body:])
}

func newMAC(key []byte) hash.Hash { return hmac.New(sha256.New, key) }
