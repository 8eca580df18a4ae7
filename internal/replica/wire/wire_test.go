package wire

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/replica/apply"
	"github.com/tandem-ha/tandem/internal/replica/op"
	"golang.org/x/sys/unix"
)

var testKey = []byte("0123456789abcdef0123456789abcdef")

// rig is a Receiver serving a temp dir on a loopback listener.
type rig struct {
	dir     string
	addr    string
	epoch   atomic.Uint64
	errs    chan error
	cancel  context.CancelFunc
	done    chan error
	applier *apply.Applier
	once    sync.Once
}

func newRig(t testing.TB, dir string, mod func(*ReceiverConfig)) *rig {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	a, err := apply.New(dir)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &rig{dir: dir, addr: ln.Addr().String(), errs: make(chan error, 16), done: make(chan error, 1), applier: a}
	r.epoch.Store(5)
	cfg := ReceiverConfig{Cluster: "c1", Module: "db", Node: "n2", Key: testKey, Epoch: r.epoch.Load,
		Applier: a, Logger: quietLogger(t), OnError: func(err error) { r.errs <- err }}
	if mod != nil {
		mod(&cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.done <- Serve(ctx, ln, cfg) }()
	t.Cleanup(func() {
		r.stop(t)
		a.Close()
	})
	return r
}

func (r *rig) stop(t testing.TB) {
	t.Helper()
	r.once.Do(func() {
		r.cancel()
		select {
		case err := <-r.done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Serve did not return within 5s of cancel")
		}
	})
}

func quietLogger(testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func (r *rig) senderConfig() SenderConfig {
	return SenderConfig{Cluster: "c1", Module: "db", Node: "n1", Key: testKey, Epoch: 5, Addr: r.addr,
		Timeout: 2 * time.Second}
}

func dial(t *testing.T, cfg SenderConfig) *Sender {
	t.Helper()
	if cfg.Logger == nil {
		cfg.Logger = quietLogger(t)
	}
	s, err := Dial(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// describe renders what a replica must reproduce of a tree.
func describe(t *testing.T, root string) string {
	t.Helper()
	var b strings.Builder
	old := time.Now().Add(-time.Hour)
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		st := fi.Sys().(*syscall.Stat_t)
		fmt.Fprintf(&b, "%s mode=%o uid=%d gid=%d nlink=%d", rel, st.Mode, st.Uid, st.Gid, st.Nlink)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			fmt.Fprintf(&b, " size=%d sha=%x", st.Size, sha256.Sum256(data))
		case unix.S_IFLNK:
			tgt, _ := os.Readlink(p)
			fmt.Fprintf(&b, " -> %q", tgt)
		}
		if mt := time.Unix(st.Mtim.Sec, st.Mtim.Nsec); mt.Before(old) {
			fmt.Fprintf(&b, " mtime=%d.%09d", st.Mtim.Sec, st.Mtim.Nsec)
		}
		buf := make([]byte, 4096)
		n, _ := unix.Llistxattr(p, buf)
		names := strings.Split(string(buf[:n]), "\x00")
		sort.Strings(names)
		for _, nm := range names {
			if strings.HasPrefix(nm, "user.") {
				v := make([]byte, 256)
				vn, _ := unix.Lgetxattr(p, nm, v)
				fmt.Fprintf(&b, " %s=%q", nm, v[:vn])
			}
		}
		b.WriteByte('\n')
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

func mixedOps(xattrs bool) []op.Op {
	big := make([]byte, 3<<20+17)
	for i := range big {
		big[i] = byte(i * 7)
	}
	ops := []op.Op{
		{Kind: op.Mkdir, Path: "d", Mode: 0o750, Uid: -1, Gid: -1},
		{Kind: op.Mkdir, Path: "d/e", Mode: 0o755, Uid: -1, Gid: -1},
		{Kind: op.Create, Path: "d/f", Mode: 0o640, Uid: -1, Gid: -1},
		{Kind: op.Write, Path: "d/f", Data: []byte("hello, world")},
		{Kind: op.Write, Path: "d/f", Data: big, Off: 100},
		{Kind: op.Truncate, Path: "d/f", Off: 2 << 20},
		{Kind: op.Fsync, Path: "d/f"},
		{Kind: op.Create, Path: "d/e/g", Mode: 0o755, Uid: -1, Gid: -1},
		{Kind: op.Fallocate, Path: "d/e/g", Flags: unix.FALLOC_FL_KEEP_SIZE, Len: 1 << 16},
		{Kind: op.Mknod, Path: "d/fifo", Mode: unix.S_IFIFO | 0o600, Uid: -1, Gid: -1},
		{Kind: op.Symlink, Path: "d/ln", Data: []byte("../elsewhere"), Uid: -1, Gid: -1},
		{Kind: op.Link, Path: "d/f", Path2: "d/e/hard"},
		{Kind: op.Chmod, Path: "d/f", Mode: 0o600},
		{Kind: op.Chown, Path: "d/ln", Uid: -1, Gid: int64(os.Getgid())},
		{Kind: op.Utimens, Path: "d/f", Atime: op.Time{Sec: 1e9}, Mtime: op.Time{Sec: 1e9 + 1, Nsec: 5}},
		{Kind: op.Utimens, Path: "d/ln", Atime: op.Time{Nsec: op.UtimeOmit}, Mtime: op.Time{Sec: 1e9}},
		{Kind: op.Create, Path: "a", Mode: 0o644, Uid: -1, Gid: -1},
		{Kind: op.Create, Path: "b", Mode: 0o644, Uid: -1, Gid: -1},
		{Kind: op.Write, Path: "a", Data: []byte("AAAA")},
		{Kind: op.Rename, Path: "a", Path2: "b", Flags: unix.RENAME_EXCHANGE},
		{Kind: op.Rename, Path: "a", Path2: "d/e/a2", Flags: unix.RENAME_NOREPLACE},
		{Kind: op.Rename, Path: "d/e", Path2: "moved"},
		{Kind: op.Write, Path: "moved/g", Data: []byte("after dir rename"), Off: 1},
		{Kind: op.Mkdir, Path: "gone", Mode: 0o755, Uid: -1, Gid: -1},
		{Kind: op.Rmdir, Path: "gone"},
		{Kind: op.Unlink, Path: "d/fifo"},
		{Kind: op.SyncAll},
	}
	for i := range 200 {
		ops = append(ops, op.Op{Kind: op.Write, Path: "b", Data: bytes.Repeat([]byte{byte(i)}, 4096), Off: int64(i) * 4096})
	}
	if xattrs {
		ops = append(ops,
			op.Op{Kind: op.SetXattr, Path: "d/f", Name: "user.one", Data: []byte("1")},
			op.Op{Kind: op.SetXattr, Path: "d/f", Name: "user.two", Data: []byte("2"), Flags: unix.XATTR_CREATE},
			op.Op{Kind: op.RemoveXattr, Path: "d/f", Name: "user.two"},
			op.Op{Kind: op.SetXattr, Path: "", Name: "user.root", Data: []byte("r")},
		)
	}
	return append(ops, op.Op{Kind: op.Fsync, Path: "b", Flags: op.DataOnly})
}

func TestStreamAppliesEveryKind(t *testing.T) {
	r := newRig(t, "", nil)
	ref := t.TempDir()
	refA, err := apply.New(ref)
	if err != nil {
		t.Fatal(err)
	}
	defer refA.Close()
	xa := unix.Setxattr(ref, "user.probe", nil, 0) == nil
	if xa {
		unix.Removexattr(ref, "user.probe")
	}
	s := dial(t, r.senderConfig())
	var last uint64
	ops := mixedOps(xa)
	for i := range ops {
		if err := refA.Apply(&ops[i]); err != nil {
			t.Fatalf("reference: %v", err)
		}
		// The caller may reuse its buffer at once: scribble over it.
		o := ops[i]
		o.Data = bytes.Clone(o.Data)
		last = s.Submit(&o)
		for j := range o.Data {
			o.Data[j] ^= 0xff
		}
	}
	if want := uint64(len(ops)); last != want {
		// the 3 MiB write fits one op (MaxOpData 4 MiB)
		t.Fatalf("last seq %d, want %d", last, want)
	}
	if err := s.Wait(last, true); err != nil {
		t.Fatal(err)
	}
	if err := s.Failed(); err != nil {
		t.Fatal(err)
	}
	if got, want := describe(t, r.dir), describe(t, ref); got != want {
		t.Fatalf("replica:\n%s\nreference:\n%s", got, want)
	}
	if a, d := s.Acked(); a != last || d != last {
		t.Fatalf("acked %d durable %d, want %d", a, d, last)
	}
	if n, b := s.Lag(); n != 0 || b != 0 {
		t.Fatalf("lag %d ops %d bytes after everything was acknowledged", n, b)
	}
}

func TestLargeWriteIsSplit(t *testing.T) {
	r := newRig(t, "", nil)
	s := dial(t, r.senderConfig())
	data := make([]byte, 2*MaxOpData+5)
	for i := range data {
		data[i] = byte(i / 4096)
	}
	s.Submit(&op.Op{Kind: op.Create, Path: "f", Mode: 0o644, Uid: -1, Gid: -1})
	seq := s.Submit(&op.Op{Kind: op.Write, Path: "f", Data: data, Off: 10})
	if seq != 4 {
		t.Fatalf("seq %d, want 4 (create + 3 parts)", seq)
	}
	if err := s.Wait(seq, false); err != nil || s.Failed() != nil {
		t.Fatal(err, s.Failed())
	}
	got, _ := os.ReadFile(filepath.Join(r.dir, "f"))
	if !bytes.Equal(got[10:], data) {
		t.Fatal("content differs")
	}
}

func TestRefusals(t *testing.T) {
	r := newRig(t, "", nil)
	cases := []struct {
		name      string
		mod       func(*SenderConfig)
		code      RefuseCode
		authentic bool
		text      string
	}{
		{"wrong key", func(c *SenderConfig) { c.Key = []byte("another key of enough bytes") }, RefusedAuth, false, "same key"},
		{"wrong cluster", func(c *SenderConfig) { c.Cluster = "c2" }, RefusedCluster, true, `cluster "c1", not "c2"`},
		{"wrong module", func(c *SenderConfig) { c.Module = "web" }, RefusedModule, true, `module "db", not "web"`},
		{"stale epoch", func(c *SenderConfig) { c.Epoch = 4 }, RefusedStaleEpoch, true, "epoch 4 is older than this node's 5"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := r.senderConfig()
			cfg.Logger = quietLogger(t)
			c.mod(&cfg)
			s, err := Dial(context.Background(), cfg)
			if err == nil {
				s.Close()
				t.Fatal("accepted")
			}
			var re *RefusedError
			if !errors.As(err, &re) || re.Code != c.code || re.Authentic != c.authentic || !strings.Contains(err.Error(), c.text) {
				t.Fatalf("got %v (%+v)", err, re)
			}
			t.Log(err)
		})
	}
	// A key too short never leaves the node.
	cfg := r.senderConfig()
	cfg.Key = []byte("short")
	if _, err := Dial(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "at least 16") {
		t.Fatalf("short key: %v", err)
	}
	select {
	case err := <-r.errs:
		t.Fatalf("refusals reported as session errors: %v", err)
	default:
	}
}

func TestHelloIsBoundToChallenge(t *testing.T) {
	n1, n2 := randomNonce(), randomNonce()
	h := hello{Cluster: "c", Module: "m", Node: "n", Epoch: 9, StartSeq: 1, Nonce: randomNonce()}
	msg := h.marshal(testKey, challengeBody(&n1))
	if _, _, ok, err := parseHello(msg, testKey, challengeBody(&n1)); !ok || err != nil {
		t.Fatalf("valid hello: %v %v", ok, err)
	}
	if _, _, ok, _ := parseHello(msg, testKey, challengeBody(&n2)); ok {
		t.Fatal("a hello replayed against another challenge verified")
	}
}

func TestEpochTakeover(t *testing.T) {
	r := newRig(t, "", nil)
	cfg := r.senderConfig()
	cfg.Epoch = 7
	failed := make(chan error, 1)
	cfg.OnFailure = func(err error) { failed <- err }
	s1 := dial(t, cfg)
	s1.Wait(s1.Submit(&op.Op{Kind: op.Create, Path: "one", Mode: 0o644, Uid: -1, Gid: -1}), false)

	// Older than the running session, though not than the node: refused.
	cfg2 := r.senderConfig()
	cfg2.Epoch = 6
	if _, err := Dial(context.Background(), cfg2); err == nil || !strings.Contains(err.Error(), "older than the current stream's 7") {
		t.Fatalf("epoch 6 while 7 streams: %v", err)
	}
	// Same epoch (the primary reconnecting): replaces the session.
	cfg3 := r.senderConfig()
	cfg3.Epoch = 7
	s3 := dial(t, cfg3)
	if node, epoch := s3.Peer(); node != "n2" || epoch != 5 {
		t.Fatalf("peer %s epoch %d", node, epoch)
	}
	select {
	case err := <-failed:
		t.Log("old sender:", err)
	case <-time.After(3 * time.Second):
		t.Fatal("the replaced sender did not notice")
	}
	seq := s3.Submit(&op.Op{Kind: op.Create, Path: "three", Mode: 0o644, Uid: -1, Gid: -1})
	if err := s3.Wait(seq, false); err != nil || s3.Failed() != nil {
		t.Fatal(err, s3.Failed())
	}
	if _, err := os.Stat(filepath.Join(r.dir, "three")); err != nil {
		t.Fatal(err)
	}
}

// proxy forwards loopback TCP to target; c2s bytes pass through alter.
func proxy(t *testing.T, target string, alter func(off int, b []byte)) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, u)
			mu.Unlock()
			wg.Go(func() {
				defer u.Close()
				buf := make([]byte, 32<<10)
				off := 0
				for {
					n, err := c.Read(buf)
					if n > 0 {
						alter(off, buf[:n])
						off += n
						if _, err := u.Write(buf[:n]); err != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			})
			wg.Go(func() {
				defer c.Close()
				io.Copy(c, u)
			})
		}
	})
	return ln.Addr().String()
}

