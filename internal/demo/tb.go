package demo

import (
	"fmt"
	"runtime"
	"strings"
	"sync"
)

// recorder implements testbed.TB for a program: tcluster reports through
// it. Fatalf and Skipf end the calling goroutine (runtime.Goexit, as the
// testing package does), so the demo's steps run in a goroutine of their
// own; Cleanup functions run, last first, when the caller asks.
type recorder struct {
	mu       sync.Mutex
	failed   bool
	errs     []string // Errorf, Fatalf and Skipf messages
	logs     []string // Logf messages (agent log tails on failure...)
	cleanups []func()
}

func (r *recorder) Helper() {}

func (r *recorder) Cleanup(f func()) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cleanups = append(r.cleanups, f)
}

func (r *recorder) Failed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.failed
}

func (r *recorder) Logf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.logs = append(r.logs, fmt.Sprintf(format, args...))
}

func (r *recorder) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failed = true
	r.errs = append(r.errs, fmt.Sprintf(format, args...))
}

func (r *recorder) Fatalf(format string, args ...any) {
	r.Errorf(format, args...)
	runtime.Goexit()
}

func (r *recorder) Skipf(format string, args ...any) {
	r.Errorf(format, args...)
	runtime.Goexit()
}

// runCleanups runs the registered cleanups, last registered first.
// A cleanup may register more (they run too).
func (r *recorder) runCleanups() {
	for {
		r.mu.Lock()
		if len(r.cleanups) == 0 {
			r.mu.Unlock()
			return
		}
		f := r.cleanups[len(r.cleanups)-1]
		r.cleanups = r.cleanups[:len(r.cleanups)-1]
		r.mu.Unlock()
		// Own goroutine: a Fatalf inside ends only this cleanup.
		done := make(chan struct{})
		go func() {
			defer close(done)
			defer func() {
				if p := recover(); p != nil {
					r.Errorf("cleanup panicked: %v", p)
				}
			}()
			f()
		}()
		<-done
	}
}

// errors returns the failure messages joined, or "".
func (r *recorder) errors() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return strings.Join(r.errs, "; ")
}

// details returns every message, for the failure report.
func (r *recorder) details() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var b strings.Builder
	for _, e := range r.errs {
		b.WriteString("error: " + e + "\n")
	}
	for _, l := range r.logs {
		b.WriteString(l + "\n")
	}
	return b.String()
}
