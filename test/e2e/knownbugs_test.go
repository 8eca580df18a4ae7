package e2e

import (
	"os"
	"testing"
)

// Reproductions of bugs the resynchronisation tests found, skipped until
// they are fixed (the fix belongs to the agent, the state machine or the
// compare engine); TANDEM_KNOWN_BUGS=1 runs them.

func knownBug(t *testing.T, what string) {
	t.Helper()
	if os.Getenv("TANDEM_KNOWN_BUGS") == "" {
		t.Skip("known bug: " + what + "; set TANDEM_KNOWN_BUGS=1 to reproduce")
	}
}

// The helper stays for the next reproduction.
var _ = knownBug
