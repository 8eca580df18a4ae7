package config

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestNewModuleFromTemplate(t *testing.T) {
	if !slices.Contains(Templates(), "mirror") {
		t.Fatalf("Templates() = %v", Templates())
	}
	e := newEnv(t)
	dir := filepath.Join(e.mods, "web")
	if err := NewModuleFromTemplate("mirror", dir); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"start_prim", "stop_prim", "start_second", "stop_second"} {
		st, err := os.Stat(filepath.Join(dir, "bin", s))
		if err != nil {
			t.Fatal(err)
		}
		if st.Mode().Perm() != 0o755 {
			t.Errorf("%s mode %v, want 0755", s, st.Mode().Perm())
		}
	}
	st, err := os.Stat(filepath.Join(dir, ModuleFile))
	if err != nil || st.Mode().Perm() != 0o644 {
		t.Errorf("module.yaml: %v %v", st, err)
	}
	m, err := LoadModule(dir, e.c)
	if err != nil {
		t.Fatalf("template module does not validate: %v", err)
	}
	if m.Kind != "mirror" || !slices.Equal(m.Nodes, []string{"alpha", "beta"}) {
		t.Errorf("module = %+v", m)
	}
	if mods, err := LoadModules(e.c, "beta"); err != nil || len(mods) != 1 {
		t.Errorf("LoadModules: %v %v", mods, err)
	}
	if err := CheckAll(e.c); err != nil {
		t.Errorf("CheckAll: %v", err)
	}

	// Refuse to overwrite.
	if err := NewModuleFromTemplate("mirror", dir); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Errorf("second create: %v", err)
	}
	// An existing empty directory is fine.
	empty := filepath.Join(e.mods, "db")
	if err := os.Mkdir(empty, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := NewModuleFromTemplate("mirror", empty); err != nil {
		t.Errorf("empty dir: %v", err)
	}
	if err := NewModuleFromTemplate("nosuch", filepath.Join(e.mods, "x")); err == nil || !strings.Contains(err.Error(), "available: farm, mirror, nginx") {
		t.Errorf("unknown template: %v", err)
	}
	if err := NewModuleFromTemplate("../modules", filepath.Join(e.mods, "y")); err == nil {
		t.Error("template path accepted")
	}
	if err := NewModuleFromTemplate("mirror", filepath.Join(e.mods, "Bad.Name")); err == nil {
		t.Error("bad module name accepted")
	}
}

func TestNewModuleFromTemplateNodes(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "cluster.yaml")
	writeFile(t, file, strings.NewReplacer("alpha", "db1", "beta", "db2").Replace(baseCluster)+"modules_dir: m\n", 0o644)
	c, err := LoadCluster(file)
	if err != nil {
		t.Fatal(err)
	}
	mdir := filepath.Join(c.ModulesDir, "pg")
	if err := NewModuleFromTemplate("mirror", mdir, "db1", "db2"); err != nil {
		t.Fatal(err)
	}
	m, err := LoadModule(mdir, c)
	if err != nil {
		t.Fatalf("module does not validate: %v", err)
	}
	if !slices.Equal(m.Nodes, []string{"db1", "db2"}) {
		t.Errorf("nodes = %v", m.Nodes)
	}
	if err := NewModuleFromTemplate("mirror", filepath.Join(c.ModulesDir, "x"), "db1"); err == nil {
		t.Error("one node accepted")
	}
	if err := NewModuleFromTemplate("mirror", filepath.Join(c.ModulesDir, "x"), "db1", "a]\nkind: x"); err == nil {
		t.Error("bad node name accepted")
	}
}

// The template scripts must at least be valid shell.
func TestTemplateScriptsParse(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "web")
	if err := NewModuleFromTemplate("mirror", dir); err != nil {
		t.Fatal(err)
	}
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh")
	}
	for _, s := range []string{"start_prim", "stop_prim", "start_second", "stop_second"} {
		if out, err := exec.Command(sh, "-n", filepath.Join(dir, "bin", s)).CombinedOutput(); err != nil {
			t.Errorf("%s: %v\n%s", s, err, out)
		}
	}
}

// The example start_prim/stop_prim really start and stop a daemon.
func TestTemplateScriptsRun(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the scripts (about 1s)")
	}
	if _, err := exec.LookPath("sleep"); err != nil {
		t.Skip("no sleep")
	}
	dir := filepath.Join(t.TempDir(), "web")
	if err := NewModuleFromTemplate("mirror", dir); err != nil {
		t.Fatal(err)
	}
	start := filepath.Join(dir, "bin", "start_prim")
	src, err := os.ReadFile(start)
	if err != nil {
		t.Fatal(err)
	}
	edited := strings.Replace(string(src), "\nAPP=\"\"\n", "\nAPP=\"sleep 60\"\n", 1)
	if edited == string(src) {
		t.Fatal("template start_prim has no APP=\"\" line")
	}
	writeFile(t, start, edited, 0o755)
	state := t.TempDir()
	env := append(os.Environ(), "TANDEM_MODULE=web", "TANDEM_NODE=alpha", "TANDEM_PEER=beta",
		"TANDEM_MODULE_DIR="+dir, "TANDEM_VIPS=192.0.2.100/24", "TANDEM_STATE_DIR="+state,
		"PIDFILE="+filepath.Join(state, "web.pid"))
	run := func(script string, args ...string) string {
		t.Helper()
		cmd := exec.Command(filepath.Join(dir, "bin", script), args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %v: %v\n%s", script, args, err, out)
		}
		return string(out)
	}
	pidfile := filepath.Join(state, "web.pid")
	t.Cleanup(func() {
		// Never leave the daemon behind, even when the test fails.
		if b, err := os.ReadFile(pidfile); err == nil {
			_ = exec.Command("kill", "-KILL", strings.TrimSpace(string(b))).Run()
		}
	})
	if out := run("start_prim", "WAIT", "PRIM", "start"); !strings.Contains(out, "started, pid") {
		t.Fatalf("start_prim output:\n%s", out)
	}
	if out := run("start_prim", "WAIT", "PRIM", "start"); !strings.Contains(out, "already running") {
		t.Errorf("second start_prim output:\n%s", out)
	}
	if out := run("stop_prim", "PRIM", "STOP", "stop"); !strings.Contains(out, "stopped pid") {
		t.Errorf("stop_prim output:\n%s", out)
	}
	if _, err := os.Stat(pidfile); err == nil {
		t.Error("pid file left behind")
	}
	if out := run("stop_prim", "PRIM", "STOP", "force"); !strings.Contains(out, "not running") {
		t.Errorf("stop_prim when stopped:\n%s", out)
	}
	run("start_second", "WAIT", "SECOND", "start")
	run("stop_second", "SECOND", "STOP", "stop")
}
