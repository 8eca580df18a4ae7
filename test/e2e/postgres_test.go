package e2e

import (
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/tandem-ha/tandem/internal/api"
	"github.com/tandem-ha/tandem/internal/testbed"
	"github.com/tandem-ha/tandem/internal/testbed/tcluster"
)

// PostgreSQL on the replicated directory: its data directory lives in the
// module's directory, start_prim starts it and stop_prim stops it. A client
// on the client host commits numbered transactions through the VIP; the
// primary (agent and every PostgreSQL process) is killed at a random
// moment; beta takes over and its start_prim starts PostgreSQL on its
// copy (crash recovery); every transaction whose COMMIT returned must be
// there. Then pgbench runs through the VIP against beta serving alone,
// again once alpha is back as a synced SECOND (every commit replicated),
// and against a PostgreSQL on a plain local directory for reference.
func TestPostgresFailover(t *testing.T) {
	begin := time.Now()
	if os.Geteuid() != 0 {
		t.Skip("end-to-end tests need root (network namespaces); CI runs them as root")
	}
	pgbin := postgresBin(t)
	pgdata := dataDir + "/pg"
	c := newCluster(t, tcluster.Options{
		Directories:   []string{dataDir},
		ScriptTimeout: "40s", StopTimeout: "25s",
		Scripts: postgresScripts(pgbin, pgdata, "/var/log/tandem-pg"),
	})
	logDir := filepath.Join(c.Dir(), "pglog")
	must(t, os.MkdirAll(logDir, 0o755))
	for _, n := range []string{"alpha", "beta"} {
		must(t, chownPostgres(c.BackingDir(n, dataDir)))
		must(t, c.Node(n).Host.BindMount(logDir, "/var/log/tandem-pg"))
	}
	must(t, chownPostgres(logDir))
	t.Cleanup(func() {
		if t.Failed() {
			logPostgres(t, logDir)
		}
		// Before the bed's Close: see killPostgres.
		killPostgres(t, c)
	})

	// initdb on a backing directory before the module starts: alpha's copy
	// is the reference the full resynchronisation sends to beta.
	step := time.Now()
	initdb(t, pgbin, c.BackingDir("alpha", dataDir)+"/pg")
	t.Logf("initdb: %s", time.Since(step).Round(time.Millisecond))
	step = time.Now()
	c.StartPair()
	t.Logf("pair started (full resync, PostgreSQL started on alpha): %s", time.Since(step).Round(time.Millisecond))
	waitPeerSynced(t, c, "beta", 30*time.Second) // beta has the whole data directory
	removeShmAtEnd(t, c.BackingDir("alpha", dataDir)+"/pg")

	cl := &pgClient{c: c}
	conn := cl.connect(t, vip4, 5432, 10*time.Second)
	_, err := conn.Exec(pgCtx(t, 10*time.Second), `CREATE TABLE acked (id bigint PRIMARY KEY, payload text NOT NULL);
		CREATE TABLE counter (n bigint NOT NULL); INSERT INTO counter VALUES (0)`)
	must(t, err)

	// The client commits until the primary dies under it.
	done := make(chan struct{})
	wctx, stopWriting := context.WithCancel(context.Background())
	defer stopWriting()
	go func() {
		defer close(done)
		cl.write(wctx, conn)
	}()
	writing := time.Now()
	deadline := time.Now().Add(15 * time.Second)
	for cl.count() < 50 {
		if time.Now().After(deadline) {
			t.Fatalf("fewer than 50 transactions committed in 15s (%d); client error: %v", cl.count(), cl.lastErr())
		}
		time.Sleep(20 * time.Millisecond)
	}
	time.Sleep(time.Duration(300+mrand.IntN(1500)) * time.Millisecond)
	if err := cl.lastErr(); err != nil {
		t.Fatalf("the client failed before the kill: %v", err)
	}
	killed := crashPostgresNode(t, c, "alpha")
	step = time.Now()
	wrote := step.Sub(writing)
	// When the VIP left alpha before the dying server's FIN went out, the
	// client hears nothing more on its connection: give up on it.
	select {
	case <-done:
	case <-time.After(time.Second):
		stopWriting()
		<-done
	}
	conn.Close(context.Background())
	committed, uncertain := cl.result()
	t.Logf("kill -9 of alpha (agent and %d PostgreSQL processes) after %d committed transactions in %s (%.0f tx/s); in flight: %v; client saw: %v",
		killed, len(committed), wrote.Round(time.Millisecond), float64(len(committed))/wrote.Seconds(), uncertain, cl.lastErr())

	c.WaitState("beta", "ALONE", 45*time.Second)
	conn = cl.connect(t, vip4, 5432, 10*time.Second)
	t.Logf("failover: beta serves PostgreSQL (crash recovery done) %s after the kill", time.Since(step).Round(time.Millisecond))
	removeShmAtEnd(t, c.BackingDir("beta", dataDir)+"/pg")
	checkCommitted(t, conn, committed, uncertain)
	conn.Close(context.Background())
	if log, err := os.ReadFile(filepath.Join(logDir, "postgres-beta.log")); err == nil {
		var rec []string
		for _, l := range strings.Split(string(log), "\n") {
			if strings.Contains(l, "not properly shut down") || strings.Contains(l, "redo") {
				rec = append(rec, l)
			}
		}
		t.Logf("PostgreSQL crash recovery on beta:\n%s", strings.Join(rec, "\n"))
	}

	secs := pgbenchSeconds()
	pgbench(t, c.Client, vip4, 5432, "-i", "-s", "1", "-q")
	alone := pgbench(t, c.Client, vip4, 5432, "-T", strconv.Itoa(secs), "-c", "4", "-j", "2")

	// alpha comes back as SECOND: every commit is now replicated.
	step = time.Now()
	c.Start("alpha")
	c.WaitState("alpha", "SECOND", 30*time.Second)
	c.WaitState("beta", "PRIM", 10*time.Second)
	waitPeerSynced(t, c, "alpha", 30*time.Second)
	t.Logf("alpha rejoined as SECOND, synced, in %s", time.Since(step).Round(time.Millisecond))
	repl := pgbench(t, c.Client, vip4, 5432, "-T", strconv.Itoa(secs), "-c", "4", "-j", "2")

	// A swap: beta stops PostgreSQL cleanly (stop_prim), alpha starts it
	// on its replicated copy, which must hold the same data.
	before := pgSummary(t, cl)
	step = time.Now()
	if _, err := c.Command("beta", "swap", api.CommandOptions{}); err != nil {
		t.Fatalf("swap: %v", err)
	}
	c.WaitState("alpha", "PRIM", 40*time.Second)
	c.WaitState("beta", "SECOND", 40*time.Second)
	after := pgSummary(t, cl)
	removeShmAtEnd(t, c.BackingDir("alpha", dataDir)+"/pg")
	t.Logf("swap: alpha serves PostgreSQL after %s; %s", time.Since(step).Round(time.Millisecond), after)
	if before != after {
		t.Errorf("data differs after the swap: beta had %s, alpha has %s", before, after)
	}

	// The same pgbench against a PostgreSQL on a plain local directory of
	// another host of the bed (same disk, same network path).
	ref, err := c.Bed().AddHost("pgref")
	must(t, err)
	refDir := filepath.Join(c.Dir(), "pg-local")
	must(t, os.MkdirAll(refDir, 0o700))
	must(t, chownPostgres(refDir))
	initdb(t, pgbin, refDir)
	out, err := ref.Run("runuser", "-u", "postgres", "--", filepath.Join(pgbin, "pg_ctl"), "-D", refDir, "-l", filepath.Join(logDir, "postgres-ref.log"),
		"-w", "-t", "30", "-o", "-c listen_addresses='*' -p 5432 -k ''", "start")
	if err != nil {
		t.Fatalf("start the reference PostgreSQL: %v\n%s", err, out)
	}
	removeShmAtEnd(t, refDir)
	pgbench(t, c.Client, ref.Addr("lan"), 5432, "-i", "-s", "1", "-q")
	local := pgbench(t, c.Client, ref.Addr("lan"), 5432, "-T", strconv.Itoa(secs), "-c", "4", "-j", "2")

	t.Logf("pgbench -c 4 -j 2 -T %d, scale 1, through the network of the bed:", secs)
	t.Logf("  local directory (reference):        %8.1f tps", local)
	t.Logf("  replicated directory, ALONE:        %8.1f tps (%.0f%% of local)", alone, 100*alone/local)
	t.Logf("  replicated directory, PRIM+SECOND:  %8.1f tps (%.0f%% of local)", repl, 100*repl/local)
	t.Logf("test took %s", time.Since(begin).Round(time.Millisecond))
}

