package fs

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Helper processes: the test binary re-run with TANDEM_FS_HELPER set.
func TestMain(m *testing.M) {
	switch os.Getenv("TANDEM_FS_HELPER") {
	case "":
		if os.Geteuid() == 0 {
			startWatchdog()
		}
		os.Exit(m.Run())
	case "watchdog":
		pid, _ := strconv.Atoi(os.Getenv("TANDEM_FS_ARG"))
		runWatchdog(pid)
		os.Exit(0)
	case "mmap":
		if err := helperMmap(os.Getenv("TANDEM_FS_ARG")); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	case "bench-seq", "bench-dsync", "bench-small", "bench-rtt":
		r, err := runWorkload(strings.TrimPrefix(os.Getenv("TANDEM_FS_HELPER"), "bench-"), os.Getenv("TANDEM_FS_ARG"))
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		json.NewEncoder(os.Stdout).Encode(r)
		os.Exit(0)
	case "mount":
		dir := os.Getenv("TANDEM_FS_ARG")
		if _, err := Mount(dir, Options{}); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println("ready")
		time.Sleep(time.Minute) // killed by the test
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "unknown helper")
		os.Exit(1)
	}
}

// A test process that dies (panic, test timeout) while one of its threads
// waits on its own mount hangs forever: that thread keeps the /dev/fuse fd
// open, so the kernel never aborts the connection. The watchdog, a separate
// process, aborts the test's connections when the test process dies.
var (
	watchdogMu sync.Mutex
	watchdogIn io.WriteCloser
)

