package checker

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

func check(t *testing.T, s Spec, env Env) Result {
	t.Helper()
	c, err := New(s, env)
	if err != nil {
		t.Fatalf("New(%+v): %v", s, err)
	}
	timeout := s.Timeout
	if timeout == 0 {
		timeout = 3 * time.Second
	}
	return Run(context.Background(), c, timeout)
}

func want(t *testing.T, r Result, okWant bool, sub string) {
	t.Helper()
	if r.OK != okWant || !strings.Contains(r.Detail, sub) {
		t.Errorf("result ok=%v %q, want ok=%v containing %q", r.OK, r.Detail, okWant, sub)
	}
}

func TestPIDFile(t *testing.T) {
	dir := t.TempDir()
	s := Spec{Name: "app", Type: Process, PIDFile: "app.pid"}
	env := Env{Dir: dir}
	want(t, check(t, s, env), false, "does not exist")

	os.WriteFile(filepath.Join(dir, "app.pid"), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644)
	want(t, check(t, s, env), true, "is running")

	os.WriteFile(filepath.Join(dir, "app.pid"), []byte("garbage"), 0o644)
	want(t, check(t, s, env), false, "not a process id")

	// A child that exited but was not reaped is a zombie: not running.
	cmd := exec.Command("true")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if st, err := procState(pid); err == nil && st == 'Z' {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	os.WriteFile(filepath.Join(dir, "app.pid"), []byte(strconv.Itoa(pid)), 0o644)
	want(t, check(t, s, env), false, "zombie")
	cmd.Wait()
	want(t, check(t, s, env), false, "not running")

	// An absolute path is taken as is.
	abs := filepath.Join(t.TempDir(), "x.pid")
	os.WriteFile(abs, []byte(strconv.Itoa(os.Getpid())), 0o644)
	want(t, check(t, Spec{Name: "a", Type: Process, PIDFile: abs}, Env{Dir: "/nonexistent"}), true, "is running")
}

func TestPattern(t *testing.T) {
	// A copy of sleep with a unique name: its command line is ours alone.
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep binary")
	}
	b, err := os.ReadFile(sleep)
	if err != nil {
		t.Fatal(err)
	}
	marker := fmt.Sprintf("tdm%d_%d", os.Getpid(), time.Now().UnixNano()%100000)
	prog := filepath.Join(t.TempDir(), marker)
	if err := os.WriteFile(prog, b, 0o755); err != nil {
		t.Fatal(err)
	}
	var cmds []*exec.Cmd
	for range 2 {
		cmd := exec.Command(prog, "3600")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		cmds = append(cmds, cmd)
	}
	t.Cleanup(func() {
		for _, c := range cmds {
			c.Process.Kill()
			c.Wait()
		}
	})
	pat := `/` + marker + ` 3600$`
	want(t, check(t, Spec{Name: "p", Type: Process, Pattern: pat}, Env{}), true, "2 process(es) match")
	want(t, check(t, Spec{Name: "p", Type: Process, Pattern: pat, AtLeast: 2}, Env{}), true, "at least 2")
	want(t, check(t, Spec{Name: "p", Type: Process, Pattern: pat, AtLeast: 3}, Env{}), false, "at least 3 needed")
	cmds[0].Process.Kill()
	cmds[0].Wait()
	want(t, check(t, Spec{Name: "p", Type: Process, Pattern: pat, AtLeast: 2}, Env{}), false, "1 process(es) match")
	if _, err := New(Spec{Name: "p", Type: Process, Pattern: "("}, Env{}); err == nil || !strings.Contains(err.Error(), "checker p") {
		t.Errorf("bad pattern: %v", err)
	}
	if _, err := New(Spec{Name: "p", Type: Process, Pattern: "x", Unit: "y"}, Env{}); err == nil {
		t.Error("two process selectors accepted")
	}
}

func TestUnit(t *testing.T) {
	dir := t.TempDir()
	fake := filepath.Join(dir, "systemctl")
	os.WriteFile(fake, []byte(`#!/bin/sh
[ "$1" = is-active ] || exit 9
if [ "$2" = good.service ]; then echo active; exit 0; fi
echo failed; exit 3
`), 0o755)
	env := Env{Systemctl: fake}
	want(t, check(t, Spec{Name: "u", Type: Process, Unit: "good.service"}, env), true, "good.service is active")
	want(t, check(t, Spec{Name: "u", Type: Process, Unit: "bad.service"}, env), false, "bad.service is failed")
	want(t, check(t, Spec{Name: "u", Type: Process, Unit: "x.service"}, Env{Systemctl: filepath.Join(dir, "none")}), false, "cannot check unit")
}

func TestTCP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	want(t, check(t, Spec{Name: "t", Type: TCP, Address: addr}, Env{}), true, "accepts connections")
	ln.Close()
	want(t, check(t, Spec{Name: "t", Type: TCP, Address: addr}, Env{}), false, "refused")
	if _, err := New(Spec{Name: "t", Type: TCP, Address: "127.0.0.1"}, Env{}); err == nil {
		t.Error("address without port accepted")
	}
}

