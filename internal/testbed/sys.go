package testbed

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// run executes a command in the root namespaces; the error carries the
// command line and its output.
func run(stdin []byte, name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// ipBatch runs `ip` commands (one a line) inside a named network namespace.
func ipBatch(ns, script string) (string, error) {
	out, err := run([]byte(script), "ip", "-n", ns, "-batch", "-")
	if err != nil {
		return out, fmt.Errorf("%w\nbatch:\n%s", err, script)
	}
	return out, nil
}

// writeSysctls writes /proc/sys keys (path form, "net/ipv6/conf/all/x");
// inside inNetNS they apply to that namespace.
func writeSysctls(kv map[string]string) error {
	for k, v := range kv {
		if err := os.WriteFile(filepath.Join("/proc/sys", k), []byte(v), 0o644); err != nil {
			return fmt.Errorf("sysctl %s=%s: %w", k, v, err)
		}
	}
	return nil
}

// inNetNS runs fn on a locked OS thread switched into ns. If the thread
// cannot be switched back it stays locked, so Go discards it when the
// goroutine ends. A panic in fn is re-raised in the caller's goroutine.
func inNetNS(ns netns.NsHandle, fn func() error) error {
	type result struct {
		err   error
		panic any
	}
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("open current network namespace: %w", err)}
			return
		}
		defer orig.Close()
		if err := netns.Set(ns); err != nil {
			runtime.UnlockOSThread()
			done <- result{err: fmt.Errorf("enter network namespace: %w", err)}
			return
		}
		var res result
		func() {
			defer func() { res.panic = recover() }()
			res.err = fn()
		}()
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: it dies with this goroutine.
			res.err = errors.Join(res.err, fmt.Errorf("restore network namespace (thread discarded): %w", err))
			done <- res
			return
		}
		runtime.UnlockOSThread()
		done <- res
	}()
	res := <-done
	if res.panic != nil {
		panic(res.panic)
	}
	return res.err
}

// Owner file: "<pid> <start time in clock ticks>" so a reused pid is not
// mistaken for the owner.
func writeOwner(dir string) error {
	st, err := procStartTime(os.Getpid())
	if err != nil {
		return fmt.Errorf("testbed: read own start time: %w", err)
	}
	path := filepath.Join(dir, "owner")
	data := fmt.Sprintf("%d %d\n", os.Getpid(), st)
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		return fmt.Errorf("testbed: write %s: %w", path, err)
	}
	return nil
}

// ownerAlive reports whether the process that wrote dir/owner still runs.
// known is false when the file is missing or unreadable.
func ownerAlive(dir string) (alive, known bool) {
	data, err := os.ReadFile(filepath.Join(dir, "owner"))
	if err != nil {
		return false, false
	}
	f := strings.Fields(string(data))
	if len(f) != 2 {
		return false, false
	}
	pid, err1 := strconv.Atoi(f[0])
	start, err2 := strconv.ParseUint(f[1], 10, 64)
	if err1 != nil || err2 != nil || pid <= 0 {
		return false, false
	}
	st, err := procStartTime(pid)
	if err != nil {
		return false, true
	}
	return st == start, true
}

// procStat returns the fields of /proc/<pid>/stat after the command name:
// [0] state, [1] ppid, [2] pgrp, ... [19] start time.
func procStat(pid int) ([]string, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil, err
	}
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return nil, fmt.Errorf("parse /proc/%d/stat", pid)
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 20 {
		return nil, fmt.Errorf("parse /proc/%d/stat: %d fields", pid, len(f))
	}
	return f, nil
}

func procStartTime(pid int) (uint64, error) {
	f, err := procStat(pid)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(f[19], 10, 64)
}

// liveProc reports whether pid exists and is not a zombie.
func liveProc(pid int) bool {
	f, err := procStat(pid)
	if err != nil {
		return false
	}
	return f[0] != "Z" && f[0] != "X"
}

// groupAlive reports whether any non-zombie process is in process group pgid.
func groupAlive(pgid int) bool {
	for _, pid := range listPids() {
		f, err := procStat(pid)
		if err != nil || f[0] == "Z" || f[0] == "X" {
			continue
		}
		if f[2] == strconv.Itoa(pgid) {
			return true
		}
	}
	return false
}

func listPids() []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	pids := make([]int, 0, len(ents))
	for _, e := range ents {
		if pid, err := strconv.Atoi(e.Name()); err == nil {
			pids = append(pids, pid)
		}
	}
	return pids
}

// nsInode returns the namespace inode a bound namespace file refers to, or
// 0 when the file is missing or not a namespace (no longer bound).
func nsInode(path string) uint64 {
	var sfs unix.Statfs_t
	if err := unix.Statfs(path, &sfs); err != nil || sfs.Type != unix.NSFS_MAGIC {
		return 0
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0
	}
	return st.Ino
}

// procNSInode parses /proc/<pid>/ns/<kind> ("net:[4026532000]").
func procNSInode(pid int, kind string) uint64 {
	link, err := os.Readlink("/proc/" + strconv.Itoa(pid) + "/ns/" + kind)
	if err != nil {
		return 0
	}
	i, j := strings.IndexByte(link, '['), strings.IndexByte(link, ']')
	if i < 0 || j < i {
		return 0
	}
	n, _ := strconv.ParseUint(link[i+1:j], 10, 64)
	return n
}

// killInNamespaces SIGKILLs every process (other than this one) whose
// network or mount namespace is one of inodes, until none is left or the
// timeout passes. Zombies have no namespaces and are not counted.
func killInNamespaces(inodes []uint64, timeout time.Duration) error {
	set := map[uint64]bool{}
	for _, ino := range inodes {
		if ino != 0 {
			set[ino] = true
		}
	}
	if len(set) == 0 {
		return nil
	}
	self := os.Getpid()
	deadline := time.Now().Add(timeout)
	for {
		var left []int
		for _, pid := range listPids() {
			if pid == self {
				continue
			}
			if set[procNSInode(pid, "net")] || set[procNSInode(pid, "mnt")] {
				if liveProc(pid) {
					left = append(left, pid)
					_ = unix.Kill(pid, unix.SIGKILL)
				}
			}
		}
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v still inside the bed's namespaces %v after SIGKILL", left, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
