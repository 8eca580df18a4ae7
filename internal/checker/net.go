package checker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

type tcpChecker struct{ addr string }

func newTCP(s Spec) (Checker, error) {
	if _, _, err := net.SplitHostPort(s.Address); err != nil {
		return nil, fmt.Errorf("address %q: want host:port (e.g. 127.0.0.1:5432)", s.Address)
	}
	return tcpChecker{addr: s.Address}, nil
}

func (c tcpChecker) Check(ctx context.Context) Result {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", c.addr)
	if err != nil {
		return fail("connect to %s: %v", c.addr, cause(err))
	}
	conn.Close()
	return ok("%s accepts connections", c.addr)
}

// cause drops the "dial tcp ADDR:" prefix the message already carries.
func cause(err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		return oe.Err
	}
	return err
}

// maxBody bounds how much of an HTTP answer is read for a body match.
const maxBody = 1 << 20

type httpChecker struct {
	url    string
	status int
	body   *regexp.Regexp
	client *http.Client
}

func newHTTP(s Spec) (Checker, error) {
	u, err := url.Parse(s.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("url %q: want an http:// or https:// URL with a host", s.URL)
	}
	c := httpChecker{url: s.URL, status: s.Status}
	if c.status == 0 {
		c.status = http.StatusOK
	}
	if s.Body != "" {
		if c.body, err = regexp.Compile(s.Body); err != nil {
			return nil, fmt.Errorf("body %q: %v", s.Body, err)
		}
	}
	c.client = &http.Client{
		// The status asked for is the URL's own, not a redirect target's.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Transport:     &http.Transport{Proxy: nil, DisableKeepAlives: true},
	}
	return c, nil
}

func (c httpChecker) Check(ctx context.Context) Result {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url, nil)
	if err != nil {
		return fail("request %s: %v", c.url, err)
	}
	req.Header.Set("User-Agent", "tandem-checker")
	resp, err := c.client.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = cause(ue.Err)
		}
		return fail("GET %s: %v", c.url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != c.status {
		io.Copy(io.Discard, io.LimitReader(resp.Body, maxBody))
		return fail("GET %s: status %d, want %d", c.url, resp.StatusCode, c.status)
	}
	if c.body == nil {
		return ok("GET %s: status %d", c.url, resp.StatusCode)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		return fail("GET %s: read the body: %v", c.url, err)
	}
	if !c.body.Match(b) {
		return fail("GET %s: status %d but the body does not match %q", c.url, resp.StatusCode, c.body)
	}
	return ok("GET %s: status %d, body matches", c.url, resp.StatusCode)
}

type ifaceChecker struct{ name string }

func newInterface(s Spec) (Checker, error) {
	if s.Interface == "" {
		return nil, errors.New("no interface given")
	}
	return ifaceChecker{name: s.Interface}, nil
}

func (c ifaceChecker) Check(ctx context.Context) Result {
	l, err := netlink.LinkByName(c.name)
	if err != nil {
		return fail("interface %s not found: %v", c.name, err)
	}
	a := l.Attrs()
	switch {
	case a.RawFlags&unix.IFF_UP == 0:
		return fail("interface %s is administratively down", c.name)
	case a.RawFlags&unix.IFF_LOWER_UP == 0:
		return fail("interface %s has no carrier (link down)", c.name)
	case a.OperState != netlink.OperUp && a.OperState != netlink.OperUnknown:
		return fail("interface %s is %s", c.name, strings.ToLower(a.OperState.String()))
	}
	return ok("interface %s is up", c.name)
}
