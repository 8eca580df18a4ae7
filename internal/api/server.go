package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tandem-ha/tandem/internal/eventlog"
)

// maxSocketPath is the longest path a Unix socket address can hold on Linux.
const maxSocketPath = 107

// shutdownGrace bounds how long Serve waits for requests in flight on exit.
const shutdownGrace = 5 * time.Second

// Serve serves the control API on the Unix socket at path socket until ctx
// is done, then removes the socket file. The socket is made 0600 before the
// first request is served, so only root can drive the agent. A stale socket
// file left by a crashed agent is replaced; a live one is refused.
func Serve(ctx context.Context, socket string, b Backend) error {
	ln, unlock, err := listenSocket(socket)
	if err != nil {
		return err
	}
	defer unlock()
	return serve(ctx, ln, newHandler(b), "control API on "+socket)
}

// ServeHealth serves GET /health/MODULE on the TCP address addr until ctx is
// done: 200 with the state when this node should receive the module's
// traffic (PRIM, ALONE, UP), 503 with the state otherwise, 404 for an
// unknown module. It is meant for a cloud load balancer's probe.
func ServeHealth(ctx context.Context, addr string, b Backend) error {
	if addr == "" {
		return errors.New("health listener: no address given (health_listen)")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("health listener: listen on %s: %w (is the address local and the port free?)", addr, err)
	}
	return serve(ctx, ln, healthHandler(b), "health listener on "+addr)
}

func serve(ctx context.Context, ln net.Listener, h http.Handler, what string) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: 10 * time.Second,
		// Requests inherit ctx, so followed logs end when the agent stops.
		BaseContext: func(net.Listener) context.Context { return ctx },
		ErrorLog:    slog.NewLogLogger(slog.Default().Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		ln.Close()
		return fmt.Errorf("%s: %w", what, err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		srv.Close()
	}
	<-errc
	return nil
}

// listenSocket creates the socket (and its directory), replacing a stale
// socket file. A lock file next to the socket makes the check-and-replace
// safe against two agents starting at once.
func listenSocket(socket string) (net.Listener, func(), error) {
	if socket == "" {
		return nil, nil, errors.New("control API: no socket path given")
	}
	if len(socket) > maxSocketPath {
		return nil, nil, fmt.Errorf("control API: socket path %s is %d bytes long, the limit is %d: choose a shorter path", socket, len(socket), maxSocketPath)
	}
	if err := os.MkdirAll(filepath.Dir(socket), 0o755); err != nil {
		return nil, nil, fmt.Errorf("control API: create the directory of %s: %w", socket, err)
	}
	lock, err := os.OpenFile(socket+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, nil, fmt.Errorf("control API: open lock file %s.lock: %w", socket, err)
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		lock.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, nil, fmt.Errorf("control API: another agent already serves %s: stop it first (systemctl stop tandem)", socket)
		}
		return nil, nil, fmt.Errorf("control API: lock %s.lock: %w", socket, err)
	}
	unlock := func() { lock.Close() }
	if err := removeStale(socket); err != nil {
		unlock()
		return nil, nil, err
	}
	ln, err := net.Listen("unix", socket)
	if err != nil {
		unlock()
		return nil, nil, fmt.Errorf("control API: listen on %s: %w", socket, err)
	}
	// The umask already keeps others from connecting (no write bit), so
	// the window before this chmod does not open the socket to them.
	if err := os.Chmod(socket, 0o600); err != nil {
		ln.Close()
		unlock()
		return nil, nil, fmt.Errorf("control API: restrict %s to root: %w", socket, err)
	}
	return ln, unlock, nil
}

// removeStale removes socket if it is a socket nobody answers on.
func removeStale(socket string) error {
	fi, err := os.Lstat(socket)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("control API: inspect %s: %w", socket, err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("control API: %s exists and is not a socket: remove it or choose another socket path", socket)
	}
	c, err := net.DialTimeout("unix", socket, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("control API: another agent already serves %s: stop it first (systemctl stop tandem)", socket)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("control API: cannot tell whether %s is still in use: %w", socket, err)
	}
	if err := os.Remove(socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("control API: remove stale socket %s: %w", socket, err)
	}
	slog.Info("removed a stale control socket", "socket", socket)
	return nil
}

type handler struct{ b Backend }

func newHandler(b Backend) http.Handler {
	h := &handler{b: b}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", h.status)
	mux.HandleFunc("GET /v1/status/{module}", h.status)
	mux.HandleFunc("POST /v1/modules/{module}/{verb}", h.command)
	mux.HandleFunc("GET /v1/modules/{module}/logs", h.logs)
	// Go profiles of the agent, for whoever measures it: on the control
	// socket only (root), e.g.
	// curl --unix-socket /run/tandem/tandem.sock http://x/debug/pprof/profile?seconds=10
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	return mux
}

type errorBody struct {
	Error string `json:"error"`
}

type messageBody struct {
	Message string `json:"message"`
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v) // the client went away: nothing to do
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, errorBody{Error: msg})
}

// backendError answers err from the backend: 404 for an unknown module
// (listing the known ones), 503 when the agent is going down, else code.
func (h *handler) backendError(w http.ResponseWriter, module string, err error, code int) {
	switch {
	case errors.Is(err, ErrUnknownModule):
		writeError(w, http.StatusNotFound, h.unknownModule(module))
	case errors.Is(err, ErrAgentDown):
		writeError(w, http.StatusServiceUnavailable, err.Error())
	default:
		writeError(w, code, err.Error())
	}
}

