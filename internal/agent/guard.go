package agent

import (
	"bufio"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tandem-ha/tandem/internal/netvip"
)

// The VIP guard is a tiny child process that outlives a crashed agent for
// one purpose: when the agent dies (even by SIGKILL) the pipe between them
// closes and the guard removes every VIP the agent held, at once. Without
// it a killed agent leaves its VIPs on the interface while the peer takes
// them over, and both nodes answer for the same address.

type guard struct {
	mu     sync.Mutex
	log    *slog.Logger
	newCmd func() (*exec.Cmd, error)
	timer  *time.Timer
	w      io.WriteCloser // nil until the process started
	cmd    *exec.Cmd
	closed bool
}

// guardDelay is how long after the agent's start its guard starts when no
// VIP needs it sooner. The guard is a second Go process: started at once,
// its start shared the two vCPUs of the test bed with the node's pairing
// (a returning secondary's receiver set-up 11.3 against 5.7 ms; beta's
// `main` to alpha's "started" 56 against 40 ms with the record of WAIT
// skipped too, case (a) of bench/resync, docs/benchmarks.md). Nothing
// needs it before a VIP is added.
const guardDelay = time.Second

// newGuard returns a VIP guard whose process, made by newCmd, starts after
// delay, or before the first VIP is added if that comes sooner. The agent
// passes guardDelay and guardCommand.
func newGuard(log *slog.Logger, delay time.Duration, newCmd func() (*exec.Cmd, error)) *guard {
	g := &guard{log: log, newCmd: newCmd}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.timer = time.AfterFunc(delay, func() {
		g.mu.Lock()
		defer g.mu.Unlock()
		if err := g.startLocked(); err != nil {
			g.log.Error("VIP guard not started; the next VIP addition tries again", "err", err)
		}
	})
	return g
}

// guardCommand is `tandem vip-guard` in its own process group: a Ctrl-C
// for the agent must not make the guard remove VIPs before the stop
// scripts ran.
func guardCommand() (*exec.Cmd, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, "vip-guard")
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Stderr = os.Stderr
	return cmd, nil
}

// startLocked starts the guard process with a pipe on its stdin, unless it
// runs already or the guard was closed.
func (g *guard) startLocked() error {
	if g.w != nil || g.closed {
		return nil
	}
	cmd, err := g.newCmd()
	if err != nil {
		return fmt.Errorf("start VIP guard: %w", err)
	}
	w, err := cmd.StdinPipe()
	if err != nil {
		return fmt.Errorf("start VIP guard: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start VIP guard %s: %w", cmd.Path, err)
	}
	go func() {
		if err := cmd.Wait(); err != nil {
			g.log.Warn("VIP guard exited", "err", err)
		}
	}()
	g.w, g.cmd = w, cmd
	return nil
}

// send tells the guard of a VIP about to be added ("add") or just removed
// ("del"). An addition starts the guard first if it is not running yet, so
// no VIP is ever held unguarded; its error means the VIP must not be
// added. A removal before the guard started has nothing to tell.
func (g *guard) send(op string, vip netip.Prefix, ifname string) error {
	if g == nil {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.w == nil {
		if op != "add" {
			return nil
		}
		if g.closed {
			return fmt.Errorf("VIP guard closed: the agent is stopping")
		}
		if err := g.startLocked(); err != nil {
			return err
		}
	}
	fmt.Fprintf(g.w, "%s %s %s\n", op, vip, ifname)
	return nil
}

// close ends the guard after a clean shutdown (VIPs already removed).
func (g *guard) close() {
	if g == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	g.closed = true
	g.timer.Stop()
	if g.w != nil {
		g.w.Close()
	}
}

// RunGuard is the body of `tandem vip-guard`: it tracks "add|del CIDR IF"
// lines and removes what is still added when its input ends or it is told
// to terminate.
func RunGuard(r io.Reader) error {
	held := map[string]netip.Prefix{}
	var mu sync.Mutex
	cleanup := func() {
		mu.Lock()
		defer mu.Unlock()
		for key, vip := range held {
			ifname := key[strings.IndexByte(key, ' ')+1:]
			if err := netvip.Remove(vip, ifname); err != nil {
				fmt.Fprintf(os.Stderr, "vip-guard: remove %s from %s: %v\n", vip, ifname, err)
			} else {
				fmt.Fprintf(os.Stderr, "vip-guard: the agent is gone; removed %s from %s\n", vip, ifname)
			}
			delete(held, key)
		}
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGHUP)
	signal.Ignore(syscall.SIGINT)
	go func() {
		<-sigs
		cleanup()
		os.Exit(0)
	}()
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 3 {
			continue
		}
		vip, err := netip.ParsePrefix(f[1])
		if err != nil {
			continue
		}
		key := vip.String() + " " + f[2]
		mu.Lock()
		switch f[0] {
		case "add":
			held[key] = vip
		case "del":
			delete(held, key)
		}
		mu.Unlock()
	}
	cleanup()
	return nil
}
