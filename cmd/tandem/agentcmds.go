package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/tandem-ha/tandem/internal/api"
	"github.com/tandem-ha/tandem/internal/eventlog"
)

// stateCodes are the exit codes of `tandem state` (SPEC §2-3).
var stateCodes = map[string]int{"STOP": 0, "WAIT": 1, "ALONE": 2, "UP": 2, "PRIM": 3, "SECOND": 4}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func statusCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "status [MODULE]",
		Short: "Show every module on this node (or one): state, sync, peer, VIPs",
		Long: `Show the modules of this node: state (with the state being entered during
a transition, as WAIT->PRIM), replication (synced, resyncing with its
progress, none), the peer and its state, whether this node's data is up to
date, the epoch, the virtual IPs and which node holds them, and why a module
waits. --json prints the agent's status object (field names are stable).`,
		Example: `  tandem status
  tandem status web --json`,
		Args: cobra.MaximumNArgs(1),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			module := ""
			if len(args) == 1 {
				module = args[0]
			}
			st, err := g.client().Status(module)
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), st)
			}
			printStatus(cmd.OutOrStdout(), st)
			return nil
		}),
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func printStatus(w io.Writer, st api.Status) {
	if len(st.Modules) == 0 {
		fmt.Fprintf(w, "node %s runs no module\n", dash(st.Node))
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "MODULE\tSTATE\tSYNC\tPEER\tPEER_STATE\tUPTODATE\tEPOCH\tVIPS(holder)\tREASON")
	for _, m := range st.Modules {
		state := dash(m.State)
		if m.Target != "" && m.Target != m.State {
			state += "->" + m.Target
		}
		sync := dash(m.Sync)
		if m.Sync == "resyncing" {
			sync = fmt.Sprintf("resyncing(%.1f%%)", m.ResyncPercent)
		}
		if m.LagBytes > 0 {
			sync += fmt.Sprintf(",lag=%s", humanBytes(m.LagBytes))
		}
		up := "no"
		if m.UpToDate {
			up = "yes"
		}
		vips := "-"
		if len(m.VIPs) > 0 {
			vips = strings.Join(m.VIPs, ",") + "(" + dash(m.VIPHolder) + ")"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n",
			m.Module, state, sync, dash(m.Peer), dash(m.PeerState), up, m.Epoch, vips, dash(oneLine(m.Reason)))
	}
	tw.Flush()
	printFarms(w, st)
}

// printFarms adds, for each farm module, every node's share of the VIP's
// buckets: "web: farm 192.0.2.100/24 (addr) alpha UP 86/256 33.6%, ...".
func printFarms(w io.Writer, st api.Status) {
	for _, m := range st.Modules {
		f := m.Farm
		if f == nil {
			continue
		}
		var parts []string
		for _, n := range f.Nodes {
			p := fmt.Sprintf("%s %s %d/%d %.1f%%", n.Node, n.State, n.Held, f.Buckets, n.Share)
			if n.Weight != 1 {
				p += fmt.Sprintf(" w%d", n.Weight)
			}
			parts = append(parts, p)
		}
		extra := ""
		if f.Draining > 0 {
			extra += fmt.Sprintf(", draining %d", f.Draining)
		}
		if f.Blocked > 0 {
			extra += fmt.Sprintf(", waiting for %d", f.Blocked)
		}
		fmt.Fprintf(w, "%s: farm %s (%s, MAC %s%s): %s\n", m.Module, f.VIP, f.Hash, f.MAC, extra, strings.Join(parts, ", "))
	}
}

// oneLine keeps a reason from breaking the table.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

func stateCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "state MODULE",
		Short: "Print the module's state as one word; the exit code tells it too",
		Long: `Print the module's state on this node as one word, for scripts.
Exit codes: STOP 0, WAIT 1, ALONE 2, UP 2, PRIM 3, SECOND 4; 10 when the agent
cannot be reached or does not answer; 11 when the module is unknown on this
node; 12 when the agent reports a state this tandem binary does not know.`,
		Example: `  tandem state web
  if tandem state web >/dev/null; [ $? -eq 3 ]; then echo primary; fi`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			module := args[0]
			st, err := g.client().Status(module)
			switch {
			case errors.Is(err, api.ErrUnknownModule):
				return &exitError{code: exitUnknownModule, err: err}
			case err != nil:
				// Scripts must not mistake "no answer" for a state.
				return &exitError{code: exitAgentDown, err: err}
			}
			var state string
			found := false
			for _, m := range st.Modules {
				if m.Module == module {
					state, found = m.State, true
				}
			}
			if !found {
				return &exitError{code: exitUnknownModule, err: fmt.Errorf("unknown module %q: the agent did not report it", module)}
			}
			if g.json {
				if err := printJSON(cmd.OutOrStdout(), map[string]string{"module": module, "state": state}); err != nil {
					return &exitError{code: exitFailed, err: err}
				}
			} else {
				fmt.Fprintln(cmd.OutOrStdout(), state)
			}
			code, ok := stateCodes[state]
			if !ok {
				return &exitError{code: exitUnknownState, err: fmt.Errorf("module %s: state %q is not known to this tandem binary (%s): upgrade it to match the agent", module, state, version)}
			}
			if code != 0 {
				return exitWith(code)
			}
			return nil
		},
	}
}

