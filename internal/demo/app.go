package demo

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// AppOptions configure the demo application (`tandem demo-app`).
type AppOptions struct {
	Listen  string // TCP address; default ":7000"
	Dir     string // directory of the data file; default DataDir
	Node    string // name sent in the greeting; default the host name
	PIDFile string // written once the application serves; optional
	Logger  *slog.Logger
}

// The protocol, one line each way:
//
//	server: hello <node> <last id>      (on connect)
//	client: put <id> <payload>
//	server: ack <id>                    (the record is fdatasync'ed)
//	server: err <message>
//
// An id at or below the last one stored is acknowledged without a second
// write: it is a client resending a record whose ack it missed.

// app is the demo application's state: one data file, appends serialised.
type app struct {
	node string
	log  *slog.Logger

	mu   sync.Mutex
	f    *os.File
	size int64
	last uint64

	failOnce sync.Once
	failErr  error              // set once, before cancel is called
	cancel   context.CancelFunc // ends RunApp
}

// RunApp runs the demo application until ctx ends: a TCP server that
// appends each record it receives to DataFile in o.Dir (write + fdatasync)
// before acknowledging it. At start it reads the file to continue after the
// last whole record, cutting off a torn tail a crash left.
func RunApp(ctx context.Context, o AppOptions) error {
	if o.Listen == "" {
		o.Listen = fmt.Sprintf(":%d", AppPort)
	}
	if o.Dir == "" {
		o.Dir = DataDir
	}
	if o.Node == "" {
		o.Node, _ = os.Hostname()
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if n := closeInheritedFUSE(); n > 0 {
		o.Logger.Warn("demo-app: closed /dev/fuse descriptors inherited from the agent", "count", n)
	}
	a := &app{node: o.Node, log: o.Logger}
	if err := a.open(o.Dir); err != nil {
		return err
	}
	defer a.f.Close()
	ln, err := net.Listen("tcp", o.Listen)
	if err != nil {
		return fmt.Errorf("demo-app: listen on %s: %w (is another instance running?)", o.Listen, err)
	}
	defer ln.Close()
	if o.PIDFile != "" {
		if err := writePID(o.PIDFile); err != nil {
			return err
		}
	}
	a.log.Info("demo-app serving", "listen", o.Listen, "file", a.f.Name(), "last", a.last)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	a.cancel = cancel
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				wg.Wait()
				if a.failErr != nil {
					return a.failErr
				}
				a.log.Info("demo-app stopping", "last", a.lastID())
				return nil
			}
			return fmt.Errorf("demo-app: accept on %s: %w", o.Listen, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			a.serve(ctx, conn)
		}()
	}
}

func (a *app) open(dir string) error {
	path := filepath.Join(dir, DataFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("demo-app: open data file %s: %w (is %s mounted?)", path, err, dir)
	}
	data, err := io.ReadAll(f)
	if err != nil {
		f.Close()
		return fmt.Errorf("demo-app: read data file %s: %w", path, err)
	}
	end, last := scanValid(data)
	if end < int64(len(data)) {
		// A torn or foreign tail: never acknowledged (an ack follows the
		// fdatasync of a whole line), so it may go.
		a.log.Warn("demo-app: cutting off an incomplete tail", "file", path, "at", end, "bytes", int64(len(data))-end)
		if err := f.Truncate(end); err != nil {
			f.Close()
			return fmt.Errorf("demo-app: truncate %s to %d: %w", path, end, err)
		}
	}
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		f.Close()
		return fmt.Errorf("demo-app: fdatasync %s: %w", path, err)
	}
	// The file's directory entry must be durable too.
	if d, err := os.Open(dir); err == nil {
		err = d.Sync()
		d.Close()
		if err != nil {
			f.Close()
			return fmt.Errorf("demo-app: fsync directory %s: %w", dir, err)
		}
	}
	a.f, a.size, a.last = f, end, last
	return nil
}

