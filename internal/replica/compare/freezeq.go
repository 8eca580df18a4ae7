package compare

import (
	"runtime"
	"sync"
	"time"
)

// freezeQueue runs the file freezes of a compare, at most max at once,
// without a hand-off between goroutines on their critical path.
//
// The freezes are the compare's one serial section (a whole Freeze, and
// the application's next change behind it, waits for every file freeze
// held). With a plain semaphore, each release wakes the next worker, which
// then waits for a CPU: on a busy machine (2 vCPUs, the other workers
// reading, the sender sealing) that wait was as long as the freeze itself,
// and the section stood idle meanwhile. Here a worker that finds the
// places taken queues its freeze; a worker holding a place runs, after its
// own, the freezes queued meanwhile, back to back, and wakes their owners
// only to go on with their own work.
type freezeQueue struct {
	mu      sync.Mutex
	max     int // places: freezes running at once
	running int
	queue   []*freezeJob
}

type freezeJob struct {
	run func()
	// done gets false once another goroutine ran it, true when its owner
	// is to run it itself and take over the queue.
	done chan bool
}

// maxServed bounds the queued freezes one goroutine runs for others
// before it hands the queue to the next one's owner and goes back to its
// own work.
const maxServed = 64

// yieldAfter is how long a goroutine runs queued freezes before it lets
// the other ready goroutines run.
var yieldAfter = 500 * time.Microsecond

func newFreezeQueue(places int) *freezeQueue {
	return &freezeQueue{max: max(places, 1)}
}

// do runs fn, with at most q.max freezes running at once (fn included),
// and returns once fn ran.
func (q *freezeQueue) do(fn func()) {
	q.mu.Lock()
	if q.running >= q.max {
		j := &freezeJob{run: fn, done: make(chan bool, 1)}
		q.queue = append(q.queue, j)
		q.mu.Unlock()
		if !<-j.done {
			return
		}
		// Handed over: this place is ours now.
	} else {
		q.running++
		q.mu.Unlock()
	}
	ran := time.Now()
	fn()
	for served := 0; ; served++ {
		q.mu.Lock()
		if len(q.queue) == 0 {
			q.running--
			q.mu.Unlock()
			return
		}
		j := q.queue[0]
		q.queue[0] = nil
		q.queue = q.queue[1:]
		q.mu.Unlock()
		if served == maxServed {
			j.done <- true // its owner runs it and serves the rest
			return
		}
		if time.Since(ran) >= yieldAfter {
			// The goroutines that serve the application (FUSE requests)
			// and are ready go first: a run of freezes never yields
			// otherwise (Go preempts after 10 ms): without this, an
			// application's writes waited behind it (in-process p99 7 ->
			// 11-27 ms); with it, in the agent, their p99 stayed within
			// its spread. The queued freezes keep this place meanwhile.
			runtime.Gosched()
			ran = time.Now()
		}
		j.run()
		j.done <- false
	}
}