func startWatchdog() {
	cmd := helperCmd("watchdog", strconv.Itoa(os.Getpid()))
	in, err := cmd.StdinPipe()
	if err != nil {
		return
	}
	// Not the test's stderr: go test may be gone by the time it reports.
	if lf, err := os.OpenFile(os.Getenv("TANDEM_FS_WATCHDOG_LOG"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err == nil {
		cmd.Stderr = lf
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return
	}
	watchdogIn = in
}

// watchMount tells the watchdog about a mount of this process; the returned
// func says the connection is gone (its number may then be reused).
func watchMount(dir string) func() {
	watchdogMu.Lock()
	defer watchdogMu.Unlock()
	var st unix.Stat_t
	if watchdogIn == nil || unix.Stat(dir, &st) != nil {
		return func() {}
	}
	conn := unix.Minor(st.Dev) // fusectl names connections by device number
	fmt.Fprintf(watchdogIn, "+%d %s\n", conn, dir)
	return func() {
		watchdogMu.Lock()
		defer watchdogMu.Unlock()
		fmt.Fprintf(watchdogIn, "-%d\n", conn)
	}
}

// dying reports whether process pid is gone or exiting (PF_EXITING): its
// last thread may be stuck closing a file on its own mount.
func dying(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return true
	}
	f := strings.Fields(string(b[i+1:])) // state ppid pgrp session tty tpgid flags
	if len(f) < 7 || f[0] == "Z" || f[0] == "X" {
		return true
	}
	flags, _ := strconv.ParseUint(f[6], 10, 64)
	return flags&0x4 != 0
}

func runWatchdog(pid int) {
	var mu sync.Mutex
	live := map[uint32]string{} // connection -> mount point
	go func() {
		sc := bufio.NewScanner(os.Stdin)
		for sc.Scan() {
			line := sc.Text()
			if len(line) < 2 {
				continue
			}
			num, dir, _ := strings.Cut(line[1:], " ")
			n, err := strconv.ParseUint(num, 10, 32)
			if err != nil {
				continue
			}
			mu.Lock()
			if line[0] == '+' {
				live[uint32(n)] = dir
			} else {
				delete(live, uint32(n))
			}
			mu.Unlock()
		}
	}()
	for !dying(pid) {
		time.Sleep(200 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // let a clean exit finish
	mu.Lock()
	defer mu.Unlock()
	for conn, dir := range live {
		err := os.WriteFile(fmt.Sprintf("/sys/fs/fuse/connections/%d/abort", conn), []byte("1"), 0)
		if err == nil {
			fmt.Fprintf(os.Stderr, "watchdog: test process %d died with a live mount; aborted FUSE connection %d\n", pid, conn)
		}
		if tandem, _ := isTandemMount(dir); tandem {
			unix.Unmount(dir, unix.MNT_DETACH)
		}
	}
}

func helperCmd(what, arg string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "TANDEM_FS_HELPER="+what, "TANDEM_FS_ARG="+arg)
	return cmd
}

func helperMmap(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	mem, err := unix.Mmap(int(f.Fd()), 0, 1<<16, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("shared writable mmap: %w", err)
	}
	copy(mem[100:], "through mmap")
	copy(mem[40000:], "second page")
	if err := unix.Msync(mem, unix.MS_SYNC); err != nil {
		return fmt.Errorf("msync: %w", err)
	}
	return unix.Munmap(mem)
}

// TestCleanupStale kills a process serving a mount (as an agent crash
// would) and checks that CleanupStale, and Mount, recover the directory.
func TestCleanupStale(t *testing.T) {
	requireRoot(t)
	dir := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "kept"), []byte("kept"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := CleanupStale(dir); err != nil {
		t.Fatalf("CleanupStale on a plain directory: %v", err)
	}
	t.Cleanup(func() {
		for range 4 {
			if live, _ := isTandemMount(dir); !live {
				return
			}
			unix.Unmount(dir, unix.MNT_DETACH)
		}
	})
	crash := func() {
		t.Helper()
		cmd := helperCmd("mount", dir)
		cmd.Stderr = os.Stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		ready := make(chan string, 1)
		go func() {
			line, _ := bufio.NewReader(stdout).ReadString('\n')
			ready <- strings.TrimSpace(line)
		}()
		select {
		case line := <-ready:
			if line != "ready" {
				cmd.Process.Kill()
				cmd.Wait()
				t.Fatalf("helper: %q", line)
			}
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatal("helper did not mount in time")
		}
		if b, err := os.ReadFile(filepath.Join(dir, "kept")); err != nil || string(b) != "kept" {
			t.Fatalf("through the helper's mount: %q %v", b, err)
		}
		cmd.Process.Kill()
		cmd.Wait()
		var sfs unix.Statfs_t
		if err := unix.Statfs(dir, &sfs); !errors.Is(err, unix.ENOTCONN) {
			t.Fatalf("stat after the crash: %v, want ENOTCONN", err)
		}
	}
	crash()
	if err := CleanupStale(dir); err != nil {
		t.Fatalf("CleanupStale: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "kept")); err != nil || string(b) != "kept" {
		t.Fatalf("after CleanupStale: %q %v", b, err)
	}
	if live, _ := isTandemMount(dir); live {
		t.Fatal("still a tandem mount after CleanupStale")
	}
	// Mount cleans up by itself.
	crash()
	m, err := Mount(dir, Options{})
	if err != nil {
		t.Fatalf("Mount over a stale mount: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "kept")); err != nil || string(b) != "kept" {
		t.Fatalf("through the new mount: %q %v", b, err)
	}
	if _, err := Mount(dir, Options{}); err == nil {
		t.Fatal("second Mount on a live mount succeeded")
	}
	if err := m.Unmount(); err != nil {
		t.Fatal(err)
	}
}

// TestWatchdog (opt-in, TANDEM_FS_PANIC_TEST=1) panics while a request is in
// flight; the go test run must end within seconds instead of hanging.
func TestWatchdog(t *testing.T) {
	if os.Getenv("TANDEM_FS_PANIC_TEST") == "" {
		t.Skip("opt-in: TANDEM_FS_PANIC_TEST=1 (the test binary panics on purpose)")
	}
	e := newEnv(t, Options{})
	e.rec.delay = 3 * time.Second
	f, _ := os.Create(e.p("f"))
	go f.Sync()
	time.Sleep(500 * time.Millisecond)
	panic("on purpose, with an fsync in flight")
}

// TestFuseFdNotInherited: a child process must not keep the FUSE
// connection alive (an agent crash would then hang the mount).
func TestFuseFdNotInherited(t *testing.T) {
	e := newEnv(t, Options{})
	out, err := exec.Command("sh", "-c", "ls -l /proc/$$/fd").CombinedOutput()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(out), "/dev/fuse") {
		t.Fatalf("a child inherited /dev/fuse:\n%s", out)
	}
	_ = e
}
