package main

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/tandem-ha/tandem/internal/config"
)

// moduleFlags are shared by the `module` sub-commands.
type moduleFlags struct {
	config string
	node   string
}

// loadCluster loads the cluster file and finds this node: --node, else the
// node with an address here. When neither works node is "" and nodeErr
// says why; callers that need no node (checking a cluster's files from a
// workstation) go on with the cluster-wide settings.
func (f *moduleFlags) loadCluster() (c *config.Cluster, node string, nodeErr, err error) {
	c, err = config.LoadCluster(f.config)
	if err != nil {
		return nil, "", nil, err
	}
	if f.node != "" {
		if _, ok := c.Node(f.node); !ok {
			return nil, "", nil, fmt.Errorf("node %q is not in %s (nodes: %s)", f.node, c.File, strings.Join(c.NodeNames(), ", "))
		}
		return c, f.node, nil, nil
	}
	node, nodeErr = c.LocalNode()
	if nodeErr != nil {
		return c, "", fmt.Errorf("%w\n(give --node NAME)", nodeErr), nil
	}
	return c, node, nil, nil
}

func moduleCmd(g *globals) *cobra.Command {
	f := &moduleFlags{}
	cmd := &cobra.Command{
		Use:   "module",
		Short: "Create, list and validate modules (no agent needed)",
		// Runnable so that an unknown sub-command is a usage error.
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return cmd.Help() },
	}
	pf := cmd.PersistentFlags()
	pf.StringVar(&f.config, "config", config.DefaultClusterFile, "cluster file")
	pf.StringVar(&f.node, "node", "", "this node's name (default: the node with an address on this machine)")
	cmd.AddCommand(moduleNewCmd(f), moduleListCmd(g, f), moduleCheckCmd(f))
	return cmd
}

func moduleNewCmd(f *moduleFlags) *cobra.Command {
	var template, dir string
	cmd := &cobra.Command{
		Use:   "new NAME",
		Short: "Create a module directory from a built-in template",
		Long: `Create the module directory DIR/NAME from a built-in template (default
mirror). DIR defaults to the modules directory of this node in the cluster
file. When the cluster has exactly two nodes (or, for a farm template,
2 to 16) they are written into the module's "nodes:" line, so the new
module is valid right away.`,
		Example: `  tandem module new web
  tandem module new web --template mirror --dir ./modules`,
		Args: cobra.ExactArgs(1),
		RunE: action(func(cmd *cobra.Command, args []string) error {
			name := args[0]
			if name == "" || strings.ContainsRune(name, '/') || name == "." || name == ".." {
				return fmt.Errorf("invalid module name %q: give a plain name such as web (use --dir for the parent directory)", name)
			}
			c, node, _, cerr := f.loadCluster()
			if dir == "" {
				if cerr != nil {
					return fmt.Errorf("cannot find the modules directory: %w\n(give --dir DIR or a valid --config)", cerr)
				}
				dir = c.Resolved(node).ModulesDir
			}
			var nodes []string
			if cerr == nil && (len(c.Nodes) == 2 || config.TemplateKind(template) == config.KindFarm && len(c.Nodes) <= config.MaxFarmNodes) {
				nodes = c.NodeNames()
			}
			target := filepath.Join(dir, name)
			if err := config.NewModuleFromTemplate(template, target, nodes...); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "created module %s in %s from template %s\n", name, target, template)
			fmt.Fprintf(out, "next: edit %s, then run \"tandem module check %s\"\n", filepath.Join(target, config.ModuleFile), name)
			if cerr != nil {
				fmt.Fprintf(cmd.ErrOrStderr(), "note: the cluster file could not be read, so the module's nodes are the template's placeholders: %v\n", cerr)
			}
			return nil
		}),
	}
	cmd.Flags().StringVar(&template, "template", "mirror", "built-in template ("+strings.Join(config.Templates(), ", ")+")")
	cmd.Flags().StringVar(&dir, "dir", "", "parent directory of the new module (default: the node's modules_dir)")
	return cmd
}

// moduleInfo is one line of `module list --json`.
type moduleInfo struct {
	Name           string   `json:"name"`
	Kind           string   `json:"kind"`
	Nodes          []string `json:"nodes"`
	DefaultPrimary string   `json:"default_primary"`
	VIPs           []string `json:"vips"`
	Dir            string   `json:"dir"`
}