func (a *app) lastID() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.last
}

// store appends one record durably; an id already stored is not written
// again.
func (a *app) store(id uint64, payload string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if id <= a.last {
		return nil
	}
	line := recordLine(id, payload)
	if _, err := a.f.WriteAt([]byte(line), a.size); err != nil {
		return fmt.Errorf("write record %d to %s: %w", id, a.f.Name(), err)
	}
	if err := unix.Fdatasync(int(a.f.Fd())); err != nil {
		return fmt.Errorf("fdatasync %s after record %d: %w", a.f.Name(), id, err)
	}
	a.size += int64(len(line))
	a.last = id
	return nil
}

func (a *app) serve(ctx context.Context, conn net.Conn) {
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	w := bufio.NewWriter(conn)
	fmt.Fprintf(w, "hello %s %d\n", a.node, a.lastID())
	if w.Flush() != nil {
		return
	}
	sc := bufio.NewScanner(conn)
	sc.Buffer(make([]byte, 256), 256)
	for sc.Scan() {
		id, payload, err := parsePut(sc.Text())
		if err == nil {
			err = a.store(id, payload)
			if err != nil {
				// The file is in doubt (the FUSE daemon died with the
				// node?): stopping is the honest outcome.
				fmt.Fprintf(w, "err %v\n", err)
				w.Flush()
				a.fail(err)
				return
			}
			fmt.Fprintf(w, "ack %d\n", id)
		} else {
			fmt.Fprintf(w, "err %v\n", err)
		}
		if w.Flush() != nil {
			return
		}
	}
}

// fail ends the application with err.
func (a *app) fail(err error) {
	a.failOnce.Do(func() {
		a.failErr = fmt.Errorf("demo-app: cannot store records any more: %w", err)
		a.cancel()
	})
}

// parsePut parses "put <id> <payload>".
func parsePut(line string) (uint64, string, error) {
	f := strings.Fields(line)
	if len(f) != 3 || f[0] != "put" {
		return 0, "", fmt.Errorf("want \"put <id> <payload>\", got %q", line)
	}
	id, err := strconv.ParseUint(f[1], 10, 64)
	if err != nil || id == 0 {
		return 0, "", fmt.Errorf("id %q: want a positive integer", f[1])
	}
	if len(f[2]) != payloadLen || !isHex(f[2]) {
		return 0, "", fmt.Errorf("payload %q: want %d lower-case hex digits", f[2], payloadLen)
	}
	return id, f[2], nil
}

// closeInheritedFUSE closes any /dev/fuse descriptor this process
// inherited. go-fuse opens /dev/fuse without O_CLOEXEC, so programs the
// agent starts get a copy; holding it keeps the FUSE connection alive after
// a kill -9 of the agent, and then a request in flight (our fdatasync)
// waits forever and this process cannot die.
func closeInheritedFUSE() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return 0
	}
	n := 0
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd < 3 {
			continue
		}
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && l == "/dev/fuse" {
			if unix.Close(fd) == nil {
				n++
			}
		}
	}
	return n
}

// writePID writes the pid file atomically: a reader never sees it half
// written.
func writePID(path string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return fmt.Errorf("demo-app: write pid file %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("demo-app: rename pid file to %s: %w", path, err)
	}
	return nil
}

// errServer is an "err" answer of the application.
var errServer = errors.New("application refused the record")

// greeting parses "hello <node> <last>".
func parseGreeting(line string) (node string, last uint64, err error) {
	f := strings.Fields(line)
	if len(f) != 3 || f[0] != "hello" {
		return "", 0, fmt.Errorf("greeting %q: want \"hello <node> <last id>\"", line)
	}
	last, err = strconv.ParseUint(f[2], 10, 64)
	if err != nil {
		return "", 0, fmt.Errorf("greeting %q: last id: %w", line, err)
	}
	return f[1], last, nil
}

// sleepCtx sleeps d or until ctx ends; false when ctx ended.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