// postgresScripts are start_prim and stop_prim of a PostgreSQL module.
// The test bed's hosts share one PID namespace: a postmaster.pid copied
// from the peer names a pid that is not this host's (on real machines it
// names a pid of another machine), so it is stale unless that pid is a
// process in this host's network namespace.
func postgresScripts(pgbin, pgdata, logDir string) map[string]string {
	const stale = `pidf="$PGDATA/postmaster.pid"
ours() { # is the pid in postmaster.pid a live process of this host?
  [ -f "$pidf" ] || return 1
  pid=$(head -n 1 "$pidf")
  [ -n "$pid" ] && [ "$(readlink "/proc/$pid/ns/net" 2>/dev/null)" = "$(readlink /proc/self/ns/net)" ]
}
`
	head := fmt.Sprintf("#!/bin/sh\nPGBIN=%s\nPGDATA=%s\nLOGDIR=%s\n", pgbin, pgdata, logDir)
	return map[string]string{
		"start_prim": head + stale + `if [ -f "$pidf" ] && ! ours; then
  echo "removing postmaster.pid left by the node that ran PostgreSQL before (pid $(head -n 1 "$pidf") is not a process of $TANDEM_NODE)"
  rm -f "$pidf"
fi
exec runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA" -l "$LOGDIR/postgres-$TANDEM_NODE.log" -w -t 35 \
  -o "-c listen_addresses='*' -p 5432 -k ''" start
`,
		"stop_prim": head + stale + `if ! ours; then
  echo "PostgreSQL is not running on $TANDEM_NODE"
  exit 0
fi
mode=fast
[ "$3" = force ] && mode=immediate
exec runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA" -m "$mode" -w -t 20 stop
`,
	}
}

