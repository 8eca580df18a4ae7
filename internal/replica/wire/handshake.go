package wire

import (
	"bufio"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
)

const (
	magic         = "TDMR"
	version       = 2 // 2: acks carry the flushed seq
	nonceLen      = 32
	macLen        = sha256.Size
	maxHandshake  = 4096
	minKeyLen     = 16
	labelHello    = "tandem replica hello\x00"
	labelResponse = "tandem replica response\x00"
	infoC2S       = "tandem replica c2s"
	infoS2C       = "tandem replica s2c"
)

// RefuseCode says why a secondary refused a stream.
type RefuseCode uint8

const (
	RefusedOther      RefuseCode = iota
	RefusedVersion               // protocol versions differ
	RefusedAuth                  // MAC check failed: the cluster keys differ
	RefusedCluster               // the secondary belongs to another cluster
	RefusedModule                // the secondary does not serve this module here
	RefusedStaleEpoch            // the sender's epoch is older than the secondary's
)

var refuseNames = [...]string{"refused", "protocol version mismatch", "authentication failed",
	"wrong cluster", "wrong module", "stale epoch"}

func (c RefuseCode) String() string {
	if int(c) < len(refuseNames) {
		return refuseNames[c]
	}
	return fmt.Sprintf("refusal %d", uint8(c))
}

// RefusedError is returned by Dial when the secondary refused the stream.
type RefusedError struct {
	Addr   string
	Code   RefuseCode
	Reason string
	// Authentic is false when the refusal did not carry a valid MAC under
	// our key (different keys, or someone else answered): Code is then
	// RefusedAuth whatever the peer claimed, so that a forged "stale epoch"
	// cannot make a primary step down.
	Authentic bool
}

func (e *RefusedError) Error() string {
	if !e.Authentic {
		return fmt.Sprintf("secondary %s refused the replication stream with an answer not authenticated by our cluster key (do both nodes have the same key?): %s", e.Addr, e.Reason)
	}
	return fmt.Sprintf("secondary %s refused the replication stream: %s: %s", e.Addr, e.Code, e.Reason)
}

// hello is the client's first message.
type hello struct {
	Cluster, Module, Node string
	Epoch, StartSeq       uint64
	Nonce                 [nonceLen]byte
}

// accept is the server's positive answer.
type accept struct {
	Epoch, LastApplied uint64
	Node               string
}

func newMAC(key []byte, label string) hashWriter {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(label))
	return m
}

type hashWriter interface {
	io.Writer
	Sum([]byte) []byte
}

func writeMsg(w io.Writer, body []byte) error {
	if len(body) > maxHandshake {
		return fmt.Errorf("handshake message of %d bytes", len(body))
	}
	b := binary.BigEndian.AppendUint16(make([]byte, 0, 2+len(body)), uint16(len(body)))
	_, err := w.Write(append(b, body...))
	return err
}

func readMsg(r *bufio.Reader) ([]byte, error) {
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return nil, err
	}
	n := int(binary.BigEndian.Uint16(h[:]))
	if n > maxHandshake {
		return nil, fmt.Errorf("handshake message of %d bytes (limit %d)", n, maxHandshake)
	}
	b := make([]byte, n)
	_, err := io.ReadFull(r, b)
	return b, err
}

func appendStr8(b []byte, s string) []byte {
	if len(s) > 255 {
		s = s[:255]
	}
	return append(append(b, byte(len(s))), s...)
}

func challengeBody(nonce *[nonceLen]byte) []byte {
	b := append([]byte(magic), 0, version)
	return append(b, nonce[:]...)
}

func parseChallenge(b []byte) (v uint16, nonce [nonceLen]byte, err error) {
	if len(b) != len(magic)+2+nonceLen || string(b[:len(magic)]) != magic {
		return 0, nonce, errors.New("the peer does not speak the Tandem replication protocol")
	}
	copy(nonce[:], b[len(magic)+2:])
	return binary.BigEndian.Uint16(b[len(magic):]), nonce, nil
}

func (h *hello) marshal(key, challenge []byte) []byte {
	b := append([]byte(magic), 0, version)
	b = appendStr8(b, h.Cluster)
	b = appendStr8(b, h.Module)
	b = appendStr8(b, h.Node)
	b = binary.BigEndian.AppendUint64(b, h.Epoch)
	b = binary.BigEndian.AppendUint64(b, h.StartSeq)
	b = append(b, h.Nonce[:]...)
	m := newMAC(key, labelHello)
	m.Write(challenge)
	m.Write(b)
	return m.Sum(b)
}

