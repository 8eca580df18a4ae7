package testbed

import (
	"bufio"
	"errors"
	"fmt"
	"github.com/tandem-ha/tandem/internal/mountinfo"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"
)

// youngBed is how long a run directory without a readable owner file is
// presumed to be a bed still being created.
const youngBed = time.Minute

// CleanupStale removes beds whose creating process is gone (killed test
// binaries, crashed demos): it kills processes left in their namespaces,
// unmounts, deletes their namespaces (named "tbXXXXX-...") and their
// directories. Beds of live processes are left alone.
func CleanupStale() error {
	stale := map[string]bool{}
	ents, err := os.ReadDir(RunRoot)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("testbed: list %s: %w", RunRoot, err)
	}
	live := map[string]bool{}
	for _, e := range ents {
		if !e.IsDir() || !idRE.MatchString(e.Name()) {
			continue
		}
		dir := filepath.Join(RunRoot, e.Name())
		alive, known := ownerAlive(dir)
		if !known {
			if fi, err := os.Stat(dir); err == nil && time.Since(fi.ModTime()) < youngBed {
				alive = true
			}
		}
		if alive {
			live[e.Name()] = true
		} else {
			stale[e.Name()] = true
		}
	}
	// Namespaces whose bed has no run directory at all are stale too: a bed
	// creates its run directory before any namespace.
	nsEnts, err := os.ReadDir("/run/netns")
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("testbed: list /run/netns: %w", err)
	}
	for _, e := range nsEnts {
		m := nsRE.FindStringSubmatch(e.Name())
		if m != nil && !live[m[1]] {
			stale[m[1]] = true
		}
	}
	var errs []error
	ids := make([]string, 0, len(stale))
	for id := range stale {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		slog.Info("testbed: removing stale bed", "bed", id)
		if err := cleanupID(id); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func cleanupID(id string) error {
	var errs []error
	runDir := filepath.Join(RunRoot, id)
	mntDir := filepath.Join(runDir, "mnt")

	var netNS []string
	if ents, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range ents {
			if strings.HasPrefix(e.Name(), id+"-") {
				netNS = append(netNS, e.Name())
			}
		}
	}
	var inodes []uint64
	for _, n := range netNS {
		inodes = append(inodes, nsInode("/run/netns/"+n))
	}
	if ents, err := os.ReadDir(mntDir); err == nil {
		for _, e := range ents {
			inodes = append(inodes, nsInode(filepath.Join(mntDir, e.Name())))
		}
	}
	if err := killInNamespaces(inodes, 5*time.Second); err != nil {
		errs = append(errs, fmt.Errorf("testbed %s: %w", id, err))
	}

	mounts, err := mountsUnder(runDir)
	if err != nil {
		errs = append(errs, fmt.Errorf("testbed %s: %w", id, err))
	}
	for _, m := range mounts {
		if err := unmount(m); err != nil {
			errs = append(errs, fmt.Errorf("testbed %s: %w", id, err))
		}
	}
	for _, n := range netNS {
		if err := deleteNetNS(n); err != nil {
			errs = append(errs, fmt.Errorf("testbed %s: %w", id, err))
		}
	}
	if data, err := os.ReadFile(filepath.Join(runDir, "dir")); err == nil && os.Getenv(KeepEnv) != "1" {
		dir := strings.TrimSpace(string(data))
		if filepath.IsAbs(dir) && filepath.Base(dir) == "tandem-testbed-"+id {
			if err := os.RemoveAll(dir); err != nil {
				errs = append(errs, fmt.Errorf("testbed %s: remove %s: %w", id, dir, err))
			}
		}
	}
	if err := os.RemoveAll(runDir); err != nil {
		errs = append(errs, fmt.Errorf("testbed %s: remove %s: %w", id, runDir, err))
	}
	return errors.Join(errs...)
}

// mountsUnder lists this mount namespace's mount points at or below dir,
// deepest first.
func mountsUnder(dir string) ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := mountinfo.Unescape(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read mount table: %w", err)
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out, nil
}
