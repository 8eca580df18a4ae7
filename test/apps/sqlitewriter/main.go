// Command sqlitewriter is the SQLite workload of the end-to-end tests: a
// real application using a real SQLite (modernc.org/sqlite, pure Go) on a
// replicated directory. It commits numbered transactions and, only after
// COMMIT returned, appends each transaction id to an ack log kept outside
// the cluster. After a failover, `sqlitewriter verify` opens the database
// (running SQLite's own recovery: WAL replay or hot-journal rollback),
// checks its integrity and that every acknowledged transaction is there.
//
//	sqlitewriter run --dir DIR --ack-log FILE [--journal wal|delete]
//	                 [--synchronous full|extra|normal] [--duration D] [--rows R]
//	sqlitewriter verify --dir DIR --ack-log FILE
//
// Transaction n inserts R rows (n, 1..R) whose payload is derived from
// (n, k), and sets meta.last = n, so a torn transaction shows as a row count
// or payload mismatch. Transactions commit one after the other: the ids in
// the database must be exactly 1..N, with N the last acknowledged id or the
// one after it (committed but killed before its ack).
//
// Running again resumes after the highest id in the database.
//
// Exit codes: 0 done (run) or no loss (verify); 1 a database or ack log
// operation failed (run) or loss or damage found (verify); 2 usage.
package main

import (
	"context"
	"database/sql"
	"errors"
	"flag"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	_ "modernc.org/sqlite"
)

const (
	exitOK    = 0
	exitFail  = 1
	exitUsage = 2
	dbName    = "app.db"
)

func main() {
	os.Exit(mainArgs(os.Args[1:], os.Stdout, os.Stderr))
}

func usage(w io.Writer) {
	fmt.Fprintln(w, `usage:
  sqlitewriter run --dir DIR --ack-log FILE [--journal wal|delete] [--synchronous full|extra|normal]
                   [--duration D] [--rows R] [--max-size BYTES]
  sqlitewriter verify --dir DIR --ack-log FILE`)
}

func mainArgs(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(stderr)
		return exitUsage
	}
	switch args[0] {
	case "run":
		return cmdRun(args[1:], stdout, stderr)
	case "verify":
		return cmdVerify(args[1:], stdout, stderr)
	case "-h", "--help", "help":
		usage(stdout)
		return exitOK
	}
	fmt.Fprintf(stderr, "sqlitewriter: unknown command %q\n", args[0])
	usage(stderr)
	return exitUsage
}

type runConfig struct {
	dir, ackLog, journal, sync string
	duration                   time.Duration
	rows, maxSize              int
}

func cmdRun(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("sqlitewriter run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c runConfig
	fs.StringVar(&c.dir, "dir", "", "directory of the database (the replicated directory; must exist)")
	fs.StringVar(&c.ackLog, "ack-log", "", "ack log file, outside the replicated directory")
	fs.StringVar(&c.journal, "journal", "wal", "journal mode: wal or delete")
	fs.StringVar(&c.sync, "synchronous", "", "PRAGMA synchronous: full, extra or normal (default full for wal, extra for delete: only EXTRA syncs the directory after the journal unlink that commits in delete mode)")
	fs.DurationVar(&c.duration, "duration", 10*time.Second, "stop after this long (0: until killed)")
	fs.IntVar(&c.rows, "rows", 3, "rows per transaction")
	fs.IntVar(&c.maxSize, "max-size", 3000, "largest payload of a row in bytes")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if c.dir == "" || c.ackLog == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "sqlitewriter run: --dir and --ack-log are required and nothing else is accepted")
		return exitUsage
	}
	switch c.journal {
	case "wal", "delete":
	default:
		fmt.Fprintf(stderr, "sqlitewriter run: --journal %q: want wal or delete\n", c.journal)
		return exitUsage
	}
	if c.sync == "" {
		c.sync = map[string]string{"wal": "full", "delete": "extra"}[c.journal]
	}
	switch c.sync {
	case "full", "extra", "normal":
	default:
		fmt.Fprintf(stderr, "sqlitewriter run: --synchronous %q: want full, extra or normal\n", c.sync)
		return exitUsage
	}
	if c.rows < 1 || c.maxSize < 16 {
		fmt.Fprintln(stderr, "sqlitewriter run: --rows must be >= 1 and --max-size >= 16")
		return exitUsage
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if c.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.duration)
		defer cancel()
	}
	n, err := run(ctx, c, stdout)
	if err != nil {
		fmt.Fprintf(stderr, "sqlitewriter run: %v (after %d transactions)\n", err, n)
		return exitFail
	}
	fmt.Fprintf(stdout, "sqlitewriter: %d transactions committed and acknowledged\n", n)
	return exitOK
}