func (h *handler) unknownModule(module string) string {
	st, err := h.b.Status("")
	if err != nil {
		return fmt.Sprintf("unknown module %q", module)
	}
	names := make([]string, 0, len(st.Modules))
	for _, m := range st.Modules {
		names = append(names, m.Module)
	}
	slices.Sort(names)
	if len(names) == 0 {
		return fmt.Sprintf("unknown module %q: node %s runs no module", module, st.Node)
	}
	return fmt.Sprintf("unknown module %q: node %s runs %s", module, st.Node, strings.Join(names, ", "))
}

func (h *handler) status(w http.ResponseWriter, r *http.Request) {
	module := r.PathValue("module")
	st, err := h.b.Status(module)
	if err != nil {
		h.backendError(w, module, err, http.StatusInternalServerError)
		return
	}
	if st.Modules == nil {
		st.Modules = []ModuleStatus{} // "modules": [] rather than null
	}
	writeJSON(w, http.StatusOK, st)
}

// maxCommandBody bounds the request body: CommandOptions is tiny.
const maxCommandBody = 64 << 10

func (h *handler) command(w http.ResponseWriter, r *http.Request) {
	module, verb := r.PathValue("module"), r.PathValue("verb")
	if !slices.Contains(Verbs, verb) {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("unknown command %q: use one of %s", verb, strings.Join(Verbs, ", ")))
		return
	}
	var opts CommandOptions
	body, err := io.ReadAll(io.LimitReader(r.Body, maxCommandBody+1))
	if err != nil {
		writeError(w, http.StatusBadRequest, fmt.Sprintf("read the request body: %v", err))
		return
	}
	if len(body) > maxCommandBody {
		writeError(w, http.StatusBadRequest, "request body too large")
		return
	}
	if len(strings.TrimSpace(string(body))) > 0 {
		dec := json.NewDecoder(strings.NewReader(string(body)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&opts); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("invalid command options %s: %v", body, err))
			return
		}
	}
	msg, err := h.b.Command(module, verb, opts)
	if err != nil {
		h.backendError(w, module, err, http.StatusConflict)
		return
	}
	writeJSON(w, http.StatusOK, messageBody{Message: msg})
}

func (h *handler) logs(w http.ResponseWriter, r *http.Request) {
	module := r.PathValue("module")
	q := r.URL.Query()
	last := -1 // all
	if s := q.Get("last"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("invalid last=%q: give a number of events >= 0", s))
			return
		}
		last = n
	}
	follow := false
	if s := q.Get("follow"); s != "" {
		v, err := strconv.ParseBool(s)
		if err != nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("invalid follow=%q: give 1 or 0", s))
			return
		}
		follow = v
	}
	path, err := h.b.LogPath(module)
	if err != nil {
		h.backendError(w, module, err, http.StatusInternalServerError)
		return
	}
	var evs []eventlog.Event
	var off int64
	switch {
	case last < 0:
		evs, off, err = eventlog.ReadTail(path, 0)
	case last == 0: // only the offset, to follow from the end
		_, off, err = eventlog.ReadTail(path, 1)
	default:
		evs, off, err = eventlog.ReadTail(path, last)
	}
	if err != nil {
		writeError(w, http.StatusInternalServerError, err.Error())
		return
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	// Encoder writes one line per event; no HTML escaping, so "->" in a
	// message stays readable in --json output.
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	send := func(e eventlog.Event) error { return enc.Encode(e) }
	for _, e := range evs {
		if send(e) != nil {
			return
		}
	}
	_ = rc.Flush()
	if !follow {
		return
	}
	// Follow polls the file every 100ms, and follows truncation and
	// rotation; the request context ends when the client goes away.
	_ = eventlog.Follow(r.Context(), path, off, func(e eventlog.Event) error {
		if err := send(e); err != nil {
			return err
		}
		return rc.Flush()
	})
}

// serving reports whether a node in state should receive the module's traffic.
func serving(state string) bool {
	return state == "PRIM" || state == "ALONE" || state == "UP"
}

func healthHandler(b Backend) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health/{module}", func(w http.ResponseWriter, r *http.Request) {
		module := r.PathValue("module")
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		st, err := b.Status(module)
		var ms *ModuleStatus
		if err == nil {
			for i := range st.Modules {
				if st.Modules[i].Module == module {
					ms = &st.Modules[i]
				}
			}
			if ms == nil {
				err = fmt.Errorf("%w %q", ErrUnknownModule, module)
			}
		}
		switch {
		case errors.Is(err, ErrUnknownModule):
			w.WriteHeader(http.StatusNotFound)
			fmt.Fprintf(w, "unknown module %q\n", module)
		case err != nil:
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintf(w, "UNKNOWN %v\n", err)
		case serving(ms.State) && (ms.Target == "" || serving(ms.Target)):
			// A node leaving PRIM (swap, stop) already refuses traffic.
			w.WriteHeader(http.StatusOK)
			fmt.Fprintln(w, ms.State)
		default:
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, ms.State)
		}
	})
	return mux
}