type moduleVerb struct {
	name, short, long, example string
}

var moduleVerbs = []moduleVerb{
	{"start", "Start the module on this node",
		`Start the module on this node. It becomes PRIM, SECOND, ALONE or WAIT
depending on its peer and on whether its data is up to date.`,
		"  tandem start web"},
	{"stop", "Stop the module on this node",
		`Stop the module on this node: run its stop scripts, remove its virtual IPs
and leave it in STOP. On the primary, the peer takes over if it can.`,
		"  tandem stop web"},
	{"restart", "Re-run the module's stop and start scripts (no role change)",
		`Re-run the module's stop and start scripts on this node, keeping its role,
its virtual IPs and its replication.`,
		"  tandem restart web"},
	{"prim", "Start the module as primary on this node",
		`Start the module as primary on this node. Refused when this node's data is
not known to be up to date; --force overrides that and the refusal message
names what may be lost.`,
		"  tandem prim web\n  tandem prim web --force"},
	{"second", "Start the module as secondary on this node",
		`Start the module as secondary on this node: it receives the peer's changes
(only what changed since it left, or everything with --full, which compares
block checksums and sends the differing blocks).`,
		"  tandem second web\n  tandem second web --full"},
	{"swap", "Exchange the roles: the secondary becomes primary",
		`Planned role exchange: stop_prim on the primary, final sync, start_prim on
the other node. No acknowledged write is lost.`,
		"  tandem swap web"},
}

func moduleVerbCmd(g *globals, v moduleVerb) *cobra.Command {
	var opts api.CommandOptions
	cmd := &cobra.Command{
		Use:     v.name + " MODULE",
		Short:   v.short,
		Long:    v.long,
		Example: v.example,
		Args:    cobra.ExactArgs(1),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			msg, err := g.client().Command(args[0], v.name, opts)
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), map[string]string{"module": args[0], "command": v.name, "message": msg})
			}
			if msg != "" {
				fmt.Fprintln(cmd.OutOrStdout(), msg)
			}
			return nil
		}),
	}
	switch v.name {
	case "prim":
		cmd.Flags().BoolVar(&opts.Force, "force", false, "promote even if this node's data is not known to be up to date (may lose data)")
	case "second":
		cmd.Flags().BoolVar(&opts.Full, "full", false, "full resync: compare every block with the primary")
	}
	return cmd
}

func logsCmd(g *globals) *cobra.Command {
	var (
		follow bool
		last   int
	)
	cmd := &cobra.Command{
		Use:   "logs MODULE",
		Short: "Show the module's event log (state changes, scripts, checkers)",
		Long: `Show the module's event log: state changes, script runs and their output,
checker verdicts, VIP moves, administrator commands. One line per event:
time, kind, message, then fields as key=value. --json prints the raw JSON
lines (time, module, node, kind, msg, fields). -f keeps printing new events
until interrupted.`,
		Example: `  tandem logs web
  tandem logs web -f -n 0
  tandem logs web -n -1 --json | jq .`,
		Args: cobra.ExactArgs(1),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			if last < -1 {
				return &exitError{code: exitUsage, err: fmt.Errorf("invalid -n %d: give a number of events >= 0, or -1 for all", last)}
			}
			w := cmd.OutOrStdout()
			return g.client().Logs(cmd.Context(), args[0], last, follow, func(line []byte) error {
				if g.json {
					_, err := fmt.Fprintf(w, "%s\n", line)
					return err
				}
				var e eventlog.Event
				if err := json.Unmarshal(line, &e); err != nil {
					_, err := fmt.Fprintf(w, "%s\n", line)
					return err
				}
				_, err := fmt.Fprintln(w, eventlog.Format(e))
				return err
			})
		}),
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new events until interrupted")
	cmd.Flags().IntVarP(&last, "lines", "n", 50, "number of past events to show (0: none, -1: all)")
	return cmd
}

// humanBytes prints a byte count with a binary unit.
func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := int64(unit), 0
	for v := n / unit; v >= unit; v /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