func moduleListCmd(g *globals, f *moduleFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the modules of this node found in its modules directory",
		Long: `List the modules of this node found in its modules directory: name, kind,
nodes (the default primary marked with *) and virtual IPs. Modules with
problems are not listed; their errors are printed and the exit code is 1.`,
		Example: `  tandem module list
  tandem module list --config cluster.yaml --node alpha --json`,
		Args: cobra.NoArgs,
		RunE: action(func(cmd *cobra.Command, _ []string) error {
			c, node, nodeErr, err := f.loadCluster()
			if err != nil {
				return configError(cmd.ErrOrStderr(), err)
			}
			if nodeErr != nil {
				return nodeErr
			}
			mods, lerr := config.LoadModules(c, node)
			infos := make([]moduleInfo, 0, len(mods))
			for _, m := range mods {
				mi := moduleInfo{Name: m.Name, Kind: m.Kind, Nodes: m.Nodes, DefaultPrimary: m.DefaultPrimary, VIPs: []string{}, Dir: m.Dir}
				for _, v := range m.VIPs {
					s := v.Address.String()
					if v.Interface != "" {
						s += "@" + v.Interface
					}
					mi.VIPs = append(mi.VIPs, s)
				}
				infos = append(infos, mi)
			}
			out := cmd.OutOrStdout()
			if g.json {
				if err := printJSON(out, infos); err != nil {
					return err
				}
			} else if len(infos) > 0 {
				tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NAME\tKIND\tNODES\tVIPS")
				for _, mi := range infos {
					nodes := slices.Clone(mi.Nodes)
					for i, n := range nodes {
						if n == mi.DefaultPrimary {
							nodes[i] += "*"
						}
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", mi.Name, mi.Kind, strings.Join(nodes, ","), dash(strings.Join(mi.VIPs, ",")))
				}
				tw.Flush()
			} else if lerr == nil {
				fmt.Fprintf(out, "no module of node %s in %s\n", node, c.Resolved(node).ModulesDir)
			}
			if lerr != nil {
				return configError(cmd.ErrOrStderr(), lerr)
			}
			return nil
		}),
	}
}

// configError prints every problem of a config error on its own line and
// returns the exit error to use.
func configError(w io.Writer, err error) error {
	errs := config.Errors(err)
	if len(errs) == 0 {
		return err
	}
	for _, e := range errs {
		fmt.Fprintln(w, e)
	}
	if len(errs) == 1 {
		return exitWith(exitFailed)
	}
	return &exitError{code: exitFailed, err: fmt.Errorf("%d problems found", len(errs))}
}

func moduleCheckCmd(f *moduleFlags) *cobra.Command {
	return &cobra.Command{
		Use:   "check [NAME|DIR...]",
		Short: "Validate the cluster file and modules without an agent",
		Long: `Validate the cluster file and modules without an agent. With no argument,
every module in every node's modules directory is checked, together with
what involves several modules (a virtual IP used twice, copies of a module
that differ between directories, the per-node module limit). With
arguments, each NAME (a module of this node's modules directory) or DIR (a
path containing a "/") is checked on its own. Prints "ok: N modules", or
every problem as FILE:LINE: FIELD: message and exits 1.`,
		Example: `  tandem module check
  tandem module check web
  tandem module check ./modules/web --config ./cluster.yaml`,
		RunE: action(func(cmd *cobra.Command, args []string) error {
			c, node, _, err := f.loadCluster()
			if err != nil {
				return configError(cmd.ErrOrStderr(), err)
			}
			n := 0
			if len(args) == 0 {
				if err := config.CheckAll(c); err != nil {
					return configError(cmd.ErrOrStderr(), err)
				}
				names := map[string]bool{}
				for _, nd := range c.Nodes {
					mods, _ := config.LoadModules(c, nd.Name)
					for _, m := range mods {
						names[m.Name] = true
					}
				}
				n = len(names)
			} else {
				var all []error
				for _, a := range args {
					dir := a
					if !strings.ContainsRune(a, '/') && a != "." && a != ".." {
						dir = filepath.Join(c.Resolved(node).ModulesDir, a)
					}
					if _, err := config.LoadModule(dir, c); err != nil {
						all = append(all, err)
					}
				}
				if len(all) > 0 {
					return configError(cmd.ErrOrStderr(), errors.Join(all...))
				}
				n = len(args)
			}
			unit := "modules"
			if n == 1 {
				unit = "module"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "ok: %d %s\n", n, unit)
			return nil
		}),
	}
}
