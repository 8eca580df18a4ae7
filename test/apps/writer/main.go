// Command writer is the no-loss workload of the end-to-end tests and of
// `tandem demo`: it appends self-checking records to files in a replicated
// directory, makes each one durable, and only then logs its id in an ack
// log kept outside the cluster. After any fault, `writer verify` proves that
// every acknowledged record is still present, intact and in order.
//
//	writer run --dir DIR --ack-log FILE [--records N] [--duration D] [--rate R]
//	           [--size BYTES] [--mode fdatasync|fsync|odsync|osync|none] [--files F]
//	           [--checkpoint-every N] [--keep-checkpoints K] [--retry D] [--slow D]
//	writer verify --dir DIR --ack-log FILE [--json]
//
// Records go round-robin to DIR/data-0.log ... data-<F-1>.log (record id
// i to data-((i-1) mod F).log); each is a 20-byte header {magic, id,
// length, crc32c} and a payload derived from the id. Every N records the
// writer writes checkpoint-<n>.tmp, fsyncs it, renames it to checkpoint-<n>,
// fsyncs the directory, and removes checkpoints older than the last K, so
// create, rename and unlink are exercised and checked too. Mode none
// acknowledges a record once write() returned (for sync: write modules).
//
// When run ends it prints how many records it acknowledged and the longest
// time one record took from its first write to its acknowledgement
// ("max record latency"); --slow D also reports, as it happens, every new
// maximum of at least D.
//
// Running again with the same ack log resumes: a torn unacknowledged tail is
// cut off and numbering continues after the highest intact id.
//
// Exit codes of run: 0 done or stopped by SIGINT/SIGTERM; 1 setup failed or
// resume refused (acknowledged data already lost); 2 usage; 3 the data
// directory failed (EIO, ENOTCONN...: e.g. the node's FUSE daemon died);
// 4 the ack log failed; 5 the data directory is full (ENOSPC, EDQUOT).
// A failing operation is retried every 50 ms for --retry (default 0: not
// at all), never spun on. Exit codes of verify: 0 no loss, 1 loss or damage
// found, 2 usage or the check could not run.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	os.Exit(mainArgs(os.Args[1:], os.Stdout, os.Stderr))
}

func usage(w io.Writer) {
	fmt.Fprintln(w, `usage:
  writer run --dir DIR --ack-log FILE [--records N] [--duration D] [--rate R/s] [--size BYTES]
             [--mode fdatasync|fsync|odsync|osync|none] [--files F] [--checkpoint-every N]
             [--keep-checkpoints K] [--retry D] [--ack-sync=false] [--slow D]
  writer verify --dir DIR --ack-log FILE [--json]
run 'writer run -h' or 'writer verify -h' for the flags`)
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
	fmt.Fprintf(stderr, "writer: unknown command %q\n", args[0])
	usage(stderr)
	return exitUsage
}

func cmdRun(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("writer run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var cfg runConfig
	fs.StringVar(&cfg.dir, "dir", "", "data directory (the replicated directory; must exist)")
	fs.StringVar(&cfg.ackLog, "ack-log", "", "ack log file, outside the replicated directory")
	fs.Uint64Var(&cfg.records, "records", 0, "records to write (0: until stopped)")
	fs.DurationVar(&cfg.duration, "duration", 0, "stop after this long (0: no limit)")
	fs.Float64Var(&cfg.rate, "rate", 0, "records per second (0: as fast as possible)")
	fs.IntVar(&cfg.size, "size", 4096, "payload bytes per record")
	fs.StringVar(&cfg.mode, "mode", "fdatasync", "durability: fdatasync or fsync after each write, files opened odsync (O_DSYNC) or osync (O_SYNC), or none (acknowledged once write() returned)")
	fs.IntVar(&cfg.files, "files", 4, "data files written round-robin")
	fs.IntVar(&cfg.ckEvery, "checkpoint-every", 100, "write a checkpoint file after every N records (0: never)")
	fs.IntVar(&cfg.keep, "keep-checkpoints", 3, "checkpoints kept; older ones are removed")
	fs.DurationVar(&cfg.retry, "retry", 0, "retry a failing write this long before giving up (0: give up at once)")
	fs.DurationVar(&cfg.slow, "slow", 0, "report each new maximum record latency of at least this long as it happens (0: only the final maximum)")
	fs.BoolVar(&cfg.ackSync, "ack-sync", true, "fdatasync the ack log after each line (a killed writer's written lines survive without it; only a machine crash needs it)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "writer run: unexpected argument %q\n", fs.Arg(0))
		return exitUsage
	}
	cfg.out = stderr
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	sum, err := run(ctx, cfg)
	if sum.records > 0 {
		fmt.Fprintf(stdout, "writer: acknowledged %d records (ids %d-%d), %d checkpoints\n", sum.records, sum.first, sum.last, sum.checkpoints)
		fmt.Fprintf(stdout, "writer: max record latency %v (record %d)\n", sum.maxLatency, sum.maxID)
	} else {
		fmt.Fprintln(stdout, "writer: acknowledged no record")
	}
	if err != nil {
		var ee *exitError
		code := exitFail
		if errors.As(err, &ee) {
			code = ee.code
		}
		fmt.Fprintf(stderr, "writer: %v (exit %d)\n", err, code)
		return code
	}
	return exitOK
}

func cmdVerify(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("writer verify", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dir := fs.String("dir", "", "data directory to check")
	ackLog := fs.String("ack-log", "", "ack log written by writer run")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if *dir == "" || *ackLog == "" || fs.NArg() > 0 {
		fmt.Fprintln(stderr, "writer verify: --dir and --ack-log are required, and nothing else")
		return exitUsage
	}
	r, err := verify(*dir, *ackLog)
	if err != nil {
		fmt.Fprintf(stderr, "writer verify: %v\n", err)
		return exitUsage
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(r); err != nil {
			fmt.Fprintf(stderr, "writer verify: %v\n", err)
			return exitUsage
		}
	} else {
		printReport(stdout, r)
	}
	if !r.OK {
		return exitFail
	}
	return exitOK
}
