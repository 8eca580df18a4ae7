package agent

import (
	"os"
	"path/filepath"
	"strconv"
	"time"

	"github.com/tandem-ha/tandem/internal/replica/sumcache"
	"golang.org/x/sys/unix"
)

// sumsPath is where a replicated directory's remembered hashes are saved
// when the agent stops.
func (x *replica) sumsPath(d *replDir) string {
	return filepath.Join(modDir(x.r.a.settings.StateDir, x.r.cfg.Name), "hashes-"+strconv.Itoa(d.idx))
}

// sums is the cache of hashes of the directory's unchanged files, shared
// by the compares this node runs as primary and the answers it gives as
// secondary (the same tree either way). Nil until loadSums, or when the
// module turns it off (replication.resync_hash_cache: false).
func (x *replica) sums(d *replDir) *sumcache.Cache {
	if !x.r.cfg.Replication.ResyncHashCache {
		return nil
	}
	d.sumsMu.Lock()
	defer d.sumsMu.Unlock()
	return d.sumsCache
}

// loadSums makes d's cache on first use, from what the agent saved when it
// last stopped if this boot and this mount of the filesystem saved it.
// rootFd is the directory itself, under any FUSE mount or read-only bind
// of ours.
func (x *replica) loadSums(d *replDir, rootFd int) *sumcache.Cache {
	if !x.r.cfg.Replication.ResyncHashCache {
		return nil
	}
	d.sumsMu.Lock()
	defer d.sumsMu.Unlock()
	if d.sumsCache == nil {
		removeStaleSaves(filepath.Dir(x.sumsPath(d)))
		c, err := sumcache.Load(x.sumsPath(d), rootFd, sumcache.DefaultMax)
		if err != nil {
			x.r.a.log.Info("resync hashes not reused", "module", x.r.cfg.Name, "dir", d.path, "err", err)
		}
		d.sumsCache = c
	}
	return d.sumsCache
}

// saveSumsAfterResync saves d's remembered hashes in the background when
// a resynchronisation changed them since the last save, so that an agent
// killed later (kill -9, a crash) starts again with them; the clean stop
// saves them too. rootFd is the directory itself (duplicated here: the
// save may outlive the caller's descriptor). A save taken then stays
// valid: an entry counts only while its file's ctime is unchanged.
func (x *replica) saveSumsAfterResync(d *replDir, rootFd int) {
	c := x.sums(d)
	if c == nil {
		return
	}
	// A lookup that missed recorded a new entry, a reset dropped them all:
	// unchanged since the last save (still there) means nothing to save.
	st := c.Stats()
	version := st.Misses + st.Resets
	if _, err := os.Stat(x.sumsPath(d)); st.Entries == 0 || version == d.sumsSaved.Load() && err == nil {
		return
	}
	dup, err := unix.FcntlInt(uintptr(rootFd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return
	}
	go func() {
		defer unix.Close(dup)
		d.sumsSave.Lock()
		defer d.sumsSave.Unlock()
		if err := c.Save(x.sumsPath(d), dup); err != nil {
			x.r.a.log.Warn("could not save the resync hashes", "module", x.r.cfg.Name, "dir", d.path, "err", err)
			return
		}
		d.sumsSaved.Store(version)
	}()
}

// removeStaleSaves removes the temporary files of saves that an agent
// killed meanwhile left in dir (sumcache.Save writes ".sums-*", then
// renames it): those older than a minute, so that a save under way is
// left alone.
func removeStaleSaves(dir string) {
	names, _ := filepath.Glob(filepath.Join(dir, ".sums-*"))
	for _, n := range names {
		if fi, err := os.Lstat(n); err == nil && time.Since(fi.ModTime()) > time.Minute {
			os.Remove(n)
		}
	}
}

// saveSums saves every directory's remembered hashes (the agent stops):
// an agent started again in the same boot skips rereading unchanged files.
func (a *Agent) saveSums() {
	for _, r := range a.mods {
		for _, d := range r.repl.dirs {
			c := r.repl.sums(d)
			if c == nil || c.Stats().Entries == 0 {
				continue
			}
			// The module stopped: d.path is the directory itself again.
			fd, err := unix.Open(d.path, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
			if err == nil {
				d.sumsSave.Lock() // after a save a resync started
				err = c.Save(r.repl.sumsPath(d), fd)
				d.sumsSave.Unlock()
				unix.Close(fd)
			}
			if err != nil {
				a.log.Warn("could not save the resync hashes", "module", r.cfg.Name, "dir", d.path, "err", err)
			}
		}
	}
}
