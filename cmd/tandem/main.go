// Command tandem is the Tandem HA cluster: `tandem agent` runs a node, the
// other verbs talk to the local agent or check configuration. This package
// is wiring only; the logic lives in internal/.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/tandem-ha/tandem/internal/api"
)

// version is set at build time: -ldflags "-X main.version=1.2.3".
var version = "dev"

// Exit codes (documented in docs/cli.md).
const (
	exitOK            = 0
	exitFailed        = 1 // error, or command refused
	exitUsage         = 2 // bad arguments or flags
	exitAgentDown     = 10
	exitUnknownModule = 11 // `state` only
	exitUnknownState  = 12 // `state`: a state this binary does not know
)

// exitError carries an exit code; a nil err means the message was printed
// already (or there is none).
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}

func (e *exitError) Unwrap() error { return e.err }

// exitWith returns an error that makes tandem exit with code, printing
// nothing more.
func exitWith(code int) error { return &exitError{code: code} }

// globals are the persistent flags.
type globals struct {
	socket string
	json   bool
}

func (g *globals) client() *api.Client { return &api.Client{Socket: g.socket} }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run executes the command line args and returns the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRoot()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return exitOK
	}
	var ee *exitError
	if errors.As(err, &ee) {
		if ee.err != nil {
			fmt.Fprintln(stderr, ee.err)
		}
		return ee.code
	}
	// Every RunE returns an *exitError (see action), so anything else comes
	// from cobra itself: unknown verb or flag, wrong number of arguments.
	fmt.Fprintf(stderr, "Error: %v\nRun '%s --help' for usage.\n", err, cmd.CommandPath())
	return exitUsage
}

// action adapts a verb's function: its errors become *exitError, exit 10
// when the agent cannot be reached, 1 otherwise.
func action(fn func(cmd *cobra.Command, args []string) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		err := fn(cmd, args)
		if err == nil {
			return nil
		}
		var ee *exitError
		if errors.As(err, &ee) {
			return err
		}
		if errors.Is(err, api.ErrAgentDown) {
			return &exitError{code: exitAgentDown, err: err}
		}
		return &exitError{code: exitFailed, err: err}
	}
}

func newRoot() *cobra.Command {
	g := &globals{}
	root := &cobra.Command{
		Use:   "tandem",
		Short: "Shared-nothing high-availability cluster for Linux",
		Long: `Tandem keeps an application running when a server dies: real-time
replication of its directories, a virtual IP, automatic failover and failback.

"tandem agent" runs a node; the other verbs talk to the local agent through
its control socket (--api) or check configuration files.`,
		Version:       version,
		SilenceErrors: true,
		SilenceUsage:  true,
	}
	root.SetVersionTemplate("tandem {{.Version}}\n")
	sock := os.Getenv("TANDEM_API")
	if sock == "" {
		sock = api.DefaultSocket
	}
	pf := root.PersistentFlags()
	pf.StringVar(&g.socket, "api", sock, "control socket of the local agent (env TANDEM_API)")
	pf.BoolVar(&g.json, "json", false, "print JSON instead of text")

	root.AddCommand(
		agentCmd(),
		vipGuardCmd(),
		statusCmd(g),
		stateCmd(g),
	)
	for _, v := range moduleVerbs {
		root.AddCommand(moduleVerbCmd(g, v))
	}
	root.AddCommand(logsCmd(g), moduleCmd(g), demoCmd(g), demoAppCmd())
	root.AddCommand(maintCmds(g)...)
	return root
}
