package fs

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Helper processes: the test binary re-run with TANDEM_FS_HELPER set.
func TestMain(m *testing.M) {
	switch os.Getenv("TANDEM_FS_HELPER") {
	case "":
		os.Exit(m.Run())
	case "mmap":
		if err := helperMmap(os.Getenv("TANDEM_FS_ARG")); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
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