func TestTamperedFrameKillsSession(t *testing.T) {
	r := newRig(t, "", nil)
	const at = 5000 // well past the handshake, inside the first batch
	addr := proxy(t, r.addr, func(off int, b []byte) {
		if at >= off && at < off+len(b) {
			b[at-off] ^= 1
		}
	})
	cfg := r.senderConfig()
	cfg.Addr = addr
	failed := make(chan error, 1)
	cfg.OnFailure = func(err error) { failed <- err }
	s := dial(t, cfg)
	s.Submit(&op.Op{Kind: op.Create, Path: "f", Mode: 0o644, Uid: -1, Gid: -1})
	seq := s.Submit(&op.Op{Kind: op.Write, Path: "f", Data: make([]byte, 64<<10)})
	s.Wait(seq, false)
	select {
	case err := <-failed:
		if !strings.Contains(err.Error(), "authentication") {
			t.Errorf("sender: %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("sender not failed")
	}
	select {
	case err := <-r.errs:
		if !errors.Is(err, ErrFrameAuth) {
			t.Fatalf("receiver: %v", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("receiver reported nothing")
	}
	if fi, err := os.Stat(filepath.Join(r.dir, "f")); err == nil && fi.Size() != 0 {
		t.Fatal("the write in the tampered frame was applied")
	}
}

// gate blocks applies until opened.
type gate struct {
	mu     sync.Mutex
	open   chan struct{}
	closed bool
	n      atomic.Int64
}

func newGate() *gate { return &gate{open: make(chan struct{})} }

func (g *gate) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.closed {
		g.closed = true
		close(g.open)
	}
}

func (g *gate) hook(a *apply.Applier) func(*ReceiverConfig) {
	return func(c *ReceiverConfig) {
		c.Apply = func(o *op.Op) error {
			<-g.open
			g.n.Add(1)
			return a.Apply(o)
		}
	}
}

func gatedRig(t *testing.T) (*rig, *gate) {
	g := newGate()
	dir := t.TempDir()
	var a *apply.Applier
	r := newRig(t, dir, func(c *ReceiverConfig) {
		a = c.Applier
		g.hook(a)(c)
	})
	t.Cleanup(g.release) // before the rig's cleanup (LIFO)
	return r, g
}

func TestWaitAppliedAndDurable(t *testing.T) {
	r, g := gatedRig(t)
	s := dial(t, r.senderConfig())
	s.Submit(&op.Op{Kind: op.Create, Path: "f", Mode: 0o644, Uid: -1, Gid: -1})
	w := s.Submit(&op.Op{Kind: op.Write, Path: "f", Data: []byte("data")})
	fs := s.Submit(&op.Op{Kind: op.Fsync, Path: "f"})
	if err := s.Wait(fs+1, false); err == nil {
		t.Fatal("wait for an op never submitted: no error")
	}
	returned := make(chan struct{})
	go func() {
		s.Wait(w, false)
		close(returned)
	}()
	select {
	case <-returned:
		t.Fatal("Wait returned before the op was applied")
	case <-time.After(200 * time.Millisecond):
	}
	g.release()
	<-returned
	if b, _ := os.ReadFile(filepath.Join(r.dir, "f")); string(b) != "data" {
		t.Fatalf("after Wait: %q", b)
	}
	// The write is made durable by the fsync after it.
	if err := s.Wait(w, true); err != nil {
		t.Fatal(err)
	}
	if _, d := s.Acked(); d != fs {
		t.Fatalf("durable %d, want %d", d, fs)
	}
	if s.Failed() != nil {
		t.Fatal(s.Failed())
	}
	// Wait(durable) with no fsync after the op submits a SyncAll.
	w2 := s.Submit(&op.Op{Kind: op.Write, Path: "f", Data: []byte("more"), Off: 4})
	if err := s.Wait(w2, true); err != nil || s.Failed() != nil {
		t.Fatal(err, s.Failed())
	}
	if a, d := s.Acked(); a != w2+1 || d != w2+1 {
		t.Fatalf("acked %d durable %d, want the SyncAll %d", a, d, w2+1)
	}
}

func TestStuckPeerFails(t *testing.T) {
	r, _ := gatedRig(t) // never released until cleanup
	cfg := r.senderConfig()
	cfg.Timeout = 300 * time.Millisecond
	cfg.MaxLag = 64 << 10
	failed := make(chan error, 2)
	cfg.OnFailure = func(err error) { failed <- err }
	s := dial(t, cfg)
	start := time.Now()
	seq := s.Submit(&op.Op{Kind: op.Create, Path: "f", Mode: 0o644, Uid: -1, Gid: -1})
	if err := s.Wait(seq, false); err != nil {
		t.Fatal(err)
	}
	el := time.Since(start)
	if el < cfg.Timeout-50*time.Millisecond || el > cfg.Timeout+200*time.Millisecond {
		t.Fatalf("Wait returned after %v, Timeout %v", el, cfg.Timeout)
	}
	select {
	case err := <-failed:
		if !errors.Is(err, ErrPeerTimeout) {
			t.Fatalf("OnFailure(%v)", err)
		}
		if el := time.Since(start); el > cfg.Timeout+200*time.Millisecond {
			t.Fatalf("OnFailure after %v", el)
		}
	case <-time.After(time.Second):
		t.Fatal("OnFailure not called")
	}
	// Submit no longer blocks, whatever the lag.
	mib := make([]byte, 1<<20)
	start = time.Now()
	for range 100 {
		s.Wait(s.Submit(&op.Op{Kind: op.Write, Path: "f", Data: mib}), true)
	}
	if el := time.Since(start); el > 100*time.Millisecond {
		t.Fatalf("100 Submit+Wait after failure took %v", el)
	}
	select {
	case err := <-failed:
		t.Fatalf("OnFailure called twice: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
}

func TestSilentPeerFailsWithoutWait(t *testing.T) {
	// The watchdog alone (no Wait, no back-pressure) declares the failure.
	r, _ := gatedRig(t)
	cfg := r.senderConfig()
	cfg.Timeout = 200 * time.Millisecond
	failed := make(chan error, 1)
	cfg.OnFailure = func(err error) { failed <- err }
	s := dial(t, cfg)
	start := time.Now()
	s.Submit(&op.Op{Kind: op.Create, Path: "f", Mode: 0o644, Uid: -1, Gid: -1})
	select {
	case <-failed:
		if el := time.Since(start); el < cfg.Timeout || el > cfg.Timeout+150*time.Millisecond {
			t.Fatalf("failed after %v, Timeout %v", el, cfg.Timeout)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("not failed")
	}
}

func TestListenerGoneFailsAtOnce(t *testing.T) {
	r := newRig(t, "", nil)
	cfg := r.senderConfig()
	cfg.Timeout = 10 * time.Second
	failed := make(chan error, 1)
	cfg.OnFailure = func(err error) { failed <- err }
	s := dial(t, cfg)
	r.stop(t)
	start := time.Now()
	select {
	case err := <-failed:
		t.Log(err)
	case <-time.After(2 * time.Second):
		t.Fatal("not failed after the receiver stopped")
	}
	s.Wait(s.Submit(&op.Op{Kind: op.SyncAll}), true)
	if el := time.Since(start); el > 3*time.Second {
		t.Fatalf("took %v", el)
	}
}

func TestMaxLagBackPressure(t *testing.T) {
	r, g := gatedRig(t)
	cfg := r.senderConfig()
	cfg.MaxLag = 256 << 10
	cfg.Timeout = 5 * time.Second
	s := dial(t, cfg)
	s.Submit(&op.Op{Kind: op.Create, Path: "f", Mode: 0o644, Uid: -1, Gid: -1})
	var submitted atomic.Int64
	finished := make(chan uint64)
	go func() {
		var seq uint64
		for i := range 32 {
			seq = s.Submit(&op.Op{Kind: op.Write, Path: "f", Data: make([]byte, 64<<10), Off: int64(i) << 16})
			submitted.Add(1)
		}
		finished <- seq
	}()
	time.Sleep(300 * time.Millisecond)
	n := submitted.Load()
	if _, b := s.Lag(); n >= 32 || b > cfg.MaxLag+(64<<10) {
		t.Fatalf("%d writes submitted, lag %d bytes with MaxLag %d", n, b, cfg.MaxLag)
	}
	if n < 2 {
		t.Fatalf("only %d writes submitted", n)
	}
	g.release()
	select {
	case seq := <-finished:
		if err := s.Wait(seq, false); err != nil || s.Failed() != nil {
			t.Fatal(err, s.Failed())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Submit still blocked after the receiver resumed")
	}
	if fi, _ := os.Stat(filepath.Join(r.dir, "f")); fi.Size() != 32<<16 {
		t.Fatalf("size %d", fi.Size())
	}
}

func TestBackPressureBoundedByTimeout(t *testing.T) {
	r, _ := gatedRig(t)
	cfg := r.senderConfig()
	cfg.MaxLag = 64 << 10
	cfg.Timeout = 300 * time.Millisecond
	s := dial(t, cfg)
	start := time.Now()
	for range 4 {
		s.Submit(&op.Op{Kind: op.Write, Path: "f", Data: make([]byte, 64<<10)})
	}
	if el := time.Since(start); el > cfg.Timeout+200*time.Millisecond {
		t.Fatalf("Submit blocked %v", el)
	}
	if !errors.Is(s.Failed(), ErrPeerTimeout) {
		t.Fatalf("Failed() = %v", s.Failed())
	}
}

func TestApplyErrorReported(t *testing.T) {
	r := newRig(t, "", nil)
	cfg := r.senderConfig()
	failed := make(chan error, 1)
	cfg.OnFailure = func(err error) { failed <- err }
	s := dial(t, cfg)
	s.Submit(&op.Op{Kind: op.Create, Path: "ok", Mode: 0o644, Uid: -1, Gid: -1})
	bad := s.Submit(&op.Op{Kind: op.Write, Path: "../escape", Data: []byte("x")})
	s.Submit(&op.Op{Kind: op.Create, Path: "after", Mode: 0o644, Uid: -1, Gid: -1})
	s.Wait(bad, false)
	select {
	case err := <-failed:
		var ae *ApplyError
		if !errors.As(err, &ae) || ae.Seq != bad || !strings.Contains(err.Error(), "bad replicated path") {
			t.Fatalf("OnFailure(%v)", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("no failure")
	}
	if err := <-r.errs; !strings.Contains(err.Error(), "escape") {
		t.Fatalf("receiver: %v", err)
	}
	if _, err := os.Stat(filepath.Join(r.dir, "after")); err == nil {
		t.Fatal("an op after the failed one was applied")
	}
	if _, err := os.Stat(filepath.Join(r.dir, "ok")); err != nil {
		t.Fatal("the op before the failed one was not applied")
	}
}

func TestENOSPCOverTheWire(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to mount a tmpfs")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=1m", "tandem-wire-enospc", dir).CombinedOutput(); err != nil {
		t.Skipf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	r := newRig(t, dir, nil)
	cfg := r.senderConfig()
	failed := make(chan error, 1)
	cfg.OnFailure = func(err error) { failed <- err }
	s := dial(t, cfg)
	s.Submit(&op.Op{Kind: op.Create, Path: "big", Mode: 0o644, Uid: -1, Gid: -1})
	for i := range 8 {
		s.Submit(&op.Op{Kind: op.Write, Path: "big", Data: make([]byte, 256<<10), Off: int64(i) << 18})
	}
	s.Wait(s.Submit(&op.Op{Kind: op.Fsync, Path: "big"}), true)
	select {
	case err := <-failed:
		if !errors.Is(err, syscall.ENOSPC) {
			t.Fatalf("sender: %v", err)
		}
		t.Log(err)
	case <-time.After(3 * time.Second):
		t.Fatal("no failure")
	}
	if err := <-r.errs; !errors.Is(err, syscall.ENOSPC) {
		t.Fatalf("receiver: %v", err)
	}
}

func TestCloseReleasesWaiters(t *testing.T) {
	r, _ := gatedRig(t)
	cfg := r.senderConfig()
	cfg.Timeout = 10 * time.Second
	called := make(chan error, 1)
	cfg.OnFailure = func(err error) { called <- err }
	s := dial(t, cfg)
	seq := s.Submit(&op.Op{Kind: op.Create, Path: "f", Mode: 0o644, Uid: -1, Gid: -1})
	done := make(chan struct{})
	go func() {
		s.Wait(seq, true)
		close(done)
	}()
	time.Sleep(50 * time.Millisecond)
	s.Close()
	select {
	case <-done:
	case <-time.After(time.Second):
		t.Fatal("Wait still blocked after Close")
	}
	if !errors.Is(s.Failed(), ErrClosed) {
		t.Fatalf("Failed() = %v", s.Failed())
	}
	select {
	case err := <-called:
		t.Fatalf("OnFailure after Close: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
}

func TestConcurrentSubmitters(t *testing.T) {
	r := newRig(t, "", nil)
	s := dial(t, r.senderConfig())
	const files, writes = 8, 300
	for f := range files {
		s.Submit(&op.Op{Kind: op.Create, Path: fmt.Sprintf("f%d", f), Mode: 0o644, Uid: -1, Gid: -1})
	}
	var wg sync.WaitGroup
	for f := range files {
		wg.Go(func() {
			buf := make([]byte, 4096)
			for i := range writes {
				for j := range buf {
					buf[j] = byte(f + i)
				}
				seq := s.Submit(&op.Op{Kind: op.Write, Path: fmt.Sprintf("f%d", f), Data: buf, Off: int64(i) * 4096})
				if i%50 == 0 {
					s.Wait(seq, false)
				}
			}
		})
	}
	wg.Wait()
	if err := s.Wait(s.Submit(&op.Op{Kind: op.SyncAll}), true); err != nil || s.Failed() != nil {
		t.Fatal(err, s.Failed())
	}
	for f := range files {
		b, _ := os.ReadFile(filepath.Join(r.dir, fmt.Sprintf("f%d", f)))
		if len(b) != writes*4096 {
			t.Fatalf("f%d: %d bytes", f, len(b))
		}
		for i := range writes {
			if b[i*4096] != byte(f+i) || b[i*4096+4095] != byte(f+i) {
				t.Fatalf("f%d block %d = %d", f, i, b[i*4096])
			}
		}
	}
}

// countingConn counts the writes of the sender's connection (one per
// frame after the handshake).
type countingConn struct {
	net.Conn
	writes atomic.Int64
}

func (c *countingConn) Write(b []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(b)
}

func countingDialer(addr string) (func(context.Context) (net.Conn, error), *atomic.Pointer[countingConn]) {
	var last atomic.Pointer[countingConn]
	return func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		cc := &countingConn{Conn: c}
		last.Store(cc)
		return cc, nil
	}, &last
}

// TestLingerBatchesPlainOps: ops nobody waits for share frames; a Wait
// sends them at once (long before the linger ends).
func TestLingerBatchesPlainOps(t *testing.T) {
	r := newRig(t, "", nil)
	cfg := r.senderConfig()
	cfg.Linger = time.Hour // only a Wait can send them
	var conn *atomic.Pointer[countingConn]
	cfg.Dialer, conn = countingDialer(r.addr)
	s := dial(t, cfg)
	before := conn.Load().writes.Load()
	s.Submit(&op.Op{Kind: op.Create, Path: "f", Mode: 0o644, Uid: -1, Gid: -1})
	var last uint64
	for i := range 200 {
		last = s.Submit(&op.Op{Kind: op.Write, Path: "f", Data: bytes.Repeat([]byte{byte(i)}, 4096), Off: int64(i) * 4096})
	}
	if n := conn.Load().writes.Load() - before; n != 0 {
		t.Fatalf("%d frames sent before anyone waited, want 0 (linger of an hour)", n)
	}
	start := time.Now()
	if err := s.Wait(last, false); err != nil || s.Failed() != nil {
		t.Fatal(err, s.Failed())
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Wait took %s: the lingering ops were not sent at once", d)
	}
	if n := conn.Load().writes.Load() - before; n != 1 {
		t.Fatalf("201 small ops took %d frames, want 1", n)
	}
	b, err := os.ReadFile(filepath.Join(r.dir, "f"))
	if err != nil || len(b) != 200*4096 || b[199*4096] != 199 {
		t.Fatalf("file after Wait: %d bytes, %v", len(b), err)
	}
}

// TestLingerSendsWithoutWait: an op nobody waits for still leaves once
// the linger ends; Fsync ops leave at once.
func TestLingerSendsWithoutWait(t *testing.T) {
	applied := make(chan op.Kind, 16)
	r := newRig(t, "", func(c *ReceiverConfig) {
		c.Apply = func(o *op.Op) error {
			applied <- o.Kind
			return c.Applier.Apply(o)
		}
	})
	cfg := r.senderConfig()
	cfg.Linger = 50 * time.Millisecond
	s := dial(t, cfg)
	start := time.Now()
	s.Submit(&op.Op{Kind: op.Mkdir, Path: "d", Mode: 0o755, Uid: -1, Gid: -1})
	select {
	case k := <-applied:
		if d := time.Since(start); k != op.Mkdir || d < 40*time.Millisecond {
			t.Fatalf("%v applied after %s, want the Mkdir after its linger (50ms)", k, d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a lingering op was never sent")
	}
	cfg2 := r.senderConfig()
	cfg2.Linger = time.Hour
	cfg2.Epoch = 6
	s.Close()
	s2 := dial(t, cfg2)
	s2.Submit(&op.Op{Kind: op.SyncAll})
	select {
	case k := <-applied:
		if k != op.SyncAll {
			t.Fatalf("applied %v, want SyncAll", k)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a SyncAll lingered: it must leave at once")
	}
}

// TestQueriesAnsweredOutOfOrder: query ops are answered by the Answer hook
// in goroutines, each reply reaches its own caller whatever the order, and
// ops after a slow query are applied without waiting for its answer.
func TestQueriesAnsweredOutOfOrder(t *testing.T) {
	slow := make(chan struct{})
	r := newRig(t, "", func(c *ReceiverConfig) {
		c.Answer = func(q *op.Op) ([]byte, error) {
			if q.Path == "slow" {
				<-slow
			}
			if q.Path == "bad" {
				return nil, errors.New("no such question")
			}
			return []byte("answer to " + q.Path + " " + string(q.Data)), nil
		}
	})
	s := dial(t, r.senderConfig())
	_, slowCh := s.Query(&op.Op{Kind: op.Query, Path: "slow"})
	s.Submit(&op.Op{Kind: op.Create, Path: "f", Mode: 0o644, Uid: -1, Gid: -1})
	_, fastCh := s.Query(&op.Op{Kind: op.Query, Path: "fast", Data: []byte("x")})
	_, badCh := s.Query(&op.Op{Kind: op.Query, Path: "bad"})
	w := s.Submit(&op.Op{Kind: op.Write, Path: "f", Data: []byte("after")})
	if err := s.Wait(w, false); err != nil || s.Failed() != nil {
		t.Fatal(err, s.Failed())
	}
	for _, c := range []struct {
		ch   <-chan Reply
		want string
		err  bool
	}{{fastCh, "answer to fast x", false}, {badCh, "", true}} {
		select {
		case rep := <-c.ch:
			if string(rep.Data) != c.want || (rep.Err != nil) != c.err {
				t.Fatalf("reply %q, %v; want %q (error %v)", rep.Data, rep.Err, c.want, c.err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("no reply")
		}
	}
	select {
	case rep := <-slowCh:
		t.Fatalf("the slow query answered before its hook returned: %+v", rep)
	default:
	}
	close(slow)
	select {
	case rep := <-slowCh:
		if string(rep.Data) != "answer to slow " || rep.Err != nil {
			t.Fatalf("slow reply %q %v", rep.Data, rep.Err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no reply to the slow query")
	}
	// A closed sender answers pending and new queries with an error.
	slow2 := make(chan struct{})
	defer close(slow2)
	r2 := newRig(t, "", func(c *ReceiverConfig) {
		c.Answer = func(q *op.Op) ([]byte, error) { <-slow2; return nil, nil }
	})
	s2 := dial(t, r2.senderConfig())
	_, ch := s2.Query(&op.Op{Kind: op.Query, Path: "x"})
	s2.Close()
	select {
	case rep := <-ch:
		if rep.Err == nil {
			t.Fatal("pending query of a closed sender: no error")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("pending query not released by Close")
	}
	if _, ch := s2.Query(&op.Op{Kind: op.Query}); (<-ch).Err == nil {
		t.Fatal("query on a closed sender: no error")
	}
}

// TestOnAckReportsProgress: OnAck sees the applied and durable seqs advance.
func TestOnAckReportsProgress(t *testing.T) {
	r := newRig(t, "", nil)
	cfg := r.senderConfig()
	var applied, durable atomic.Uint64
	cfg.OnAck = func(a, d uint64) {
		applied.Store(a)
		durable.Store(d)
	}
	s := dial(t, cfg)
	s.Submit(&op.Op{Kind: op.Create, Path: "f", Mode: 0o644, Uid: -1, Gid: -1})
	w := s.Submit(&op.Op{Kind: op.Write, Path: "f", Data: []byte("x")})
	if err := s.Wait(w, true); err != nil || s.Failed() != nil {
		t.Fatal(err, s.Failed())
	}
	// OnAck runs after Wait's waiters are woken: give it a moment.
	for deadline := time.Now().Add(5 * time.Second); durable.Load() < w+1 && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if a, d := applied.Load(), durable.Load(); a < w+1 || d < w+1 {
		t.Fatalf("OnAck saw applied %d durable %d, want both >= %d (the SyncAll after the write)", a, d, w+1)
	}
}

// TestSyncEvery: without any Fsync from the application, the durable point
// follows the stream within about SyncEvery.
func TestSyncEvery(t *testing.T) {
	r := newRig(t, "", nil)
	cfg := r.senderConfig()
	cfg.SyncEvery = 50 * time.Millisecond
	s := dial(t, cfg)
	s.Submit(&op.Op{Kind: op.Create, Path: "f", Mode: 0o644, Uid: -1, Gid: -1})
	w := s.Submit(&op.Op{Kind: op.Write, Path: "f", Data: []byte("x")})
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, d := s.Acked(); d >= w {
			break
		}
		if time.Now().After(deadline) {
			_, d := s.Acked()
			t.Fatalf("durable %d after 5s, want >= %d: no automatic SyncAll", d, w)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// Without SyncEvery nothing becomes durable on its own.
	cfg2 := r.senderConfig()
	cfg2.Epoch = 6
	s.Close()
	s2 := dial(t, cfg2)
	w2 := s2.Submit(&op.Op{Kind: op.Write, Path: "f", Data: []byte("y")})
	if err := s2.Wait(w2, false); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	if _, d := s2.Acked(); d >= w2 {
		t.Fatalf("durable %d without SyncEvery, want < %d", d, w2)
	}
}

// TestSyncedWriteWakesNoWriter: a write and its Fsync, sent by the
// submitting goroutine itself, leave the writer goroutine asleep (waking
// it for nothing cost a thread wake-up per O_DSYNC write).
func TestSyncedWriteWakesNoWriter(t *testing.T) {
	r := newRig(t, "", nil)
	cfg := r.senderConfig()
	cfg.Linger = time.Hour // no linger timer racing the Fsync on a loaded machine
	s := dial(t, cfg)
	s.Wait(s.Submit(&op.Op{Kind: op.Create, Path: "f", Mode: 0o644, Uid: -1, Gid: -1}), false)
	before := s.writerWakes.Load()
	const n = 50
	for i := range n {
		s.Submit(&op.Op{Kind: op.Write, Path: "f", Data: make([]byte, 4096), Off: int64(i) * 4096})
		if err := s.Wait(s.Submit(&op.Op{Kind: op.Fsync, Path: "f", Flags: op.DataOnly}), true); err != nil || s.Failed() != nil {
			t.Fatal(err, s.Failed())
		}
	}
	if w := s.writerWakes.Load() - before; w > n/10 {
		t.Fatalf("%d synced writes woke the writer %d times, want (almost) none", n, w)
	}
}

// TestFsyncAckIsNotFlushed: an Fsync op makes its own file durable, not
// the ops before it: the flushed point (what OnAck reports, and the change
// records forget) stays behind until a SyncAll, which WaitFlushed sends.
func TestFsyncAckIsNotFlushed(t *testing.T) {
	r := newRig(t, "", nil)
	cfg := r.senderConfig()
	var flushed atomic.Uint64
	cfg.OnAck = func(_, f uint64) { flushed.Store(f) }
	s := dial(t, cfg)
	s.Submit(&op.Op{Kind: op.Create, Path: "a", Mode: 0o644, Uid: -1, Gid: -1})
	s.Submit(&op.Op{Kind: op.Create, Path: "b", Mode: 0o644, Uid: -1, Gid: -1})
	w := s.Submit(&op.Op{Kind: op.Write, Path: "a", Data: []byte("not synced")})
	fs := s.Submit(&op.Op{Kind: op.Fsync, Path: "b"})
	if err := s.Wait(fs, true); err != nil || s.Failed() != nil {
		t.Fatal(err, s.Failed())
	}
	if f := s.Flushed(); f >= w {
		t.Fatalf("flushed %d after an Fsync of another file, want < %d (the write to a)", f, w)
	}
	if f := flushed.Load(); f >= w {
		t.Fatalf("OnAck reported flushed %d after an Fsync of another file, want < %d", f, w)
	}
	if err := s.WaitFlushed(fs); err != nil || s.Failed() != nil {
		t.Fatal(err, s.Failed())
	}
	if f := s.Flushed(); f <= fs {
		t.Fatalf("flushed %d after WaitFlushed(%d), want a SyncAll after it", f, fs)
	}
	for deadline := time.Now().Add(5 * time.Second); flushed.Load() <= fs && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	if f := flushed.Load(); f <= fs {
		t.Fatalf("OnAck reported flushed %d, want > %d", f, fs)
	}
}

// TestSyncEveryDespiteFsyncs: an application that fsyncs one file all the
// time still gets the periodic SyncAll, so the flushed point advances.
func TestSyncEveryDespiteFsyncs(t *testing.T) {
	r := newRig(t, "", nil)
	cfg := r.senderConfig()
	cfg.SyncEvery = 30 * time.Millisecond
	s := dial(t, cfg)
	s.Submit(&op.Op{Kind: op.Create, Path: "log", Mode: 0o644, Uid: -1, Gid: -1})
	s.Submit(&op.Op{Kind: op.Create, Path: "data", Mode: 0o644, Uid: -1, Gid: -1})
	w := s.Submit(&op.Op{Kind: op.Write, Path: "data", Data: []byte("page")})
	deadline := time.Now().Add(5 * time.Second)
	for s.Flushed() < w {
		if time.Now().After(deadline) {
			t.Fatalf("flushed %d after 5s of fsyncs, want >= %d: the periodic SyncAll never came", s.Flushed(), w)
		}
		l := s.Submit(&op.Op{Kind: op.Write, Path: "log", Data: []byte("commit")})
		if err := s.Wait(s.Submit(&op.Op{Kind: op.Fsync, Path: "log"}), true); err != nil || s.Failed() != nil || l == 0 {
			t.Fatal(err, s.Failed())
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// TestBackgroundFlushHoldsNothing: while a background SyncAll flushes, the
// ops after it are applied and acknowledged; its flushed point comes when
// the flush is done; a SyncAll someone waits for waits for it too.
func TestBackgroundFlushHoldsNothing(t *testing.T) {
	entered, release := make(chan struct{}, 4), make(chan struct{})
	r := newRig(t, "", func(c *ReceiverConfig) {
		c.runFlush = func(f *apply.Flush) error {
			entered <- struct{}{}
			<-release
			return f.Run()
		}
	})
	s := dial(t, r.senderConfig())
	s.Submit(&op.Op{Kind: op.Create, Path: "f", Mode: 0o644, Uid: -1, Gid: -1})
	s.Submit(&op.Op{Kind: op.Write, Path: "f", Data: []byte("before")})
	bg := s.Submit(&op.Op{Kind: op.SyncAll, Flags: op.Background})
	select {
	case <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("the background SyncAll's flush did not start within 5s")
	}
	released := false
	defer func() {
		if !released {
			close(release)
		}
	}()
	w := s.Submit(&op.Op{Kind: op.Write, Path: "f", Data: []byte("after"), Off: 6})
	if err := s.Wait(w, false); err != nil || s.Failed() != nil {
		t.Fatalf("write after a background SyncAll not applied while it flushes: %v %v", err, s.Failed())
	}
	if f := s.Flushed(); f >= bg {
		t.Fatalf("flushed %d while the flush of %d is held", f, bg)
	}
	got := make(chan error, 1)
	go func() { got <- s.WaitFlushed(w) }()
	select {
	case err := <-got:
		t.Fatalf("a SyncAll after a held background flush returned first (%v): flushed %d", err, s.Flushed())
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	released = true
	select {
	case err := <-got:
		if err != nil || s.Failed() != nil {
			t.Fatal(err, s.Failed())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("WaitFlushed did not return within 5s of the flush's release")
	}
	if f := s.Flushed(); f <= w {
		t.Fatalf("flushed %d, want > %d", f, w)
	}
	if b, err := os.ReadFile(filepath.Join(r.dir, "f")); err != nil || string(b) != "beforeafter" {
		t.Fatalf("copy holds %q (%v)", b, err)
	}
}

// TestBackgroundFlushFailure: a background flush that fails (EIO) ends
// the session with that op's error, as an inline one does.
func TestBackgroundFlushFailure(t *testing.T) {
	r := newRig(t, "", func(c *ReceiverConfig) {
		c.runFlush = func(f *apply.Flush) error {
			f.Release()
			return syscall.EIO
		}
	})
	s := dial(t, r.senderConfig())
	s.Submit(&op.Op{Kind: op.Create, Path: "f", Mode: 0o644, Uid: -1, Gid: -1})
	bg := s.Submit(&op.Op{Kind: op.SyncAll, Flags: op.Background})
	select {
	case <-s.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the sender did not fail within 5s of a failed flush")
	}
	var ae *ApplyError
	if err := s.Failed(); !errors.As(err, &ae) || ae.Seq != bg || ae.Errno != syscall.EIO {
		t.Fatalf("sender failed with %v, want the apply error of op %d (EIO)", err, bg)
	}
	select {
	case err := <-r.errs:
		if !errors.Is(err, syscall.EIO) {
			t.Fatalf("OnError got %v, want EIO", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("OnError not called within 5s")
	}
}
