package main

import (
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/tandem-ha/tandem/internal/api"
)

// maintCmds are the verbs of issue 6: maintenance switches, the loop
// count reset and the checkers' view.
func maintCmds(g *globals) []*cobra.Command {
	return []*cobra.Command{maintenanceCmd(g), resetLoopCmd(g), checkersCmd(g)}
}

func onOffFlag(cmd *cobra.Command, p *string, name, usage string) {
	cmd.Flags().StringVar(p, name, "", usage+" (on|off)")
}

func maintenanceCmd(g *globals) *cobra.Command {
	var opts api.CommandOptions
	cmd := &cobra.Command{
		Use:   "maintenance MODULE [--checkers on|off] [--failover on|off] [--boot-start on|off]",
		Short: "Show or set the module's maintenance switches on this node",
		Long: `Show or set the maintenance switches of a module on this node. Each is "on"
in normal operation and persists across agent restarts:

  --checkers off    checkers stop running: stop or restart the application
                    by hand without a checker reacting
  --failover off    this node takes the module over from its peer only when
                    asked (swap, prim), and no checker fails over from it
  --boot-start off  the module stays stopped when the agent starts

Without a switch flag, prints the switches, the loop counts and the checkers.
The switches are per node: set them on both nodes to cover the pair.`,
		Example: `  tandem maintenance web --checkers off --failover off
  tandem maintenance web --checkers on --failover on
  tandem maintenance web`,
		Args: cobra.ExactArgs(1),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			for _, f := range []struct{ name, v string }{{"checkers", opts.Checkers}, {"failover", opts.Failover}, {"boot-start", opts.BootStart}} {
				if f.v != "" && f.v != "on" && f.v != "off" {
					return &exitError{code: exitUsage, err: fmt.Errorf("invalid --%s %q: give on or off", f.name, f.v)}
				}
			}
			if opts.Checkers == "" && opts.Failover == "" && opts.BootStart == "" {
				return showModuleMaint(cmd.OutOrStdout(), g, args[0])
			}
			msg, err := g.client().Command(args[0], "maintenance", opts)
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), map[string]string{"module": args[0], "command": "maintenance", "message": msg})
			}
			fmt.Fprintln(cmd.OutOrStdout(), msg)
			return nil
		}),
	}
	onOffFlag(cmd, &opts.Checkers, "checkers", "run the checkers")
	onOffFlag(cmd, &opts.Failover, "failover", "allow automatic failover to and from this node")
	onOffFlag(cmd, &opts.BootStart, "boot-start", "start the module when the agent starts")
	return cmd
}

func resetLoopCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "reset-loop MODULE",
		Short: "Reset the count of checker restarts and failovers (loop limit)",
		Long: `Count the checkers' restarts and failovers of the module on this node from
zero again, as if the loop window had just ended. A module stopped by the
loop limit stays stopped: start it with "tandem start MODULE" once the cause
is fixed.`,
		Example: `  tandem reset-loop web && tandem start web`,
		Args:    cobra.ExactArgs(1),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			msg, err := g.client().Command(args[0], "reset-loop", api.CommandOptions{})
			if err != nil {
				return err
			}
			if g.json {
				return printJSON(cmd.OutOrStdout(), map[string]string{"module": args[0], "command": "reset-loop", "message": msg})
			}
			fmt.Fprintln(cmd.OutOrStdout(), msg)
			return nil
		}),
	}
}

func checkersCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "checkers [MODULE]",
		Short: "Show the checkers of every module on this node (or one)",
		Long: `Show each module's checkers on this node: type, when it runs, its action,
whether it runs now, its last verdict and result, and counts of checks,
failed checks and actions; then the loop counts and maintenance switches.
--json prints, per module, the status fields checkers, loop and maintenance.`,
		Example: `  tandem checkers
  tandem checkers web --json`,
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
				return printJSON(cmd.OutOrStdout(), maintJSON(st))
			}
			for i, m := range st.Modules {
				if i > 0 {
					fmt.Fprintln(cmd.OutOrStdout())
				}
				printMaint(cmd.OutOrStdout(), m)
			}
			return nil
		}),
	}
}

func showModuleMaint(w io.Writer, g *globals, module string) error {
	st, err := g.client().Status(module)
	if err != nil {
		return err
	}
	if g.json {
		return printJSON(w, maintJSON(st))
	}
	for _, m := range st.Modules {
		printMaint(w, m)
	}
	return nil
}

type maintView struct {
	Module      string              `json:"module"`
	Node        string              `json:"node"`
	State       string              `json:"state"`
	Checkers    []api.CheckerStatus `json:"checkers"`
	Loop        api.LoopStatus      `json:"loop"`
	Maintenance api.Maintenance     `json:"maintenance"`
}

func maintJSON(st api.Status) map[string][]maintView {
	out := []maintView{}
	for _, m := range st.Modules {
		cs := m.Checkers
		if cs == nil {
			cs = []api.CheckerStatus{}
		}
		out = append(out, maintView{Module: m.Module, Node: m.Node, State: m.State, Checkers: cs, Loop: m.Loop, Maintenance: m.Maintenance})
	}
	return map[string][]maintView{"modules": out}
}

func printMaint(w io.Writer, m api.ModuleStatus) {
	mt := m.Maintenance
	fmt.Fprintf(w, "%s on %s (%s): checkers %s, failover %s, boot start %s\n", m.Module, m.Node, m.State,
		dash(mt.Checkers), dash(mt.Failover), dash(mt.BootStart))
	l := m.Loop
	since := ""
	if !l.Since.IsZero() {
		since = ", window since " + l.Since.Local().Format("2006-01-02 15:04:05")
	}
	fmt.Fprintf(w, "loop: %d of %d restarts, %d of %d failovers within %s%s\n", l.Restarts, l.MaxRestarts, l.Failovers, l.MaxFailovers, dash(l.Window), since)
	if len(m.Checkers) == 0 {
		fmt.Fprintln(w, "no checkers")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CHECKER\tTYPE\tWHEN\tACTION\tRUNS\tVERDICT\tSINCE\tCHECKS\tFAILED\tACTIONS\tLAST RESULT")
	for _, c := range m.Checkers {
		runs := "no"
		if c.Active {
			runs = "yes"
		}
		sinceV := "-"
		if !c.Since.IsZero() {
			sinceV = c.Since.Local().Format(time.TimeOnly)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%d\t%d\t%s\n", c.Name, c.Type, c.When, c.Action, runs, dash(c.Verdict), sinceV,
			c.Checks, c.Failures, c.Actions, dash(oneLine(strings.TrimSpace(c.Detail))))
	}
	tw.Flush()
}