var (
	pgOnce sync.Once
	pgDir  string
	pgErr  error
)

// postgresBin returns the newest /usr/lib/postgresql/N/bin, installing the
// Debian package when it is missing; the test is skipped only when that
// install fails.
func postgresBin(t *testing.T) string {
	t.Helper()
	pgOnce.Do(func() {
		if pgDir = findPostgres(); pgDir != "" {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
		defer cancel()
		var out []byte
		for _, args := range [][]string{{"update", "-qq"}, {"install", "-y", "-qq", "postgresql"}} {
			cmd := exec.CommandContext(ctx, "apt-get", args...)
			cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
			b, err := cmd.CombinedOutput()
			out = append(out, b...)
			if err != nil {
				pgErr = fmt.Errorf("apt-get %s: %v\n%s", strings.Join(args, " "), err, tailString(string(out), 20))
				return
			}
		}
		if pgDir = findPostgres(); pgDir == "" {
			pgErr = fmt.Errorf("apt-get install postgresql succeeded but no /usr/lib/postgresql/*/bin/pg_ctl exists")
		}
	})
	if pgErr != nil {
		t.Skipf("PostgreSQL is not installed and could not be installed (scripts/test.sh installs it as root): %v", pgErr)
	}
	for _, tool := range []string{"pg_ctl", "initdb", "pgbench", "postgres"} {
		if _, err := os.Stat(filepath.Join(pgDir, tool)); err != nil {
			t.Fatalf("PostgreSQL in %s is incomplete: %v", pgDir, err)
		}
	}
	if _, err := exec.LookPath("runuser"); err != nil {
		t.Fatalf("runuser (util-linux) is needed to run PostgreSQL as postgres: %v", err)
	}
	return pgDir
}

func findPostgres() string {
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/pg_ctl")
	best, bestV := "", -1
	for _, m := range matches {
		v, err := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(m))))
		if err == nil && v > bestV {
			best, bestV = filepath.Dir(m), v
		}
	}
	return best
}

func tailString(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// chownPostgres gives dir to the postgres user (PostgreSQL refuses a data
// directory it does not own).
func chownPostgres(dir string) error {
	out, err := exec.Command("chown", "postgres:postgres", dir).CombinedOutput()
	if err != nil {
		return fmt.Errorf("chown postgres %s: %v: %s (does the postgres user exist?)", dir, err, out)
	}
	return nil
}

// initdb creates a cluster in dir (trust authentication from anywhere:
// the bed's networks are private to the test).
func initdb(t *testing.T, pgbin, dir string) {
	t.Helper()
	cmd := exec.Command("runuser", "-u", "postgres", "--", filepath.Join(pgbin, "initdb"), "-D", dir,
		"-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-locale", "--no-instructions", "--no-sync")
	cmd.Dir = "/"
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("initdb %s: %v\n%s", dir, err, out)
	}
	f, err := os.OpenFile(filepath.Join(dir, "pg_hba.conf"), os.O_WRONLY|os.O_APPEND, 0)
	must(t, err)
	_, err = f.WriteString("host all all 0.0.0.0/0 trust\nhost all all ::/0 trust\n")
	must(t, errors.Join(err, f.Close()))
}