func TestHTTP(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ok":
			fmt.Fprintln(w, "database: up")
		case "/moved":
			http.Redirect(w, r, "/ok", http.StatusFound)
		case "/slow":
			time.Sleep(2 * time.Second)
		default:
			http.Error(w, "nope", http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	want(t, check(t, Spec{Name: "h", Type: HTTP, URL: srv.URL + "/ok"}, Env{}), true, "status 200")
	want(t, check(t, Spec{Name: "h", Type: HTTP, URL: srv.URL + "/ok", Body: "database: up"}, Env{}), true, "body matches")
	want(t, check(t, Spec{Name: "h", Type: HTTP, URL: srv.URL + "/ok", Body: "database: down"}, Env{}), false, "does not match")
	want(t, check(t, Spec{Name: "h", Type: HTTP, URL: srv.URL + "/bad"}, Env{}), false, "status 503, want 200")
	want(t, check(t, Spec{Name: "h", Type: HTTP, URL: srv.URL + "/bad", Status: 503}, Env{}), true, "status 503")
	want(t, check(t, Spec{Name: "h", Type: HTTP, URL: srv.URL + "/moved"}, Env{}), false, "status 302")
	start := time.Now()
	want(t, check(t, Spec{Name: "h", Type: HTTP, URL: srv.URL + "/slow", Timeout: 200 * time.Millisecond}, Env{}), false, "no answer within 200ms")
	if d := time.Since(start); d > time.Second {
		t.Errorf("timeout not honoured: %s", d)
	}
	for _, u := range []string{"ftp://x/", "http://", "::"} {
		if _, err := New(Spec{Name: "h", Type: HTTP, URL: u}, Env{}); err == nil {
			t.Errorf("url %q accepted", u)
		}
	}
}

func TestCustom(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	os.MkdirAll(bin, 0o755)
	os.WriteFile(filepath.Join(bin, "probe"), []byte(`#!/bin/sh
echo "checking $TANDEM_CHECKER for $TANDEM_MODULE ($1)"
[ -e "$TANDEM_STATE_DIR/down" ] && { echo "service is down" >&2; exit 2; }
exit 0
`), 0o755)
	os.WriteFile(filepath.Join(bin, "hang"), []byte("#!/bin/sh\nsleep 30 &\nsleep 30\n"), 0o755)
	os.WriteFile(filepath.Join(bin, "noexec"), []byte("#!/bin/sh\n"), 0o644)
	env := Env{BinDir: bin, Environ: []string{"PATH=/usr/bin:/bin", "TANDEM_MODULE=web", "TANDEM_STATE_DIR=" + dir}}
	s := Spec{Name: "probe", Type: Custom, Command: "probe", Args: []string{"fast"}}
	want(t, check(t, s, env), true, "exited 0: checking probe for web (fast)")
	os.WriteFile(filepath.Join(dir, "down"), nil, 0o644)
	want(t, check(t, s, env), false, "probe exited 2: service is down")

	start := time.Now()
	want(t, check(t, Spec{Name: "h", Type: Custom, Command: "hang", Timeout: 200 * time.Millisecond}, env), false, "killed")
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("a hanging custom checker took %s to be killed", d)
	}
	want(t, check(t, Spec{Name: "n", Type: Custom, Command: "noexec"}, env), false, "chmod +x")
	want(t, check(t, Spec{Name: "m", Type: Custom, Command: "missing"}, env), false, "no such file")
}

// inNewNetNS runs fn on a thread inside a fresh network namespace.
func inNewNetNS(t *testing.T, fn func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespace)")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread()
		// The thread is left locked on purpose: it ends with the goroutine
		// and is never reused in the new namespace.
		orig, err := netns.Get()
		if err != nil {
			t.Error(err)
			return
		}
		defer orig.Close()
		ns, err := netns.New()
		if err != nil {
			t.Error(err)
			return
		}
		defer ns.Close()
		fn()
	}()
	<-done
}

func TestInterfaceAndPing(t *testing.T) {
	inNewNetNS(t, func() {
		lo, _ := netlink.LinkByName("lo")
		netlink.LinkSetUp(lo)
		c := func(s Spec) Result {
			ch, err := New(s, Env{})
			if err != nil {
				t.Fatal(err)
			}
			return Run(context.Background(), ch, 500*time.Millisecond)
		}
		want(t, c(Spec{Name: "i", Type: Interface, Interface: "tdm0"}), false, "not found")
		va := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "tdm0"}, PeerName: "tdm1"}
		if err := netlink.LinkAdd(va); err != nil {
			t.Error(err)
			return
		}
		want(t, c(Spec{Name: "i", Type: Interface, Interface: "tdm0"}), false, "administratively down")
		a, _ := netlink.LinkByName("tdm0")
		b, _ := netlink.LinkByName("tdm1")
		netlink.LinkSetUp(a)
		want(t, c(Spec{Name: "i", Type: Interface, Interface: "tdm0"}), false, "no carrier")
		netlink.LinkSetUp(b)
		deadline := time.Now().Add(3 * time.Second)
		var r Result
		for time.Now().Before(deadline) {
			if r = c(Spec{Name: "i", Type: Interface, Interface: "tdm0"}); r.OK {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		want(t, r, true, "is up")

		want(t, c(Spec{Name: "p", Type: Ping, Address: "127.0.0.1"}), true, "answered")
		want(t, c(Spec{Name: "p", Type: Ping, Address: "::1"}), true, "answered")
		// 192.0.2.77 is routed out of tdm0, whose peer end answers nothing.
		addr, _ := netlink.ParseAddr("192.0.2.1/24")
		netlink.AddrAdd(a, addr)
		start := time.Now()
		want(t, c(Spec{Name: "p", Type: Ping, Address: "192.0.2.77"}), false, "no reply")
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("ping timeout took %s", d)
		}
		// No route at all: an immediate error.
		want(t, c(Spec{Name: "p", Type: Ping, Address: "198.51.100.7"}), false, "unreachable")
	})
	if _, err := New(Spec{Name: "p", Type: Ping, Address: "gateway"}, Env{}); err == nil {
		t.Error("ping of a name accepted")
	}
}

func TestChecksum(t *testing.T) {
	// RFC 1071 example bytes.
	b := []byte{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7}
	if got := checksum(b); got != ^uint16(0xddf2) {
		t.Errorf("checksum = %#x", got)
	}
}
