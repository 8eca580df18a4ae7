// Package farm benchmarks the farm VIP: requests per second and p99
// latency through the VIP with 1, 2 and 3 nodes, against nginx as a load
// balancer (reverse proxy) in front of the same 3 nodes, and the
// per-packet cost of the bucket filter.
//
// It needs root and runs only when asked:
//
//	TANDEM_BENCH=1 go test ./bench/farm -run TestFarmBench -v -timeout 20m
//
// See docs/benchmarks.md ("Farm") for the method and the results.
package farm

import (
	"bufio"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tandem-ha/tandem/internal/api"
	farmpkg "github.com/tandem-ha/tandem/internal/farm"
	"github.com/tandem-ha/tandem/internal/testbed"
	"github.com/tandem-ha/tandem/internal/testbed/tcluster"
)

const (
	envRun  = "TANDEM_BENCH"     // 1 runs the benchmark
	envOut  = "TANDEM_BENCH_OUT" // also write the markdown report here
	runs    = 3                  // median of this many runs per case
	runTime = 3 * time.Second
	conns   = 32 // concurrent keep-alive connections
	lbPort  = 8081
)

func TestFarmBench(t *testing.T) {
	if os.Getenv(envRun) != "1" {
		t.Skip("set TANDEM_BENCH=1 to run the farm benchmark (root, ~2 minutes)")
	}
	if os.Geteuid() != 0 {
		t.Skip("the benchmark needs root (network namespaces)")
	}
	if _, err := exec.LookPath("nginx"); err != nil {
		t.Skip("nginx not installed: apt-get install nginx (the reference load balancer)")
	}
	dir := t.TempDir()
	bins, err := tcluster.BuildFarm(dir)
	if err != nil {
		t.Fatal(err)
	}
	f := tcluster.NewFarm(t, bins, tcluster.FarmOptions{Clients: 1, ClientAddrs: 1, Drain: "0"})
	f.StartAll()
	client := f.Clients[0]

	var report strings.Builder
	if la, err := os.ReadFile("/proc/loadavg"); err == nil {
		fmt.Fprintf(&report, "Load average when the run started: %s\n\n", strings.Join(strings.Fields(string(la))[:3], " "))
	}
	fmt.Fprintf(&report, "| setup | requests/s | p50 | p99 | ratio to farm, 3 nodes |\n|---|---|---|---|---|\n")
	type row struct {
		name string
		res  result
	}
	var rows []row
	measure := func(name string, target netip.AddrPort) result {
		var all []result
		for range runs {
			all = append(all, httpLoad(t, client, target))
		}
		slices.SortFunc(all, func(a, b result) int { return int(a.rps - b.rps) })
		m := all[len(all)/2]
		t.Logf("%-28s %8.0f req/s  p50 %6s  p99 %6s  (runs: %v)", name, m.rps, m.p50, m.p99, rpsList(all))
		rows = append(rows, row{name, m})
		return m
	}

	vip := netip.AddrPortFrom(tcluster.FarmVIP.Addr(), tcluster.FarmPort)
	farm3 := measure("farm VIP, 3 nodes", vip)
	stopNode(t, f, "gamma")
	f.WaitSplit([]string{"alpha", "beta"}, 20*time.Second)
	measure("farm VIP, 2 nodes", vip)
	stopNode(t, f, "beta")
	f.WaitSplit([]string{"alpha"}, 20*time.Second)
	measure("farm VIP, 1 node", vip)
	for _, n := range []string{"beta", "gamma"} {
		if _, err := f.Node(n).API.Command(tcluster.FarmModule, "start", api.CommandOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	f.WaitSplit(f.Names(), 20*time.Second)

	// nginx as a load balancer on a host of its own, in front of the same
	// three nodes (their own addresses, not the VIP), keep-alive upstream.
	lb, err := f.Bed().AddHost("lb")
	if err != nil {
		t.Fatal(err)
	}
	startNginxLB(t, lb, f)
	measure("nginx LB in front of 3 nodes", netip.AddrPortFrom(lb.Addr("lan"), lbPort))
	measure("one node directly (no LB)", netip.AddrPortFrom(f.Node("alpha").Host.Addr("lan"), tcluster.FarmPort))

	for _, r := range rows {
		fmt.Fprintf(&report, "| %s | %.0f | %s | %s | %.2f |\n", r.name, r.res.rps, r.res.p50, r.res.p99, r.res.rps/farm3.rps)
	}

	// Per-packet cost of the filter.
	report.WriteString("\n" + filterCost(t, f))
	t.Logf("\n%s", report.String())
	if out := os.Getenv(envOut); out != "" {
		if err := os.WriteFile(out, []byte(report.String()), 0o644); err != nil {
			t.Error(err)
		}
	}
}

func stopNode(t *testing.T, f *tcluster.Farm, n string) {
	t.Helper()
	if _, err := f.Node(n).API.Command(tcluster.FarmModule, "stop", api.CommandOptions{}); err != nil {
		t.Fatal(err)
	}
}

func rpsList(rs []result) string {
	var s []string
	for _, r := range rs {
		s = append(s, fmt.Sprintf("%.0f", r.rps))
	}
	return strings.Join(s, " ")
}

type result struct {
	rps      float64
	p50, p99 time.Duration
	errors   int
}

// httpLoad runs conns keep-alive connections from client to target for
// runTime, each sending GET requests back to back.
func httpLoad(t *testing.T, client *testbed.Host, target netip.AddrPort) result {
	t.Helper()
	var mu sync.Mutex
	var lat []time.Duration
	errs := 0
	deadline := time.Now().Add(runTime)
	var wg sync.WaitGroup
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var local []time.Duration
			var c net.Conn
			err := client.Do(func() error {
				var err error
				c, err = net.DialTimeout("tcp", target.String(), 3*time.Second)
				return err
			})
			if err != nil {
				mu.Lock()
				errs++
				mu.Unlock()
				return
			}
			defer c.Close()
			r := bufio.NewReader(c)
			for time.Now().Before(deadline) {
				t0 := time.Now()
				if _, err := tcluster.Get(c, r, 3*time.Second); err != nil {
					mu.Lock()
					errs++
					mu.Unlock()
					return
				}
				local = append(local, time.Since(t0))
			}
			mu.Lock()
			lat = append(lat, local...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	if errs > 0 {
		t.Errorf("load on %s: %d connections failed", target, errs)
	}
	if len(lat) == 0 {
		t.Fatalf("load on %s: no request answered", target)
	}
	slices.Sort(lat)
	return result{
		rps: float64(len(lat)) / runTime.Seconds(),
		p50: lat[len(lat)/2].Round(10 * time.Microsecond), p99: lat[len(lat)*99/100].Round(10 * time.Microsecond),
		errors: errs,
	}
}

const lbConf = `worker_processes auto;
error_log %[1]s/error.log warn;
pid %[1]s/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path %[1]s/body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
    upstream farm {
%[2]s        keepalive 64;
    }
    server {
        listen %[3]d;
        location / {
            proxy_pass http://farm;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
`

// startNginxLB runs nginx as a reverse proxy on lb, one worker per core
// (what users deploy), keep-alive to the nodes.
func startNginxLB(t *testing.T, lb *testbed.Host, f *tcluster.Farm) {
	t.Helper()
	dir := filepath.Join(f.Dir(), "lb")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var servers strings.Builder
	for _, n := range f.Nodes {
		fmt.Fprintf(&servers, "        server %s:%d;\n", n.Host.Addr("lan"), tcluster.FarmPort)
	}
	conf := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(conf, fmt.Appendf(nil, lbConf, dir, servers.String(), lbPort), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := lb.Run("nginx", "-p", dir+"/", "-c", conf, "-e", filepath.Join(dir, "error.log")); err != nil {
		t.Fatalf("start nginx load balancer: %v: %s", err, out)
	}
	t.Cleanup(func() {
		lb.Run("nginx", "-p", dir+"/", "-c", conf, "-e", filepath.Join(dir, "error.log"), "-s", "stop")
	})
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		var c net.Conn
		err := f.Clients[0].Do(func() error {
			var err error
			c, err = net.DialTimeout("tcp", netip.AddrPortFrom(lb.Addr("lan"), lbPort).String(), time.Second)
			return err
		})
		if err == nil {
			_, gerr := tcluster.Get(c, bufio.NewReader(c), time.Second)
			c.Close()
			if gerr == nil {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("nginx load balancer did not answer within 10s")
}

// filterCost measures what the filter adds per packet. One evaluation of
// the bucket rule (VIP match, load address and port, jhash, verdict map
// lookup) costs far less than the noise of sending a packet through veths
// and a bridge on a shared machine, so the benchmark amplifies it: a table
// of its own on alpha's farm interface holds K copies of the rule, each
// looking up a map without its bucket (a miss, so every copy runs), and the sender's
// time per packet with K copies is compared with the same table without
// rules (with veth, the receive side runs in the sender's context).
// (K copies - none) / K is the cost of one evaluation: what every node
// pays for every packet sent to the VIP.
func filterCost(t *testing.T, f *tcluster.Farm) string {
	t.Helper()
	const (
		packets = 40000
		copies  = 500
	)
	alpha := f.Node("alpha").Host
	client := f.Clients[0]
	src := client.Addr("lan")
	seed := farmpkg.Seed(tcluster.FarmVIP.Addr())
	load := func(k int) {
		var b strings.Builder
		fmt.Fprintf(&b, "table netdev farmbench\ndelete table netdev farmbench\ntable netdev farmbench {\n")
		fmt.Fprintf(&b, "  chain c {\n    type filter hook ingress device %s priority -10; policy accept;\n", alpha.Ifaces["lan"])
		for range k {
			// Buckets are 0..255: the lookup always misses.
			fmt.Fprintf(&b, "    ip daddr %s jhash ip saddr . udp sport mod 256 seed %#x vmap { 1000 : accept }\n", tcluster.FarmVIP.Addr(), seed)
		}
		b.WriteString("  }\n}\n")
		cmd := alpha.Command("nft", "-f", "-")
		cmd.Stdin = strings.NewReader(b.String())
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("nft: %v: %s", err, out)
		}
	}
	send := func(k int) float64 {
		load(k)
		d := udpFlood(t, client, netip.AddrPortFrom(src, 20000), netip.AddrPortFrom(tcluster.FarmVIP.Addr(), 9), packets)
		return float64(d.Nanoseconds()) / packets
	}
	// Interleaved rounds, so that a burst of load elsewhere on the machine
	// hits both cases; medians of each and of the per-round differences.
	var bases, many, per []float64
	for range 7 {
		b, m := send(0), send(copies)
		bases, many, per = append(bases, b), append(many, m), append(per, (m-b)/copies)
	}
	alpha.Run("nft", "delete", "table", "netdev", "farmbench")
	median := func(v []float64) float64 { slices.Sort(v); return v[len(v)/2] }
	base, withK, rule := median(bases), median(many), median(per)
	var b strings.Builder
	fmt.Fprintf(&b, "Per-packet cost of the filter (UDP to the VIP, %d packets per round, median of 7 interleaved rounds):\n\n", packets)
	fmt.Fprintf(&b, "| alpha's ingress | ns per packet (send + bridge + receive on 3 nodes) |\n|---|---|\n")
	fmt.Fprintf(&b, "| farm filter only | %.0f |\n", base)
	fmt.Fprintf(&b, "| farm filter + %d more copies of the bucket rule | %.0f |\n", copies, withK)
	fmt.Fprintf(&b, "\nOne evaluation of the bucket rule (hash + map lookup): **%.0f ns** per packet and node.\n", rule)
	t.Logf("filter: %.0f ns/packet, with %d rule copies %.0f ns/packet: %.1f ns per rule (rounds: %v)", base, copies, withK, rule, per)
	return b.String()
}

// udpFlood sends n UDP datagrams from src to dst with sendmmsg-free plain
// writes on one socket and returns the time taken.
func udpFlood(t *testing.T, client *testbed.Host, src, dst netip.AddrPort, n int) time.Duration {
	t.Helper()
	var c *net.UDPConn
	err := client.Do(func() error {
		var err error
		c, err = net.DialUDP("udp", net.UDPAddrFromAddrPort(src), net.UDPAddrFromAddrPort(dst))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	raw, _ := c.SyscallConn()
	payload := make([]byte, 64)
	start := time.Now()
	var werr error
	raw.Write(func(fd uintptr) bool {
		for range n {
			for {
				_, err := syscall.Write(int(fd), payload)
				if err == syscall.ENOBUFS || err == syscall.EAGAIN {
					continue
				}
				if err != nil && err != syscall.ECONNREFUSED {
					werr = err
					return true
				}
				break
			}
		}
		return true
	})
	d := time.Since(start)
	if werr != nil {
		t.Fatalf("udp flood: %v", werr)
	}
	return d
}