func pgCtx(t *testing.T, d time.Duration) context.Context {
	c, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return c
}

// pgClient commits numbered transactions and records which COMMITs
// returned.
type pgClient struct {
	c         *tcluster.Cluster
	mu        sync.Mutex
	committed []int64
	inFlight  int64 // the transaction whose COMMIT did not return
	err       error
}

func (p *pgClient) connect(t *testing.T, addr netip.Addr, port int, within time.Duration) *pgx.Conn {
	t.Helper()
	cfg, err := pgx.ParseConfig(fmt.Sprintf("postgres://postgres@%s/postgres?sslmode=disable&connect_timeout=2", netip.AddrPortFrom(addr, uint16(port))))
	must(t, err)
	cfg.DialFunc = func(ctx context.Context, network, a string) (net.Conn, error) {
		return p.c.Client.Dial(ctx, network, a)
	}
	deadline := time.Now().Add(within)
	for {
		c, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		conn, err := pgx.ConnectConfig(c, cfg)
		cancel()
		if err == nil {
			return conn
		}
		if time.Now().After(deadline) {
			t.Fatalf("connect to PostgreSQL at %s:%d from the client host within %s: %v", addr, port, within, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (p *pgClient) write(ctx context.Context, conn *pgx.Conn) {
	for id := int64(1); ; id++ {
		p.mu.Lock()
		p.inFlight = id
		p.mu.Unlock()
		c, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := pgx.BeginFunc(c, conn, func(tx pgx.Tx) error {
			if _, err := tx.Exec(c, "INSERT INTO acked VALUES ($1::bigint, md5($1::bigint::text))", id); err != nil {
				return err
			}
			_, err := tx.Exec(c, "UPDATE counter SET n = n + 1")
			return err
		})
		cancel()
		p.mu.Lock()
		if err != nil {
			p.err = fmt.Errorf("transaction %d: %w", id, err)
			p.mu.Unlock()
			return
		}
		p.committed = append(p.committed, id)
		p.inFlight = 0
		p.mu.Unlock()
	}
}

func (p *pgClient) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.committed)
}

func (p *pgClient) lastErr() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.err
}

func (p *pgClient) result() ([]int64, int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]int64(nil), p.committed...), p.inFlight
}

// checkCommitted checks every committed id is in the table, nothing else
// is but the one in flight, and the counter agrees (atomic transactions).
func checkCommitted(t *testing.T, conn *pgx.Conn, committed []int64, inFlight int64) {
	t.Helper()
	rows, err := conn.Query(pgCtx(t, 20*time.Second), "SELECT id, payload = md5(id::text) FROM acked ORDER BY id")
	must(t, err)
	have := map[int64]bool{}
	for rows.Next() {
		var id int64
		var ok bool
		must(t, rows.Scan(&id, &ok))
		if !ok {
			t.Errorf("row %d has a damaged payload", id)
		}
		have[id] = true
	}
	must(t, rows.Err())
	var n int64
	must(t, conn.QueryRow(pgCtx(t, 10*time.Second), "SELECT n FROM counter").Scan(&n))
	var missing []int64
	for _, id := range committed {
		if !have[id] {
			missing = append(missing, id)
		}
		delete(have, id)
	}
	var extra []int64
	for id := range have {
		if id != inFlight {
			extra = append(extra, id)
		}
	}
	sort.Slice(extra, func(i, j int) bool { return extra[i] < extra[j] })
	total := len(committed) - len(missing) + len(have)
	if int64(total) != n {
		t.Errorf("counter says %d transactions, the table holds %d rows: a transaction was torn", n, total)
	}
	if len(missing) > 0 {
		t.Fatalf("%d of %d committed transactions lost after failover, first: %v", len(missing), len(committed), missing[:min(10, len(missing))])
	}
	if len(extra) > 0 {
		t.Errorf("rows that no transaction committed: %v", extra)
	}
	t.Logf("all %d committed transactions are on the new primary (in-flight transaction %d %s)", len(committed), inFlight,
		map[bool]string{true: "committed too", false: "absent"}[have[inFlight]])
}

// pgSummary sums up the database reached through the VIP.
func pgSummary(t *testing.T, cl *pgClient) string {
	t.Helper()
	conn := cl.connect(t, vip4, 5432, 10*time.Second)
	defer conn.Close(context.Background())
	var acked, n, history, balance int64
	must(t, conn.QueryRow(pgCtx(t, 10*time.Second), `SELECT (SELECT count(*) FROM acked), (SELECT n FROM counter),
		(SELECT count(*) FROM pgbench_history), (SELECT sum(abalance) FROM pgbench_accounts)`).Scan(&acked, &n, &history, &balance))
	return fmt.Sprintf("%d rows acked, counter %d, %d pgbench_history rows, sum(abalance) %d", acked, n, history, balance)
}

// crashPostgresNode kills node's agent and every PostgreSQL process of its
// host with SIGKILL, as a crash of the machine would (the test bed's Kill9
// kills the processes it knows of, and pg_ctl puts the postmaster and its
// children in a session of their own). The processes are stopped first so none goes on after the agent
// died. It returns how many PostgreSQL processes it killed.
func crashPostgresNode(t *testing.T, c *tcluster.Cluster, node string) int {
	t.Helper()
	h := c.Node(node).Host
	pids, err := hostProcs(h, "postgres")
	must(t, err)
	if len(pids) == 0 {
		t.Fatalf("no PostgreSQL process runs on %s", node)
	}
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGSTOP)
	}
	// A process started by a module script must not hold the agent's
	// /dev/fuse: it keeps the FUSE connection alive after the agent died,
	// and every process then waiting on the mount (PostgreSQL closing its
	// files as it dies) hangs in D state for good, SIGKILL or not.
	var leaked []string
	for _, pid := range pids {
		if fds := fuseFds(pid); len(fds) > 0 {
			leaked = append(leaked, fmt.Sprintf("pid %d fd %v", pid, fds))
		}
	}
	if len(leaked) > 0 {
		t.Errorf("PostgreSQL processes started by start_prim on %s hold /dev/fuse (the agent's FUSE fd is inherited by scripts: not close-on-exec): %s",
			node, strings.Join(leaked, ", "))
	}
	c.Kill9(node)
	if len(leaked) > 0 {
		// A machine crash ends the kernel's FUSE connection too: do it by
		// hand so the rest of the test can run.
		abortFUSE(t, h)
	}
	for _, pid := range pids {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	// A child forked between the listing and the SIGSTOP is found now.
	deadline := time.Now().Add(10 * time.Second)
	for {
		left, err := hostProcs(h, "postgres")
		must(t, err)
		if len(left) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("PostgreSQL processes of %s still alive 10s after SIGKILL: %v", node, left)
		}
		for _, pid := range left {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return len(pids)
}

// fuseFds lists pid's fds open on /dev/fuse.
func fuseFds(pid int) []string {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, _ := os.ReadDir(dir)
	var out []string
	for _, e := range ents {
		if l, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && l == "/dev/fuse" {
			out = append(out, e.Name())
		}
	}
	return out
}

// abortFUSE aborts the kernel connection of h's FUSE mounts, through a
// fusectl mounted in a throw-away mount namespace (the root namespace's
// mounts are not touched; connection numbers are global).
func abortFUSE(t *testing.T, h *testbed.Host) {
	t.Helper()
	mounts, err := h.Mounts()
	if err != nil {
		t.Logf("abort the FUSE connections of %s: %v", h.Name, err)
		return
	}
	for _, m := range mounts {
		if !strings.HasPrefix(m.FSType, "fuse.") {
			continue
		}
		_, minor, _ := strings.Cut(m.Dev, ":")
		out, err := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c",
			`d=/sys/fs/fuse/connections
[ -e $d/$1 ] || mountpoint -q $d || mount -t fusectl fusectl $d
if [ -e $d/$1/abort ]; then echo 1 > $d/$1/abort; fi`,
			"sh", minor).CombinedOutput()
		if err != nil {
			t.Logf("abort the FUSE connection %s of %s on %s: %v %s", minor, m.Point, h.Name, err, out)
		}
	}
}

