// Package e2e holds scenario tests across test hosts: real agents in network
// namespaces, real scripts, a real TCP service reached through the VIP.
// They need root (CI runs as root) and skip otherwise.
package e2e

import (
	"fmt"
	"net/netip"
	"os"
	"testing"

	"github.com/tandem-ha/tandem/internal/testbed/tcluster"
)

var (
	bins     tcluster.Binaries
	buildErr error
)

func TestMain(m *testing.M) {
	if os.Geteuid() != 0 {
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "tandem-e2e-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bins, buildErr = tcluster.Build(dir)
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func newCluster(t *testing.T, o tcluster.Options) *tcluster.Cluster {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("end-to-end tests need root (network namespaces); CI runs them as root")
	}
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return tcluster.New(t, bins, o)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }
