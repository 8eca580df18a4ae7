package wire

import (
	"bufio"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"slices"
	"syscall"
)

// Sealed frames: a 4-byte big-endian length of what follows, then the
// AES-256-GCM ciphertext and tag of the plaintext; the length is the
// additional data and the nonce is the frame's number in its direction, so
// a dropped, replayed, reordered or altered frame fails to open.
const (
	hdrLen          = 4
	tagLen          = 16
	frameBatch byte = 'B' // c2s: u64 first seq, then ops with consecutive seqs
	frameAck   byte = 'K' // s2c: ack
	frameReply byte = 'R' // s2c: u64 seq of a query op, u8 status (0 ok, 1 error), payload
	batchHdr        = hdrLen + 1 + 8
	maxC2S          = 32 << 20 // a batch (~1 MiB) plus one op of up to MaxOpData, with room
	maxS2C          = MaxReply + 64<<10
	maxAckMsg       = 4096
)

// ErrFrameAuth means a frame failed authentication: the stream was altered
// or corrupted, and the connection is dropped.
var ErrFrameAuth = errors.New("replication frame failed authentication (altered or corrupted stream)")

type sealer struct {
	aead cipher.AEAD
	ctr  uint64
}

// seal encrypts f[hdrLen:] in place and fills in the header; f[:hdrLen] is
// reserved by the caller.
func (s *sealer) seal(f []byte) []byte {
	f = slices.Grow(f, tagLen)
	binary.BigEndian.PutUint32(f[:hdrLen], uint32(len(f)-hdrLen+tagLen))
	var nonce [12]byte
	binary.BigEndian.PutUint64(nonce[4:], s.ctr)
	s.ctr++
	out := s.aead.Seal(f[hdrLen:hdrLen], nonce[:], f[hdrLen:], f[:hdrLen])
	return f[:hdrLen+len(out)]
}

type opener struct {
	aead cipher.AEAD
	ctr  uint64
	r    *bufio.Reader
	max  int
}

// read reads and opens the next frame into buf (grown as needed) and
// returns the plaintext, which aliases the returned buffer.
func (o *opener) read(buf []byte) (plain, nbuf []byte, err error) {
	var h [hdrLen]byte
	if _, err := io.ReadFull(o.r, h[:]); err != nil {
		return nil, buf, err
	}
	n := int(binary.BigEndian.Uint32(h[:]))
	if n < tagLen+1 || n > o.max {
		return nil, buf, fmt.Errorf("replication frame of %d bytes (limit %d): %w", n, o.max, ErrFrameAuth)
	}
	if cap(buf) < n {
		buf = make([]byte, n, n+n/4)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(o.r, buf); err != nil {
		return nil, buf, err
	}
	var nonce [12]byte
	binary.BigEndian.PutUint64(nonce[4:], o.ctr)
	o.ctr++
	plain, err = o.aead.Open(buf[:0], nonce[:], buf, h[:])
	if err != nil {
		return nil, buf, ErrFrameAuth
	}
	return plain, buf, nil
}

// ack is the receiver's report.
type ack struct {
	Applied uint64 // last op applied
	Durable uint64 // last Fsync or SyncAll op done, in order: that op's effect is durable
	Flushed uint64 // last SyncAll op done: every op up to it is durable
	ErrSeq  uint64 // 0: no error
	Errno   uint32
	Msg     string
}

func appendAck(b []byte, a *ack) []byte {
	b = append(b, frameAck)
	b = binary.BigEndian.AppendUint64(b, a.Applied)
	b = binary.BigEndian.AppendUint64(b, a.Durable)
	b = binary.BigEndian.AppendUint64(b, a.Flushed)
	b = binary.BigEndian.AppendUint64(b, a.ErrSeq)
	b = binary.BigEndian.AppendUint32(b, a.Errno)
	msg := a.Msg
	if len(msg) > maxAckMsg {
		msg = msg[:maxAckMsg]
	}
	b = binary.BigEndian.AppendUint16(b, uint16(len(msg)))
	return append(b, msg...)
}

func parseAck(b []byte) (a ack, err error) {
	const fixed = 1 + 8 + 8 + 8 + 8 + 4 + 2
	if len(b) < fixed || b[0] != frameAck || len(b) != fixed+int(binary.BigEndian.Uint16(b[fixed-2:])) {
		return a, errors.New("malformed ack")
	}
	a.Applied = binary.BigEndian.Uint64(b[1:])
	a.Durable = binary.BigEndian.Uint64(b[9:])
	a.Flushed = binary.BigEndian.Uint64(b[17:])
	a.ErrSeq = binary.BigEndian.Uint64(b[25:])
	a.Errno = binary.BigEndian.Uint32(b[33:])
	a.Msg = string(b[fixed:])
	return a, nil
}

// MaxReply is the largest answer to a query op.
const MaxReply = 4 << 20

// Reply is the secondary's answer to a query op (see Sender.Query).
type Reply struct {
	Data []byte
	Err  error
}

func appendReply(b []byte, seq uint64, data []byte, err error) []byte {
	b = append(b, frameReply)
	b = binary.BigEndian.AppendUint64(b, seq)
	if err != nil {
		msg := err.Error()
		if len(msg) > maxAckMsg {
			msg = msg[:maxAckMsg]
		}
		return append(append(b, 1), msg...)
	}
	return append(append(b, 0), data...)
}

func parseReply(b []byte) (seq uint64, r Reply, err error) {
	if len(b) < 10 || b[0] != frameReply || b[9] > 1 {
		return 0, r, errors.New("malformed query reply")
	}
	seq = binary.BigEndian.Uint64(b[1:])
	payload := b[10:]
	if b[9] == 1 {
		r.Err = &QueryError{Msg: string(payload)}
	} else {
		r.Data = append([]byte(nil), payload...)
	}
	return seq, r, nil
}

// QueryError is a query the secondary could not answer.
type QueryError struct{ Msg string }

func (e *QueryError) Error() string { return "the secondary could not answer: " + e.Msg }

// ApplyError is the failure the secondary reported for one op. It unwraps
// to the system error, so errors.Is(err, syscall.ENOSPC) holds on the
// primary too.
type ApplyError struct {
	Seq   uint64
	Errno syscall.Errno // 0 when the failure was not a system error
	Msg   string
}

func (e *ApplyError) Error() string {
	return fmt.Sprintf("the secondary failed to apply op %d: %s", e.Seq, e.Msg)
}

func (e *ApplyError) Unwrap() error {
	if e.Errno == 0 {
		return nil
	}
	return e.Errno
}