// killPostgres kills every PostgreSQL process of the bed, and aborts the
// FUSE connections of a host where some will not die (stuck on a mount
// whose daemon is gone), so that the bed's Close finds nothing left.
func killPostgres(t *testing.T, c *tcluster.Cluster) {
	for _, h := range c.Bed().Hosts() {
		deadline := time.Now().Add(3 * time.Second)
		aborted := false
		for {
			pids, err := hostProcs(h, "postgres")
			if err != nil || len(pids) == 0 {
				break
			}
			for _, pid := range pids {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
			if time.Now().After(deadline) {
				if aborted {
					t.Errorf("PostgreSQL processes %v of %s survive SIGKILL", pids, h.Name)
					break
				}
				t.Logf("PostgreSQL processes %v of %s stuck after SIGKILL: aborting the host's FUSE connections", pids, h.Name)
				abortFUSE(t, h)
				aborted, deadline = true, time.Now().Add(3*time.Second)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// hostProcs lists the live (not zombie) processes named comm in h's
// network namespace.
func hostProcs(h *testbed.Host, comm string) ([]int, error) {
	var st syscall.Stat_t
	if err := syscall.Stat("/run/netns/"+h.NetNS, &st); err != nil {
		return nil, fmt.Errorf("host %s: network namespace: %w", h.Name, err)
	}
	nsLink := fmt.Sprintf("net:[%d]", st.Ino)
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if l, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/net", pid)); err != nil || l != nsLink {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		j := strings.IndexByte(s, '(')
		if i < 0 || j < 0 || s[j+1:i] != comm || strings.HasPrefix(s[i+1:], " Z") {
			continue
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

// pgShm returns the SysV shared memory id a PostgreSQL of dataDir runs
// with, from its postmaster.pid ("" if none).
func pgShm(dataDir string) string {
	b, err := os.ReadFile(filepath.Join(dataDir, "postmaster.pid"))
	if err != nil {
		return ""
	}
	lines := strings.Split(string(b), "\n")
	if len(lines) < 7 {
		return ""
	}
	if f := strings.Fields(lines[6]); len(f) == 2 {
		return f[1]
	}
	return ""
}

// removeShmAtEnd removes, when the test ends, the small SysV segment of a
// PostgreSQL of dataDir (a killed one leaves it behind); run while
// PostgreSQL runs, so the id is surely its own.
func removeShmAtEnd(t *testing.T, dataDir string) {
	if id := pgShm(dataDir); id != "" {
		t.Cleanup(func() { _ = exec.Command("ipcrm", "-m", id).Run() })
	}
}

var tpsRE = regexp.MustCompile(`tps = ([0-9.]+) \(without initial connection time\)`)

// pgbench runs pgbench from h against addr:port and returns the tps it
// reports (0 for -i).
func pgbench(t *testing.T, h *testbed.Host, addr netip.Addr, port int, args ...string) float64 {
	t.Helper()
	pgbin := postgresBin(t)
	c, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	full := append([]string{"-h", addr.String(), "-p", strconv.Itoa(port), "-U", "postgres"}, args...)
	full = append(full, "postgres")
	cmd := h.CommandContext(c, filepath.Join(pgbin, "pgbench"), full...)
	cmd.Env = append(os.Environ(), "PGCONNECT_TIMEOUT=5")
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("pgbench %s against %s: %v\n%s", strings.Join(args, " "), addr, err, out)
	}
	if args[0] == "-i" {
		t.Logf("pgbench %s against %s: %s", strings.Join(args, " "), addr, time.Since(start).Round(time.Millisecond))
		return 0
	}
	m := tpsRE.FindStringSubmatch(string(out))
	if m == nil {
		t.Fatalf("pgbench %s: no tps in its output:\n%s", strings.Join(args, " "), out)
	}
	tps, _ := strconv.ParseFloat(m[1], 64)
	return tps
}

// pgbenchSeconds is pgbench's -T: TANDEM_PGBENCH_SECONDS, default 10.
func pgbenchSeconds() int {
	if s, err := strconv.Atoi(os.Getenv("TANDEM_PGBENCH_SECONDS")); err == nil && s > 0 {
		return s
	}
	return 10
}

// waitPeerSynced waits until node, a SECOND, reports sync "synced" (its
// full resynchronisation is complete; the primary reports "none").
func waitPeerSynced(t *testing.T, c *tcluster.Cluster, node string, within time.Duration) {
	t.Helper()
	deadline := time.Now().Add(within)
	var last string
	for time.Now().Before(deadline) {
		st, err := c.Status(node)
		if err == nil && st.Sync == "synced" {
			return
		}
		last = fmt.Sprintf("%+v %v", st, err)
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("%s not synced within %s: %s", node, within, last)
}

// logPostgres prints the tail of every PostgreSQL log of the test.
func logPostgres(t *testing.T, dir string) {
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err == nil {
			t.Logf("%s:\n%s", e.Name(), tailString(string(b), 40))
		}
	}
}