// parseHello decodes a hello and reports whether its MAC is valid.
func parseHello(b, key, challenge []byte) (h hello, v uint16, macOK bool, err error) {
	if len(b) < len(magic)+2+macLen || string(b[:len(magic)]) != magic {
		return h, 0, false, errors.New("the peer does not speak the Tandem replication protocol")
	}
	body, mac := b[:len(b)-macLen], b[len(b)-macLen:]
	m := newMAC(key, labelHello)
	m.Write(challenge)
	m.Write(body)
	macOK = hmac.Equal(m.Sum(nil), mac)
	v = binary.BigEndian.Uint16(b[len(magic):])
	if v != version {
		return h, v, macOK, nil
	}
	r := body[len(magic)+2:]
	str := func() string {
		if err != nil || len(r) < 1 || len(r) < 1+int(r[0]) {
			err = errors.New("truncated hello")
			return ""
		}
		s := string(r[1 : 1+r[0]])
		r = r[1+r[0]:]
		return s
	}
	h.Cluster, h.Module, h.Node = str(), str(), str()
	if err != nil || len(r) != 16+nonceLen {
		return h, v, macOK, errors.New("malformed hello")
	}
	h.Epoch = binary.BigEndian.Uint64(r)
	h.StartSeq = binary.BigEndian.Uint64(r[8:])
	copy(h.Nonce[:], r[16:])
	return h, v, macOK, nil
}

// responseMAC authenticates a response body, bound to the whole exchange.
func responseMAC(key, challenge, helloMsg, body []byte) []byte {
	m := newMAC(key, labelResponse)
	m.Write(challenge)
	m.Write(helloMsg)
	m.Write(body)
	return m.Sum(body)
}

func acceptBody(a *accept) []byte {
	b := []byte{'A'}
	b = binary.BigEndian.AppendUint64(b, a.Epoch)
	b = binary.BigEndian.AppendUint64(b, a.LastApplied)
	return appendStr8(b, a.Node)
}

func refuseBody(code RefuseCode, reason string) []byte {
	if len(reason) > 1024 {
		reason = reason[:1024]
	}
	b := []byte{'R', byte(code)}
	b = binary.BigEndian.AppendUint16(b, uint16(len(reason)))
	return append(b, reason...)
}

// parseResponse returns the accept, or a *RefusedError.
func parseResponse(b, key, challenge, helloMsg []byte, addr string) (*accept, error) {
	if len(b) < 1+macLen {
		return nil, errors.New("truncated handshake answer")
	}
	// Clipped: responseMAC appends to body, which must not overwrite mac.
	body, mac := b[:len(b)-macLen:len(b)-macLen], b[len(b)-macLen:]
	ok := hmac.Equal(responseMAC(key, challenge, helloMsg, body)[len(body):], mac)
	switch body[0] {
	case 'A':
		if !ok {
			return nil, errors.New("the secondary's handshake answer failed authentication (different cluster keys, or an attacker in the path)")
		}
		if len(body) < 18 || len(body) != 18+int(body[17]) {
			return nil, errors.New("malformed handshake answer")
		}
		return &accept{Epoch: binary.BigEndian.Uint64(body[1:]), LastApplied: binary.BigEndian.Uint64(body[9:]),
			Node: string(body[18:])}, nil
	case 'R':
		if len(body) < 4 || len(body) != 4+int(binary.BigEndian.Uint16(body[2:])) {
			return nil, errors.New("malformed refusal")
		}
		e := &RefusedError{Addr: addr, Code: RefuseCode(body[1]), Reason: string(body[4:]), Authentic: ok}
		if !ok {
			e.Code = RefusedAuth
		}
		return nil, e
	}
	return nil, fmt.Errorf("unknown handshake answer type %q", body[0])
}

// sessionKeys derives the two directions' AEADs.
func sessionKeys(key []byte, clientNonce, serverNonce *[nonceLen]byte) (c2s, s2c cipher.AEAD, err error) {
	salt := append(append(make([]byte, 0, 2*nonceLen), clientNonce[:]...), serverNonce[:]...)
	mk := func(info string) (cipher.AEAD, error) {
		k, err := hkdf.Key(sha256.New, key, salt, info, 32)
		if err != nil {
			return nil, err
		}
		blk, err := aes.NewCipher(k)
		if err != nil {
			return nil, err
		}
		return cipher.NewGCM(blk)
	}
	if c2s, err = mk(infoC2S); err != nil {
		return nil, nil, err
	}
	s2c, err = mk(infoS2C)
	return c2s, s2c, err
}

func randomNonce() (n [nonceLen]byte) {
	rand.Read(n[:]) // never fails (crypto/rand panics rather)
	return n
}

// clientHandshake runs the sender's side. The caller sets deadlines.
func clientHandshake(conn net.Conn, br *bufio.Reader, key []byte, h *hello, addr string) (*accept, cipher.AEAD, cipher.AEAD, error) {
	challenge, err := readMsg(br)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("read the secondary's challenge: %w", err)
	}
	v, serverNonce, err := parseChallenge(challenge)
	if err != nil {
		return nil, nil, nil, err
	}
	if v != version {
		return nil, nil, nil, fmt.Errorf("the secondary speaks replication protocol version %d, we speak %d: upgrade both nodes to the same release", v, version)
	}
	h.Nonce = randomNonce()
	msg := h.marshal(key, challenge)
	if err := writeMsg(conn, msg); err != nil {
		return nil, nil, nil, fmt.Errorf("send hello: %w", err)
	}
	resp, err := readMsg(br)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("read the secondary's answer: %w", err)
	}
	acc, err := parseResponse(resp, key, challenge, msg, addr)
	if err != nil {
		return nil, nil, nil, err
	}
	c2s, s2c, err := sessionKeys(key, &h.Nonce, &serverNonce)
	return acc, c2s, s2c, err
}
