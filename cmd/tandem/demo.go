package main

import (
	"fmt"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/tandem-ha/tandem/internal/demo"
)

// exitInterrupted: the demo was stopped by Ctrl-C (128 + SIGINT).
const exitInterrupted = 130

func demoCmd(g *globals) *cobra.Command {
	var keep bool
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Run a two-node cluster on this machine: failover, resync, failback, no write lost",
		Long: `Build a complete two-node cluster on this one machine (hosts alpha and
beta plus a client: network and mount namespaces on private bridges, nothing
touches the machine's own network), run a small application writing
durable records to a replicated directory through the VIP, kill -9 the
primary, show the failover, bring the node back, show the resync and the
failback, and check that every acknowledged write is on the serving node.

It needs root, /dev/fuse, ip, nsenter and unshare, and nothing but this
binary. Everything it builds is removed at the end, also on Ctrl-C. Exit
code 0 when no acknowledged write was lost, 1 otherwise, 130 when
interrupted.`,
		Example: `  sudo tandem demo
  sudo tandem demo --json | jq '{failover_ms, acked_writes, lost_writes}'
  sudo tandem demo --keep      # keep the bed's files (logs, both copies of the data)`,
		Args: cobra.NoArgs,
		RunE: action(func(cmd *cobra.Command, _ []string) error {
			// The timeline is the output; library logs only when they matter.
			slog.SetDefault(slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), &slog.HandlerOptions{Level: slog.LevelWarn})))
			out := cmd.OutOrStdout()
			if g.json {
				out = cmd.ErrOrStderr() // stdout holds only the JSON object
			}
			err := demo.Check()
			var res *demo.Result
			if err == nil {
				fmt.Fprintln(out, "tandem demo: a two-node cluster, a client and a replicated application on this machine")
				fmt.Fprintln(out)
				res, err = demo.Run(cmd.Context(), demo.Options{Out: out, Keep: keep})
			}
			if err != nil {
				if g.json {
					printJSON(cmd.OutOrStdout(), map[string]any{"ok": false, "error": err.Error()})
				}
				return err
			}
			if g.json {
				if err := printJSON(cmd.OutOrStdout(), res); err != nil {
					return err
				}
			}
			switch {
			case res.Interrupted:
				return exitWith(exitInterrupted)
			case !res.OK:
				return exitWith(exitFailed)
			}
			return nil
		}),
	}
	cmd.Flags().BoolVar(&keep, "keep", false, "keep the bed's directory (configs, logs, both copies of the data) for inspection")
	return cmd
}

// demoAppCmd is the demo's application, started by the demo module's
// start_prim inside the primary's host.
func demoAppCmd() *cobra.Command {
	var o demo.AppOptions
	cmd := &cobra.Command{
		Use:    "demo-app",
		Short:  "internal: the application `tandem demo` protects (a durable record store on TCP)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: action(func(cmd *cobra.Command, _ []string) error {
			o.Logger = slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))
			return demo.RunApp(cmd.Context(), o)
		}),
	}
	f := cmd.Flags()
	f.StringVar(&o.Listen, "listen", fmt.Sprintf(":%d", demo.AppPort), "TCP address to serve")
	f.StringVar(&o.Dir, "dir", demo.DataDir, "directory of the data file")
	f.StringVar(&o.Node, "node", "", "node name sent to clients (default: the host name)")
	f.StringVar(&o.PIDFile, "pidfile", "", "write the pid here once serving")
	return cmd
}
