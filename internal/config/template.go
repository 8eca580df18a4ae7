package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/tandem-ha/tandem/modules"
)

// Templates lists the built-in module templates.
func Templates() []string {
	entries, _ := fs.ReadDir(modules.FS, ".")
	var names []string
	for _, e := range entries {
		if e.IsDir() {
			names = append(names, e.Name())
		}
	}
	return names
}

var nodesLineRe = regexp.MustCompile(`(?m)^nodes:.*$`)

// NewModuleFromTemplate creates module directory dir from a built-in
// template. dir must not exist or be empty. Files under bin/ are made
// executable. If two node names are given they replace the template's
// "nodes:" line, so the new module is valid for that cluster right away.
func NewModuleFromTemplate(template, dir string, nodes ...string) error {
	farm := TemplateKind(template) == KindFarm
	if len(nodes) != 0 && !farm && len(nodes) != 2 {
		return fmt.Errorf("new module %s: a mirror module needs exactly 2 nodes, got %d", dir, len(nodes))
	}
	if len(nodes) != 0 && farm && (len(nodes) < MinFarmNodes || len(nodes) > MaxFarmNodes) {
		return fmt.Errorf("new module %s: a farm module needs %d to %d nodes, got %d", dir, MinFarmNodes, MaxFarmNodes, len(nodes))
	}
	for _, n := range nodes {
		if !nodeNameRe.MatchString(n) {
			return fmt.Errorf("new module %s: invalid node name %q", dir, n)
		}
	}
	sub, err := fs.Sub(modules.FS, template)
	if err != nil || template == "" || strings.ContainsAny(template, "/.") {
		return fmt.Errorf("new module %s: unknown template %q (available: %s)", dir, template, strings.Join(Templates(), ", "))
	}
	if _, err := fs.Stat(sub, ModuleFile); err != nil {
		return fmt.Errorf("new module %s: unknown template %q (available: %s)", dir, template, strings.Join(Templates(), ", "))
	}
	name := filepath.Base(filepath.Clean(dir))
	if !moduleNameRe.MatchString(name) || len(name) > maxModuleNameLen {
		return fmt.Errorf("new module %s: invalid module name %q: use a-z, 0-9, '_' and '-' (at most %d)", dir, name, maxModuleNameLen)
	}
	if entries, err := os.ReadDir(dir); err == nil && len(entries) > 0 {
		return fmt.Errorf("new module %s: directory exists and is not empty; choose another name or remove it", dir)
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("new module %s: %w", dir, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("new module %s: %w", dir, err)
	}
	return fs.WalkDir(sub, ".", func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		target := filepath.Join(dir, filepath.FromSlash(p))
		if e.IsDir() {
			if err := os.MkdirAll(target, 0o755); err != nil {
				return fmt.Errorf("new module %s: %w", dir, err)
			}
			return nil
		}
		mode := os.FileMode(0o644)
		if path.Dir(p) == "bin" {
			mode = 0o755
		}
		data, err := fs.ReadFile(sub, p)
		if err != nil {
			return fmt.Errorf("new module %s: template %s: %w", dir, p, err)
		}
		if p == ModuleFile && len(nodes) >= 2 {
			data = nodesLineRe.ReplaceAll(data, nodesLine(nodes))
		}
		return writeNew(target, data, mode)
	})
}

func writeNew(target string, data []byte, mode os.FileMode) error {
	f, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return fmt.Errorf("new module: %w", err)
	}
	_, werr := f.Write(data)
	cerr := f.Close()
	if werr == nil {
		werr = cerr
	}
	if werr == nil {
		// The umask may have cleared bits we need (exec on scripts).
		werr = os.Chmod(target, mode)
	}
	if werr != nil {
		return fmt.Errorf("new module: write %s: %w", target, werr)
	}
	return nil
}
