package demo

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// ackTimeout bounds the wait for one acknowledgement.
const ackTimeout = 500 * time.Millisecond

// ack is one acknowledged record, as the client saw it.
type ack struct {
	id   uint64
	at   time.Time
	node string // the node whose application answered
}

// client writes records to the application through the VIP, one at a time
// at a steady pace, and remembers every acknowledgement.
type client struct {
	dial  func(ctx context.Context) (net.Conn, error)
	every time.Duration
	event func(format string, args ...any) // timeline
	log   *os.File                         // acks, one "id node unix-ns" line each; may be nil

	mu    sync.Mutex
	acks  []ack
	node  string // serving node, "" while disconnected
	count map[string]int
}

func newClient(dial func(ctx context.Context) (net.Conn, error), every time.Duration, logPath string, event func(string, ...any)) (*client, error) {
	c := &client{dial: dial, every: every, event: event, count: map[string]int{}}
	if logPath != "" {
		f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
		if err != nil {
			return nil, fmt.Errorf("demo client: create ack log %s: %w", logPath, err)
		}
		c.log = f
	}
	return c, nil
}

// run writes until ctx ends; a lost connection is retried every few
// milliseconds, resending the record whose ack was not seen.
func (c *client) run(ctx context.Context) {
	defer func() {
		if c.log != nil {
			c.log.Close()
		}
	}()
	next := uint64(1)
	tick := time.NewTicker(c.every)
	defer tick.Stop()
	for ctx.Err() == nil {
		conn, node, last, err := c.connect(ctx)
		if err != nil {
			// The VIP is moving: retry until someone answers.
			sleepCtx(ctx, 10*time.Millisecond)
			continue
		}
		c.mu.Lock()
		c.node = node
		c.mu.Unlock()
		if acked := c.lastAcked(); last < acked {
			c.event("client: %s's data ends at record %d, but %d was acknowledged", node, last, acked)
		}
		next, err = c.session(ctx, conn, node, next, tick)
		conn.Close()
		c.mu.Lock()
		c.node = ""
		c.mu.Unlock()
		var ne net.Error
		switch {
		case ctx.Err() != nil:
		case errors.As(err, &ne) && ne.Timeout():
			c.event("client: no ack from %s within %s for record %d; resending it on a new connection", node, ackTimeout, next)
		default:
			c.event("client: connection to %s lost after record %d (%v); reconnecting", node, next-1, shortErr(err))
		}
	}
}

// connect dials the VIP and reads the greeting.
func (c *client) connect(ctx context.Context) (net.Conn, string, uint64, error) {
	// Short: a SYN sent while the VIP moves is lost, and its retransmission
	// would come only after a second.
	dctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	conn, err := c.dial(dctx)
	if err != nil {
		return nil, "", 0, err
	}
	conn.SetReadDeadline(time.Now().Add(time.Second))
	line, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		conn.Close()
		return nil, "", 0, fmt.Errorf("read greeting: %w", err)
	}
	node, last, err := parseGreeting(strings.TrimSpace(line))
	if err != nil {
		conn.Close()
		return nil, "", 0, err
	}
	return conn, node, last, nil
}

// session sends records from next on until the connection fails; it
// returns the next id to send.
func (c *client) session(ctx context.Context, conn net.Conn, node string, next uint64, tick *time.Ticker) (uint64, error) {
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	r := bufio.NewReader(conn)
	w := bufio.NewWriter(conn)
	for {
		select {
		case <-ctx.Done():
			return next, ctx.Err()
		case <-tick.C:
		}
		// A short deadline: after a crash the old primary never answers,
		// and a resend is harmless (the application acks a known id).
		conn.SetDeadline(time.Now().Add(ackTimeout))
		fmt.Fprintf(w, "put %d %s\n", next, Payload(next))
		if err := w.Flush(); err != nil {
			return next, err
		}
		line, err := r.ReadString('\n')
		if err != nil {
			return next, err
		}
		line = strings.TrimSpace(line)
		if line != "ack "+strconv.FormatUint(next, 10) {
			return next, fmt.Errorf("%w: %q", errServer, line)
		}
		c.record(ack{id: next, at: time.Now(), node: node})
		next++
	}
}

func (c *client) record(a ack) {
	c.mu.Lock()
	c.acks = append(c.acks, a)
	c.count[a.node]++
	c.mu.Unlock()
	if c.log != nil {
		fmt.Fprintf(c.log, "%d %s %d\n", a.id, a.node, a.at.UnixNano())
	}
}

func (c *client) lastAcked() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.acks) == 0 {
		return 0
	}
	return c.acks[len(c.acks)-1].id
}

// snapshot returns the acknowledgements so far.
func (c *client) snapshot() []ack {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]ack(nil), c.acks...)
}

// ids returns the acknowledged ids so far.
func (c *client) ids() []uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]uint64, len(c.acks))
	for i, a := range c.acks {
		out[i] = a.id
	}
	return out
}

// servedBy counts the acks from node.
func (c *client) servedBy(node string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.count[node]
}

// outage finds the first ack by node at or after t, and the ack just
// before it (any node: one in flight at t counts); ok is false when node
// has not answered since t.
func outage(acks []ack, t time.Time, node string) (before, after time.Time, ok bool) {
	for _, a := range acks {
		if !a.at.Before(t) && a.node == node {
			return before, a.at, true
		}
		before = a.at
	}
	return before, time.Time{}, false
}

func shortErr(err error) string {
	if err == nil {
		return "closed"
	}
	s := strings.TrimRight(err.Error(), `"`)
	if i := strings.LastIndex(s, ": "); i >= 0 && len(s) > 60 {
		s = s[i+2:]
	}
	if errors.Is(err, errServer) {
		s = "the application answered: " + s
	}
	return s
}
