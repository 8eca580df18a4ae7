package fs

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestFreezeFile: while one file is frozen, the application's changes of
// that inode (under any of its names, also a file the mount had not seen
// before the freeze) and renames wait; changes of other files and creates
// go on; all complete after thaw.
func TestFreezeFile(t *testing.T) {
	e := newEnv(t, Options{})
	mustWrite(t, e.p("a"), []byte("aaaa"), os.O_CREATE|os.O_WRONLY)
	mustWrite(t, e.p("b"), []byte("bbbb"), os.O_CREATE|os.O_WRONLY)
	for _, n := range []string{"r-a", "r-c"} {
		mustWrite(t, e.p(n), []byte(n), os.O_CREATE|os.O_WRONLY)
	}
	if err := os.Link(e.p("a"), e.p("a2")); err != nil {
		t.Fatal(err)
	}
	// c exists only behind the mount's back: no FUSE node holds it yet.
	cfd, err := unix.Openat(e.m.RootFd(), "c", unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	unix.Close(cfd)
	mustWrite(t, filepath.Join(e.copy, "c"), nil, os.O_CREATE|os.O_WRONLY) // as the peer has it

	for _, name := range []string{"a", "c"} {
		fd, err := unix.Openat(e.m.RootFd(), name, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		thaw, err := e.m.FreezeFile(fd)
		if err != nil {
			t.Fatalf("FreezeFile %s: %v", name, err)
		}
		start := func(fn func() error) chan error {
			ch := make(chan error, 1)
			go func() { ch <- fn() }()
			return ch
		}
		goesOn := func(what string, ch chan error) {
			t.Helper()
			select {
			case err := <-ch:
				if err != nil {
					t.Errorf("%s while %s is frozen: %v", what, name, err)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("%s waited for the freeze of %s", what, name)
			}
		}
		waits := func(what string, ch chan error) {
			t.Helper()
			select {
			case err := <-ch:
				t.Errorf("%s finished (%v) while %s was frozen", what, err, name)
			case <-time.After(200 * time.Millisecond):
			}
		}
		target := name
		if name == "a" {
			target = "a2" // the other name of the frozen inode
		}
		write := start(func() error { return os.WriteFile(e.p(target), []byte("changed "+name), 0o644) })
		chmod := start(func() error { return os.Chmod(e.p(name), 0o600) })
		rename := start(func() error { return os.Rename(e.p("r-"+name), e.p("renamed-"+name)) })
		waits("a write to "+target, write)
		waits("a chmod of "+name, chmod)
		waits("a rename of another file", rename)
		thaw()
		goesOn("the write after thaw", write)
		goesOn("the chmod after thaw", chmod)
		goesOn("the rename after thaw", rename)
		unix.Close(fd)
	}

	// Without a rename waiting, other files' changes and creates go on
	// while a file is frozen.
	fd, err := unix.Openat(e.m.RootFd(), "a", unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	thaw, err := e.m.FreezeFile(fd)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		if err := os.WriteFile(e.p("b"), []byte("other file"), 0o644); err != nil {
			done <- err
			return
		}
		done <- os.WriteFile(e.p("new"), []byte("created"), 0o644)
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("while a is frozen: %v", err)
		}
	case <-time.After(10 * time.Second):
		thaw()
		t.Fatal("a write to another file or a create waited for the freeze of a")
	}
	thaw()
	thaw() // idempotent
	e.check()
}
