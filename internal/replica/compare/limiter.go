package compare

import (
	"context"
	"sync"
	"time"
)

// limiter is a token bucket of bytes per second, shared by the file
// workers. The burst is a tenth of a second, at least one send chunk.
type limiter struct {
	mu     sync.Mutex
	rate   float64
	burst  float64
	tokens float64
	last   time.Time
}

func newLimiter(rate int64) *limiter {
	b := max(float64(rate)/10, sendChunk)
	return &limiter{rate: float64(rate), burst: b, tokens: b, last: time.Now()}
}

// wait takes n bytes' worth of tokens, sleeping as needed.
func (l *limiter) wait(ctx context.Context, n int64) error {
	if l == nil || n <= 0 {
		return nil
	}
	l.mu.Lock()
	now := time.Now()
	l.tokens = min(l.burst, l.tokens+now.Sub(l.last).Seconds()*l.rate)
	l.last = now
	l.tokens -= float64(n)
	var d time.Duration
	if l.tokens < 0 {
		d = time.Duration(-l.tokens / l.rate * float64(time.Second))
	}
	l.mu.Unlock()
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}
