package main

import (
	"log/slog"
	"os"

	"github.com/spf13/cobra"

	"github.com/tandem-ha/tandem/internal/agent"
	"github.com/tandem-ha/tandem/internal/config"
)

func agentCmd() *cobra.Command {
	var opts agent.Options
	cmd := &cobra.Command{
		Use:   "agent",
		Short: "Run this node's agent (foreground, until SIGTERM or SIGINT)",
		Long: `Run this node's agent in the foreground. It loads the cluster file and the
modules that include this node, pairs with the peers and serves the control
API. It stops its modules' supervision on SIGTERM or SIGINT. Logs go to
stderr.`,
		Example: `  tandem agent --config /etc/tandem/cluster.yaml
  tandem agent --config cluster.yaml --node alpha`,
		Args: cobra.NoArgs,
		RunE: action(func(cmd *cobra.Command, _ []string) error {
			logger := slog.New(slog.NewTextHandler(cmd.ErrOrStderr(), nil))
			slog.SetDefault(logger)
			opts.Logger = logger
			return agent.Run(cmd.Context(), opts)
		}),
	}
	cmd.Flags().StringVar(&opts.ConfigPath, "config", config.DefaultClusterFile, "cluster file")
	cmd.Flags().StringVar(&opts.Node, "node", "", "this node's name (default: the node with an address on this machine)")
	return cmd
}

// vipGuardCmd is the helper process the agent starts to remove its VIPs if
// the agent dies; it reads instructions on stdin.
func vipGuardCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "vip-guard",
		Short:  "internal: removes the agent's virtual IPs when the agent dies",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: action(func(*cobra.Command, []string) error {
			return agent.RunGuard(os.Stdin)
		}),
	}
}