// open opens the database with one connection (SQLite allows one writer).
func open(dir, journal, sync string) (*sql.DB, error) {
	path := filepath.Join(dir, dbName)
	dsn := "file:" + path + "?_pragma=busy_timeout(10000)&_txlock=immediate"
	if journal != "" {
		dsn += "&_pragma=journal_mode(" + journal + ")&_pragma=synchronous(" + sync + ")"
	}
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	db.SetMaxOpenConns(1)
	if err := db.Ping(); err != nil {
		db.Close()
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return db, nil
}

// run commits transactions until ctx ends; it returns how many it committed.
func run(ctx context.Context, c runConfig, stdout io.Writer) (int, error) {
	db, err := open(c.dir, c.journal, c.sync)
	if err != nil {
		return 0, err
	}
	defer db.Close()
	var mode string
	if err := db.QueryRow("PRAGMA journal_mode").Scan(&mode); err != nil {
		return 0, fmt.Errorf("read journal_mode: %w", err)
	}
	if mode != c.journal {
		return 0, fmt.Errorf("journal_mode is %q, asked %q (does the directory support it?)", mode, c.journal)
	}
	// Frequent checkpoints: the WAL is copied back and restarted many times.
	for _, q := range []string{
		"PRAGMA wal_autocheckpoint=50",
		"CREATE TABLE IF NOT EXISTS rows (tx INTEGER NOT NULL, k INTEGER NOT NULL, crc INTEGER NOT NULL, payload BLOB NOT NULL, PRIMARY KEY (tx, k))",
		"CREATE INDEX IF NOT EXISTS rows_crc ON rows (crc)",
		"CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
		"INSERT OR IGNORE INTO meta VALUES ('last', 0), ('rows', " + strconv.Itoa(c.rows) + ")",
	} {
		if _, err := db.Exec(q); err != nil {
			return 0, fmt.Errorf("%s: %w", q, err)
		}
	}
	var last int64
	if err := db.QueryRow("SELECT value FROM meta WHERE name='last'").Scan(&last); err != nil {
		return 0, fmt.Errorf("read meta.last: %w", err)
	}
	var rows int
	if err := db.QueryRow("SELECT value FROM meta WHERE name='rows'").Scan(&rows); err != nil {
		return 0, fmt.Errorf("read meta.rows: %w", err)
	}
	if rows != c.rows {
		return 0, fmt.Errorf("database was written with --rows %d, not %d", rows, c.rows)
	}
	ack, err := os.OpenFile(c.ackLog, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, fmt.Errorf("open ack log: %w", err)
	}
	defer ack.Close()
	fmt.Fprintf(stdout, "sqlitewriter: journal %s, synchronous %s, resuming after transaction %d\n", mode, c.sync, last)
	n := 0
	for ctx.Err() == nil {
		id := last + 1
		if err := commit(db, id, c.rows, c.maxSize); err != nil {
			return n, fmt.Errorf("transaction %d: %w", id, err)
		}
		// COMMIT returned: the transaction is durable; only now ack it, in
		// one write so a kill never leaves half a line that looks whole.
		if _, err := ack.Write([]byte(strconv.FormatInt(id, 10) + "\n")); err != nil {
			return n, fmt.Errorf("ack log: %w", err)
		}
		last = id
		n++
	}
	return n, nil
}

func commit(db *sql.DB, id int64, rows, maxSize int) error {
	tx, err := db.Begin()
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer tx.Rollback()
	for k := 1; k <= rows; k++ {
		p := payload(id, k, maxSize)
		if _, err := tx.Exec("INSERT INTO rows (tx, k, crc, payload) VALUES (?, ?, ?, ?)", id, k, crc32.ChecksumIEEE(p), p); err != nil {
			return fmt.Errorf("insert row %d: %w", k, err)
		}
	}
	if _, err := tx.Exec("UPDATE meta SET value=? WHERE name='last'", id); err != nil {
		return fmt.Errorf("update meta: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}

// payload is derived from (id, k) alone, so verify can recompute it; its
// size varies so rows spill over pages and overflow pages.
func payload(id int64, k, maxSize int) []byte {
	x := uint64(id)*0x9E3779B97F4A7C15 ^ uint64(k)*0xBF58476D1CE4E5B9
	next := func() uint64 {
		x ^= x >> 30
		x *= 0xBF58476D1CE4E5B9
		x ^= x >> 27
		x *= 0x94D049BB133111EB
		x ^= x >> 31
		return x
	}
	n := 16 + int(next()%uint64(maxSize-15))
	b := make([]byte, n)
	for i := range b {
		if i%8 == 0 {
			next()
		}
		b[i] = byte(x >> (8 * (i % 8)))
	}
	return b
}

func cmdVerify(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("sqlitewriter verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "", "directory of the database")
	ackLog := fs.String("ack-log", "", "ack log written by run")
	maxSize := fs.Int("max-size", 3000, "the --max-size run used")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if *dir == "" || *ackLog == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "sqlitewriter verify: --dir and --ack-log are required and nothing else is accepted")
		return exitUsage
	}
	rep, err := verify(*dir, *ackLog, *maxSize)
	fmt.Fprintln(stdout, rep.String())
	if err != nil {
		fmt.Fprintf(stderr, "sqlitewriter verify: %v\n", err)
		return exitFail
	}
	return exitOK
}

type report struct {
	Journal     string
	Integrity   string
	Acked       int   // acknowledged transactions
	LastAcked   int64 // highest acknowledged id
	Last        int64 // meta.last in the database
	Present     int   // distinct transaction ids in the database
	Problems    []string
	TotalIssues int
}

func (r report) String() string {
	s := fmt.Sprintf("journal %s, integrity %q, %d acknowledged (last %d), database holds %d transactions (last %d)",
		r.Journal, r.Integrity, r.Acked, r.LastAcked, r.Present, r.Last)
	if r.TotalIssues > 0 {
		s += fmt.Sprintf("; %d problems:\n  %s", r.TotalIssues, strings.Join(r.Problems, "\n  "))
	}
	return s
}

func (r *report) problem(format string, a ...any) {
	r.TotalIssues++
	if len(r.Problems) < 20 {
		r.Problems = append(r.Problems, fmt.Sprintf(format, a...))
	}
}

// readAcks returns the acknowledged ids; a last line without its newline
// is a torn append and does not count.
func readAcks(path string) ([]int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read ack log: %w", err)
	}
	lines := strings.Split(string(b), "\n")
	lines = lines[:len(lines)-1] // "" after the last newline, or a torn line
	var ids []int64
	for i, txt := range lines {
		id, err := strconv.ParseInt(txt, 10, 64)
		if err != nil || id < 1 {
			return nil, fmt.Errorf("ack log %s line %d: %q is not a transaction id", path, i+1, txt)
		}
		if len(ids) > 0 && id <= ids[len(ids)-1] {
			return nil, fmt.Errorf("ack log %s line %d: id %d after %d: ids must increase", path, i+1, id, ids[len(ids)-1])
		}
		ids = append(ids, id)
	}
	return ids, nil
}

// verify opens the database, lets SQLite recover it, and checks it against
// the ack log.
func verify(dir, ackLog string, maxSize int) (report, error) {
	var r report
	acks, err := readAcks(ackLog)
	if err != nil {
		return r, err
	}
	r.Acked = len(acks)
	if len(acks) > 0 {
		r.LastAcked = acks[len(acks)-1]
	}
	if _, err := os.Stat(filepath.Join(dir, dbName)); err != nil {
		if len(acks) == 0 {
			return r, nil
		}
		return r, fmt.Errorf("database missing with %d acknowledged transactions: %w", len(acks), err)
	}
	db, err := open(dir, "", "")
	if err != nil {
		return r, err
	}
	defer db.Close()
	if err := db.QueryRow("PRAGMA journal_mode").Scan(&r.Journal); err != nil {
		return r, fmt.Errorf("read journal_mode: %w", err)
	}
	if err := db.QueryRow("PRAGMA integrity_check").Scan(&r.Integrity); err != nil {
		return r, fmt.Errorf("integrity_check: %w", err)
	}
	if r.Integrity != "ok" {
		r.problem("integrity_check: %s", r.Integrity)
	}
	var rowsPerTx int
	if err := db.QueryRow("SELECT value FROM meta WHERE name='rows'").Scan(&rowsPerTx); err != nil {
		return r, fmt.Errorf("read meta.rows: %w", err)
	}
	if err := db.QueryRow("SELECT value FROM meta WHERE name='last'").Scan(&r.Last); err != nil {
		return r, fmt.Errorf("read meta.last: %w", err)
	}
	rows, err := db.Query("SELECT tx, k, crc, payload FROM rows ORDER BY tx, k")
	if err != nil {
		return r, fmt.Errorf("read rows: %w", err)
	}
	defer rows.Close()
	var cur int64
	var count int
	endTx := func() {
		if cur != 0 && count != rowsPerTx {
			r.problem("transaction %d has %d rows, want %d (torn transaction)", cur, count, rowsPerTx)
		}
	}
	for rows.Next() {
		var tx int64
		var k int
		var crc uint32
		var p []byte
		if err := rows.Scan(&tx, &k, &crc, &p); err != nil {
			return r, fmt.Errorf("scan row: %w", err)
		}
		if tx != cur {
			endTx()
			if tx != cur+1 {
				r.problem("transactions %d..%d missing", cur+1, tx-1)
			}
			cur, count = tx, 0
			r.Present++
		}
		count++
		want := payload(tx, k, maxSize)
		if crc != crc32.ChecksumIEEE(want) || string(p) != string(want) {
			r.problem("transaction %d row %d: payload differs from what was written", tx, k)
		}
	}
	if err := rows.Err(); err != nil {
		return r, fmt.Errorf("read rows: %w", err)
	}
	endTx()
	if cur != r.Last {
		r.problem("meta.last is %d but the last transaction present is %d (not atomic)", r.Last, cur)
	}
	for _, id := range acks {
		if id > cur {
			r.problem("acknowledged transaction %d is missing (the database ends at %d)", id, cur)
			break
		}
	}
	if cur > r.LastAcked+1 {
		r.problem("database holds transaction %d but only %d was acknowledged: the run went further than its ack log", cur, r.LastAcked)
	}
	if r.TotalIssues > 0 {
		return r, errors.New("loss or damage found")
	}
	return r, nil
}
