package testbed

import (
	"bufio"
	"context"
	"github.com/tandem-ha/tandem/internal/mountinfo"
	"io"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestHostAddr(t *testing.T) {
	cases := []struct {
		pfx    string
		offset int
		want   string
		bad    bool
	}{
		{"192.0.2.0/24", 10, "192.0.2.10/24", false},
		{"198.51.100.0/24", 255, "", true}, // broadcast
		{"198.51.100.0/24", 254, "198.51.100.254/24", false},
		{"192.0.2.0/28", 10, "192.0.2.10/28", false},
		{"192.0.2.0/28", 15, "", true},
		{"2001:db8:1::/64", 12, "2001:db8:1::c/64", false},
		{"2001:db8:1::/120", 255, "2001:db8:1::ff/120", false},
		{"2001:db8:1::/120", 256, "", true},
	}
	for _, c := range cases {
		got, err := hostAddr(netip.MustParsePrefix(c.pfx), c.offset)
		if c.bad {
			if err == nil {
				t.Errorf("hostAddr(%s, %d) = %v, want error", c.pfx, c.offset, got)
			}
			continue
		}
		if err != nil || got.String() != c.want {
			t.Errorf("hostAddr(%s, %d) = %v, %v; want %s", c.pfx, c.offset, got, err, c.want)
		}
	}
}

func TestCheckNetworks(t *testing.T) {
	if err := checkNetworks(DefaultNetworks()); err != nil {
		t.Fatalf("default networks: %v", err)
	}
	bad := [][]Network{
		{{Name: "lan", V4: netip.MustParsePrefix("10.0.0.0/24")}},
		{{Name: "lan", V4: netip.MustParsePrefix("192.0.2.0/24"), V6: netip.MustParsePrefix("fd00::/64")}},
		{{Name: "Lan", V4: netip.MustParsePrefix("192.0.2.0/24")}},
		{{Name: "averyveryverylongname", V4: netip.MustParsePrefix("192.0.2.0/24")}},
		{{Name: "lan", V4: netip.MustParsePrefix("192.0.2.0/24")}, {Name: "lan", V4: netip.MustParsePrefix("198.51.100.0/24")}},
		{{Name: "lan"}},
		{{Name: "lan", V4: netip.MustParsePrefix("192.0.0.0/16")}},
	}
	for _, nets := range bad {
		if err := checkNetworks(nets); err == nil {
			t.Errorf("checkNetworks(%v) = nil, want error", nets)
		}
	}
}

func TestUnescapeMount(t *testing.T) {
	if got := mountinfo.Unescape(`/a\040b\134c`); got != `/a b\c` {
		t.Fatalf("got %q", got)
	}
}

// newBed builds a bed with hosts a, b and client.
func newBed(t *testing.T) (*Bed, *Host, *Host, *Host) {
	t.Helper()
	b := NewT(t, Options{})
	var hs []*Host
	for _, n := range []string{"a", "b", "client"} {
		h, err := b.AddHost(n)
		if err != nil {
			t.Fatal(err)
		}
		hs = append(hs, h)
	}
	return b, hs[0], hs[1], hs[2]
}

func needTool(t *testing.T, tool, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(tool); err != nil {
		t.Fatalf("%s not found in PATH: apt-get install -y %s", tool, pkg)
	}
}

func ping(h *Host, a netip.Addr) error {
	_, err := h.Run("ping", "-c1", "-W1", a.String())
	return err
}

func mustPing(t *testing.T, from *Host, to netip.Addr) {
	t.Helper()
	if err := ping(from, to); err != nil {
		t.Fatalf("ping %s from %s: %v", to, from.Name, err)
	}
}

func mustNotPing(t *testing.T, from *Host, to netip.Addr) {
	t.Helper()
	if err := ping(from, to); err == nil {
		t.Fatalf("ping %s from %s succeeded, want no reply", to, from.Name)
	}
}

// eventually retries fn every 50ms for up to 5s.
func eventually(t *testing.T, what string, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := fn()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestPingDialAddrs(t *testing.T) {
	b, a, bb, c := newBed(t)
	needTool(t, "ping", "iputils-ping")

	if got := a.Addr("lan").String(); got != "192.0.2.10" {
		t.Errorf("a lan = %s, want 192.0.2.10", got)
	}
	if got := c.Addr("backup").String(); got != "198.51.100.12" {
		t.Errorf("client backup = %s, want 198.51.100.12", got)
	}
	if got := bb.Addr6("lan").String(); got != "2001:db8:1::b" {
		t.Errorf("b lan v6 = %s, want 2001:db8:1::b", got)
	}
	if bb.Addr6("backup").IsValid() {
		t.Errorf("b has a v6 address on backup: %v", bb.Addr6("backup"))
	}
	if a.Ifaces["lan"] != "eth0" || a.Ifaces["backup"] != "eth1" {
		t.Errorf("ifaces = %v", a.Ifaces)
	}
	if len(b.Hosts()) != 3 || b.Host("b") != bb {
		t.Errorf("Hosts/Host lookup wrong")
	}
	if _, err := b.AddHost("a"); err == nil {
		t.Errorf("duplicate host accepted")
	}

	for _, from := range []*Host{a, bb, c} {
		for _, to := range []*Host{a, bb, c} {
			if from == to {
				continue
			}
			mustPing(t, from, to.Addr("lan"))
			mustPing(t, from, to.Addr("backup"))
			mustPing(t, from, to.Addr6("lan"))
		}
	}

	// Neighbour table of the client knows a's MAC after the ping.
	mac, err := a.MAC("lan")
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.Neighbor(a.Addr("lan"))
	if err != nil {
		t.Fatal(err)
	}
	if got.String() != mac.String() {
		t.Errorf("client neighbour for %s = %v, want %v", a.Addr("lan"), got, mac)
	}

	// No default route anywhere.
	out, err := a.Run("ip", "route", "show", "default")
	if err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("default route in host a: %q %v", out, err)
	}

	// HasAddr.
	if ok, err := a.HasAddr(a.Addr("lan")); err != nil || !ok {
		t.Errorf("a.HasAddr(own) = %v, %v", ok, err)
	}
	if ok, err := a.HasAddr(a.Addr6("lan")); err != nil || !ok {
		t.Errorf("a.HasAddr(own v6) = %v, %v", ok, err)
	}
	if ok, err := a.HasAddr(bb.Addr("lan")); err != nil || ok {
		t.Errorf("a.HasAddr(b's) = %v, %v", ok, err)
	}

	// TCP from the client to a listener inside host a.
	l, err := a.Listen("tcp", netip.AddrPortFrom(a.Addr("lan"), 7000).String())
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan string, 1)
	go func() {
		conn, err := l.Accept()
		if err != nil {
			accepted <- "accept: " + err.Error()
			return
		}
		defer conn.Close()
		line, _ := bufio.NewReader(conn).ReadString('\n')
		_, _ = io.WriteString(conn, "echo "+line)
		accepted <- conn.RemoteAddr().String()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := c.Dial(ctx, "tcp", netip.AddrPortFrom(a.Addr("lan"), 7000).String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(conn, "hi\n"); err != nil {
		t.Fatal(err)
	}
	reply, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil || reply != "echo hi\n" {
		t.Fatalf("reply %q, %v", reply, err)
	}
	select {
	case from := <-accepted:
		if !strings.HasPrefix(from, c.Addr("lan").String()+":") {
			t.Errorf("accepted from %s, want client %s", from, c.Addr("lan"))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no accept within 5s")
	}

	// The root namespace cannot reach the bed.
	if _, err := exec.Command("ping", "-c1", "-W1", a.Addr("lan").String()).CombinedOutput(); err == nil {
		t.Errorf("root namespace reaches %s", a.Addr("lan"))
	}
}

func TestLinkDownUp(t *testing.T) {
	_, a, bb, _ := newBed(t)
	needTool(t, "ping", "iputils-ping")
	mustPing(t, bb, a.Addr("lan"))

	if err := a.LinkDown("lan"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "a's eth0 shows NO-CARRIER", func() error {
		out, err := a.Run("ip", "link", "show", "eth0")
		if err != nil {
			return err
		}
		if !strings.Contains(out, "NO-CARRIER") {
			return errString("no NO-CARRIER in: " + out)
		}
		return nil
	})
	mustNotPing(t, bb, a.Addr("lan"))
	mustPing(t, bb, a.Addr("backup")) // other cable unaffected

	if err := a.LinkUp("lan"); err != nil {
		t.Fatal(err)
	}
	eventually(t, "ping a after LinkUp", func() error { return ping(bb, a.Addr("lan")) })
	out, err := a.Run("ip", "link", "show", "eth0")
	if err != nil || strings.Contains(out, "NO-CARRIER") {
		t.Fatalf("after LinkUp: %q %v", out, err)
	}
	if err := a.LinkDown("nosuch"); err == nil {
		t.Fatal("LinkDown on unknown network accepted")
	}
}

type errString string

func (e errString) Error() string { return string(e) }

func TestDropFrom(t *testing.T) {
	_, a, bb, c := newBed(t)
	needTool(t, "ping", "iputils-ping")
	needTool(t, "nft", "nftables")

	if err := a.DropFrom(bb); err != nil {
		t.Fatal(err)
	}
	if err := a.DropFrom(bb); err != nil { // idempotent
		t.Fatal(err)
	}
	for _, nw := range []string{"lan", "backup"} {
		mustNotPing(t, bb, a.Addr(nw))
		mustNotPing(t, a, bb.Addr(nw))
	}
	mustNotPing(t, bb, a.Addr6("lan"))
	mustNotPing(t, a, bb.Addr6("lan"))
	// Traffic from an address b gained later (a VIP) is dropped too.
	if _, err := bb.Run("ip", "addr", "add", "192.0.2.100/24", "dev", "eth0"); err != nil {
		t.Fatal(err)
	}
	if _, err := bb.Run("ping", "-c1", "-W1", "-I", "192.0.2.100", a.Addr("lan").String()); err == nil {
		t.Fatal("ping from b's extra address reached a through the partition")
	}
	if _, err := c.Run("ping", "-c1", "-W1", "192.0.2.100"); err != nil {
		t.Fatalf("client cannot reach b's extra address: %v", err)
	}
	for _, h := range []*Host{a, bb} {
		mustPing(t, c, h.Addr("lan"))
		mustPing(t, c, h.Addr6("lan"))
		mustPing(t, h, c.Addr("backup"))
	}

	if err := a.Undrop(bb); err != nil {
		t.Fatal(err)
	}
	if err := a.Undrop(bb); err != nil { // no-op
		t.Fatal(err)
	}
	mustPing(t, bb, a.Addr("lan"))
	mustPing(t, a, bb.Addr("backup"))
	mustPing(t, a, bb.Addr6("lan"))

	// Again after undrop: the table already exists.
	if err := a.DropFrom(bb); err != nil {
		t.Fatal(err)
	}
	mustNotPing(t, a, bb.Addr("lan"))
	if err := a.Undrop(bb); err != nil {
		t.Fatal(err)
	}
	mustPing(t, a, bb.Addr("lan"))
}

func TestKill9(t *testing.T) {
	_, a, _, _ := newBed(t)
	p, err := a.Start("sh", "-c", "sleep 100 & echo child $!; wait")
	if err != nil {
		t.Fatal(err)
	}
	var child int
	eventually(t, "child pid in log", func() error {
		s, err := p.Log()
		if err != nil {
			return err
		}
		if _, rest, ok := strings.Cut(s, "child "); ok {
			child, err = strconv.Atoi(strings.TrimSpace(rest))
			return err
		}
		return errString("no child line yet in " + p.LogPath)
	})
	if !liveProc(child) || !liveProc(p.Pid()) {
		t.Fatalf("processes not running: parent %d child %d", p.Pid(), child)
	}
	// The process runs in the host's namespaces.
	if procNSInode(p.Pid(), "net") != a.netIno || procNSInode(p.Pid(), "mnt") != a.mntIno {
		t.Errorf("process not in host namespaces")
	}
	if err := p.Kill9(); err != nil {
		t.Fatal(err)
	}
	if liveProc(p.Pid()) || liveProc(child) {
		t.Fatalf("still alive after Kill9: parent %v child %v", liveProc(p.Pid()), liveProc(child))
	}
	if err := p.Wait(time.Second); err == nil {
		t.Errorf("Wait after kill returned nil, want exit error")
	}

	// Wait on a short command, and Signal.
	q, err := a.Start("true")
	if err != nil {
		t.Fatal(err)
	}
	if err := q.Wait(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	r, err := a.Start("sleep", "100")
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Wait(50 * time.Millisecond); err == nil {
		t.Fatal("Wait returned before the process ended")
	}
	if err := r.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	if err := r.Wait(5 * time.Second); err == nil || strings.Contains(err.Error(), "still running") {
		t.Fatalf("after SIGINT: %v", err)
	}
}

func TestMountNamespaces(t *testing.T) {
	b, a, bb, _ := newBed(t)

	// /run/tandem is private to each host.
	if _, err := a.Run("sh", "-c", "echo a > /run/tandem/who"); err != nil {
		t.Fatal(err)
	}
	if out, err := bb.Run("ls", "/run/tandem"); err != nil || strings.TrimSpace(out) != "" {
		t.Errorf("host b sees %q in /run/tandem (%v), want empty", out, err)
	}
	if _, err := os.Stat("/run/tandem/who"); err == nil {
		t.Errorf("root namespace sees host a's /run/tandem/who")
	}
	// sysfs shows the host's own interfaces.
	if out, err := a.Run("ls", "/sys/class/net"); err != nil || strings.Fields(out)[0] != "eth0" {
		t.Errorf("host a /sys/class/net = %q (%v)", out, err)
	}
	// Command keeps Dir.
	cmd := a.Command("pwd")
	cmd.Dir = b.Dir()
	if out, err := cmd.Output(); err != nil || strings.TrimSpace(string(out)) != b.Dir() {
		t.Errorf("pwd = %q (%v), want %s", out, err, b.Dir())
	}

	// A small tmpfs, filled, then freed.
	data := filepath.Join(b.Dir(), "a-data")
	if err := a.MountTmpfs(data, 1<<20); err != nil {
		t.Fatal(err)
	}
	if err := a.FillDisk(data); err != nil {
		t.Fatal(err)
	}
	out, err := a.Run("dd", "if=/dev/zero", "of="+data+"/f", "bs=4096", "count=1")
	if err == nil || !strings.Contains(out, "No space left") {
		t.Fatalf("write to full disk: %q %v", out, err)
	}
	if err := a.FreeDisk(data); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Run("sh", "-c", "echo x > "+data+"/f"); err != nil {
		t.Fatal(err)
	}
	// The tmpfs is only in a's mount namespace.
	if _, err := os.Stat(filepath.Join(data, "f")); err == nil {
		t.Errorf("root namespace sees a file on host a's tmpfs")
	}
	if err := bb.FillDisk(data); err == nil {
		t.Errorf("FillDisk accepted a path that is not this host's tmpfs")
	}
	if err := a.MountTmpfs("relative", 1<<20); err == nil {
		t.Errorf("relative tmpfs path accepted")
	}
}

// bedLeftovers lists what of bed id remains: namespaces, mounts, dirs.
func bedLeftovers(t *testing.T, id, dir string) []string {
	t.Helper()
	var left []string
	out, err := exec.Command("ip", "netns", "list").CombinedOutput()
	if err != nil {
		t.Fatalf("ip netns list: %v: %s", err, out)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if strings.Contains(l, id) {
			left = append(left, "netns "+l)
		}
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(mi), "\n") {
		if strings.Contains(l, id) {
			left = append(left, "mount "+l)
		}
	}
	for _, d := range []string{filepath.Join(RunRoot, id), dir} {
		if _, err := os.Stat(d); err == nil {
			left = append(left, "dir "+d)
		}
	}
	return left
}

func TestCloseLeavesNothing(t *testing.T) {
	if err := Available(); err != nil {
		t.Skip(err)
	}
	b, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var pids []int
	for _, n := range []string{"a", "b"} {
		h, err := b.AddHost(n)
		if err != nil {
			t.Fatal(err)
		}
		p, err := h.Start("sleep", "100")
		if err != nil {
			t.Fatal(err)
		}
		pids = append(pids, p.Pid())
		// Untracked, in its own session: found through its namespaces.
		cmd := h.Command("setsid", "sleep", "100")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		pids = append(pids, cmd.Process.Pid)
		go func() { _ = cmd.Wait() }()
		if err := h.MountTmpfs(filepath.Join(b.Dir(), n+"-data"), 1<<20); err != nil {
			t.Fatal(err)
		}
	}
	id, dir := b.ID(), b.Dir()
	if len(bedLeftovers(t, id, dir)) == 0 {
		t.Fatal("bed shows no namespaces before Close")
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if left := bedLeftovers(t, id, dir); len(left) > 0 {
		t.Fatalf("left after Close:\n%s", strings.Join(left, "\n"))
	}
	for _, pid := range pids {
		if liveProc(pid) {
			t.Errorf("pid %d alive after Close", pid)
		}
	}
}

func TestCleanupStale(t *testing.T) {
	if err := Available(); err != nil {
		t.Skip(err)
	}
	b, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	h, err := b.AddHost("a")
	if err != nil {
		t.Fatal(err)
	}
	p, err := h.Start("sleep", "100")
	if err != nil {
		t.Fatal(err)
	}
	// A live bed is left alone.
	if err := CleanupStale(); err != nil {
		t.Fatal(err)
	}
	if left := bedLeftovers(t, b.ID(), b.Dir()); len(left) == 0 {
		t.Fatal("CleanupStale removed a live bed")
	}
	// Pretend the owner died: a finished process's pid.
	dead := exec.Command("true")
	if err := dead.Run(); err != nil {
		t.Fatal(err)
	}
	owner := filepath.Join(RunRoot, b.ID(), "owner")
	if err := os.WriteFile(owner, []byte(strconv.Itoa(dead.Process.Pid)+" 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := CleanupStale(); err != nil {
		t.Fatal(err)
	}
	if left := bedLeftovers(t, b.ID(), b.Dir()); len(left) > 0 {
		t.Fatalf("left after CleanupStale:\n%s", strings.Join(left, "\n"))
	}
	if err := p.Wait(5 * time.Second); err == nil || strings.Contains(err.Error(), "still running") {
		t.Fatalf("process in stale bed: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("Close after CleanupStale: %v", err)
	}
}
