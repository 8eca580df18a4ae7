package api

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"syscall"
	"time"
)

// DefaultSocket is where the agent listens unless configured otherwise.
const DefaultSocket = "/run/tandem/tandem.sock"

// Default request timeouts when Client.Timeout is zero. Commands run module
// scripts (which have their own timeouts), so they get longer.
const (
	DefaultStatusTimeout  = 10 * time.Second
	DefaultCommandTimeout = 10 * time.Minute
)

// Client talks to the local agent's control API.
type Client struct {
	Socket  string        // DefaultSocket when empty
	Timeout time.Duration // per request (not for followed logs); see the defaults above
}

// Error is an error answer of the agent. It matches ErrUnknownModule (404),
// ErrRefused (409) or ErrAgentDown (503) with errors.Is.
type Error struct {
	Code int    // HTTP status
	Msg  string // the agent's message, shown as is
}

func (e *Error) Error() string { return e.Msg }

// Is maps the HTTP status to the package's sentinel errors.
func (e *Error) Is(target error) bool {
	switch target {
	case ErrUnknownModule:
		return e.Code == http.StatusNotFound
	case ErrRefused:
		return e.Code == http.StatusConflict
	case ErrAgentDown:
		return e.Code == http.StatusServiceUnavailable
	}
	return false
}

// downError says the agent cannot be reached and how to fix it.
type downError struct {
	socket string
	cause  error
}

func (e *downError) Error() string {
	if errors.Is(e.cause, syscall.EACCES) || errors.Is(e.cause, syscall.EPERM) {
		return fmt.Sprintf("cannot reach the tandem agent at %s (%v): the control socket is root-only; run this command as root (sudo)", e.socket, e.cause)
	}
	return fmt.Sprintf("cannot reach the tandem agent at %s (%v): is it running? start it with \"systemctl start tandem\" or \"tandem agent --config /etc/tandem/cluster.yaml\"", e.socket, e.cause)
}

func (e *downError) Unwrap() []error { return []error{ErrAgentDown, e.cause} }

func (c *Client) socket() string {
	if c.Socket == "" {
		return DefaultSocket
	}
	return c.Socket
}

func (c *Client) httpClient() *http.Client {
	sock := c.socket()
	return &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			conn, err := d.DialContext(ctx, "unix", sock)
			if err != nil {
				return nil, &downError{socket: sock, cause: dialCause(err)}
			}
			return conn, nil
		},
		DisableKeepAlives: true,
	}}
}

// dialCause strips "dial unix PATH:" (the message names the socket already).
func dialCause(err error) error {
	var se *net.OpError
	if errors.As(err, &se) && se.Err != nil {
		var sys *os.SyscallError
		if errors.As(se.Err, &sys) {
			return fmt.Errorf("%s: %w", sys.Syscall, sys.Err)
		}
		return se.Err
	}
	return err
}

func (c *Client) timeout(def time.Duration) time.Duration {
	if c.Timeout > 0 {
		return c.Timeout
	}
	return def
}

// do sends a request and returns the response when its status is 200;
// otherwise the agent's error.
func (c *Client) do(ctx context.Context, method, path string, body any) (*http.Response, error) {
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://tandem"+path, rd)
	if err != nil {
		return nil, fmt.Errorf("control API request %s %s: %w", method, path, err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.httpClient().Do(req)
	if err != nil {
		var de *downError
		if errors.As(err, &de) {
			return nil, de
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("tandem agent at %s: %s %s: no answer in time: %w", c.socket(), method, path, ctx.Err())
		}
		return nil, fmt.Errorf("tandem agent at %s: %s %s: %w", c.socket(), method, path, err)
	}
	if resp.StatusCode == http.StatusOK {
		return resp, nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var eb errorBody
	msg := ""
	if json.Unmarshal(b, &eb) == nil {
		msg = eb.Error
	}
	if msg == "" {
		msg = fmt.Sprintf("tandem agent at %s: %s %s: %s: %s", c.socket(), method, path, resp.Status, bytes.TrimSpace(b))
	}
	return nil, &Error{Code: resp.StatusCode, Msg: msg}
}

func (c *Client) getJSON(method, path string, body, out any, def time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout(def))
	defer cancel()
	resp, err := c.do(ctx, method, path, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return fmt.Errorf("tandem agent at %s: %s %s: invalid answer: %w", c.socket(), method, path, err)
	}
	return nil
}

// Status returns the status of every module ("") or of one.
func (c *Client) Status(module string) (Status, error) {
	path := "/v1/status"
	if module != "" {
		path += "/" + url.PathEscape(module)
	}
	var st Status
	err := c.getJSON(http.MethodGet, path, nil, &st, DefaultStatusTimeout)
	return st, err
}

// Command runs verb on module and returns the agent's message. A refusal
// is an *Error matching ErrRefused.
func (c *Client) Command(module, verb string, opts CommandOptions) (string, error) {
	var mb messageBody
	path := "/v1/modules/" + url.PathEscape(module) + "/" + url.PathEscape(verb)
	err := c.getJSON(http.MethodPost, path, opts, &mb, DefaultCommandTimeout)
	return mb.Message, err
}

// Logs calls fn with each JSON line (without its newline) of the module's
// event log: the last `last` events (all when last < 0), then, when follow
// is set, every new one until ctx is done (then it returns nil) or fn fails.
func (c *Client) Logs(ctx context.Context, module string, last int, follow bool, fn func(line []byte) error) error {
	q := url.Values{}
	if last >= 0 {
		q.Set("last", strconv.Itoa(last))
	}
	if follow {
		q.Set("follow", "1")
	}
	path := "/v1/modules/" + url.PathEscape(module) + "/logs?" + q.Encode()
	rctx := ctx
	if !follow {
		var cancel context.CancelFunc
		rctx, cancel = context.WithTimeout(ctx, c.timeout(DefaultStatusTimeout))
		defer cancel()
	}
	resp, err := c.do(rctx, http.MethodGet, path, nil)
	if err != nil {
		if follow && ctx.Err() != nil {
			return nil
		}
		return err
	}
	defer resp.Body.Close()
	br := bufio.NewReaderSize(resp.Body, 64<<10)
	for {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 && line[len(line)-1] == '\n' {
			if ferr := fn(bytes.TrimRight(line, "\r\n")); ferr != nil {
				return ferr
			}
		}
		if err == nil {
			continue
		}
		if errors.Is(err, io.EOF) {
			if follow && ctx.Err() == nil {
				return fmt.Errorf("tandem agent at %s: the log stream of %s ended: the agent stopped?", c.socket(), module)
			}
			return nil
		}
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("tandem agent at %s: reading the log of %s: %w", c.socket(), module, err)
	}
}
