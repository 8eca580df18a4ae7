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

	"github.com/tandem-ha/tandem/internal/netvip"
)

// The VIP guard is a tiny child process that outlives a crashed agent for
// one purpose: when the agent dies (even by SIGKILL) the pipe between them
// closes and the guard removes every VIP the agent held, at once. Without
// it a killed agent leaves its VIPs on the interface while the peer takes
// them over, and both nodes answer for the same address.

type guard struct {
	mu  sync.Mutex
	w   io.WriteCloser
	cmd *exec.Cmd
}

// startGuard runs `tandem vip-guard` with a pipe on its stdin.
func startGuard(log *slog.Logger) (*guard, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("start VIP guard: %w", err)
	}
	cmd := exec.Command(exe, "vip-guard")
	// Own process group: a Ctrl-C for the agent must not make the guard
	// remove VIPs before the stop scripts ran.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Stderr = os.Stderr
	w, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("start VIP guard: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start VIP guard %s: %w", exe, err)
	}
	go func() {
		if err := cmd.Wait(); err != nil {
			log.Warn("VIP guard exited", "err", err)
		}
	}()
	return &guard{w: w, cmd: cmd}, nil
}

func (g *guard) send(op string, vip netip.Prefix, ifname string) {
	if g == nil {
		return
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	fmt.Fprintf(g.w, "%s %s %s\n", op, vip, ifname)
}

// close ends the guard after a clean shutdown (VIPs already removed).
func (g *guard) close() {
	if g == nil {
		return
	}
	g.mu.Lock()
	g.w.Close()
	g.mu.Unlock()
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
