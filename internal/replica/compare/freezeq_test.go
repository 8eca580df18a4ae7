package compare

import (
	"bytes"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestFreezeQueue: every freeze runs exactly once, never more than the
// places at once, and do returns only after its own ran.
func TestFreezeQueue(t *testing.T) {
	for _, places := range []int{1, 3} {
		q := newFreezeQueue(places)
		const workers, each = 16, 200
		var running, peak, total atomic.Int64
		ran := make([]atomic.Int32, workers*each)
		var wg sync.WaitGroup
		for w := range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range each {
					id := w*each + i
					q.do(func() {
						n := running.Add(1)
						for {
							p := peak.Load()
							if n <= p || peak.CompareAndSwap(p, n) {
								break
							}
						}
						ran[id].Add(1)
						total.Add(1)
						if i%50 == 0 {
							time.Sleep(100 * time.Microsecond) // let a queue form
						}
						running.Add(-1)
					})
					if ran[id].Load() != 1 {
						t.Errorf("places %d: freeze %d returned after running %d times", places, id, ran[id].Load())
					}
				}
			}()
		}
		wg.Wait()
		if total.Load() != workers*each {
			t.Errorf("places %d: %d freezes ran, want %d", places, total.Load(), workers*each)
		}
		if peak.Load() > int64(places) {
			t.Errorf("places %d: %d freezes ran at once", places, peak.Load())
		}
		if q.running != 0 || len(q.queue) != 0 {
			t.Errorf("places %d: %d still running, %d queued after all returned", places, q.running, len(q.queue))
		}
	}
}

// TestFreezeQueueServesThenHandsOver: the goroutine holding the place
// runs the freezes queued meanwhile (no hand-off between them), but at
// most maxServed of them: the next one's owner then takes over.
func TestFreezeQueueServesThenHandsOver(t *testing.T) {
	q := newFreezeQueue(1)
	const queued = maxServed + 5
	release := make(chan struct{})
	var releaseOnce sync.Once
	free := func() { releaseOnce.Do(func() { close(release) }) }
	defer free() // a failing test lets the queued goroutines end

	var owner, runner [queued]atomic.Int64 // goroutine ids
	var first atomic.Int64
	var wg sync.WaitGroup
	started := make(chan struct{})
	wg.Add(1)
	go func() { // the first: holds the place until all are queued
		defer wg.Done()
		first.Store(goid())
		q.do(func() { close(started); <-release })
	}()
	<-started
	for i := range queued {
		wg.Add(1)
		go func() {
			defer wg.Done()
			owner[i].Store(goid())
			q.do(func() { runner[i].Store(goid()) })
		}()
		// Queued in order.
		deadline := time.Now().Add(5 * time.Second)
		for {
			q.mu.Lock()
			n := len(q.queue)
			q.mu.Unlock()
			if n == i+1 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("freeze %d not queued within 5s", i)
			}
			time.Sleep(time.Millisecond)
		}
	}
	free()
	wg.Wait()
	for i := range queued {
		want, who := first.Load(), "the place's holder"
		if i >= maxServed {
			want, who = owner[maxServed].Load(), "the owner of the one handed over"
		}
		if got := runner[i].Load(); got != want {
			t.Errorf("queued freeze %d ran on goroutine %d, want %d (%s)", i, got, want, who)
		}
	}
	if q.running != 0 || len(q.queue) != 0 {
		t.Errorf("%d still running, %d queued after all returned", q.running, len(q.queue))
	}
}

// goid is the calling goroutine's id (tests only).
func goid() int64 {
	b := make([]byte, 64)
	b = b[:runtime.Stack(b, false)]
	b = bytes.TrimPrefix(b, []byte("goroutine "))
	id, _ := strconv.ParseInt(string(b[:bytes.IndexByte(b, ' ')]), 10, 64)
	return id
}
