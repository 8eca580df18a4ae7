package agent

import (
	"path/filepath"
	"strconv"

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
		c, err := sumcache.Load(x.sumsPath(d), rootFd, sumcache.DefaultMax)
		if err != nil {
			x.r.a.log.Info("resync hashes not reused", "module", x.r.cfg.Name, "dir", d.path, "err", err)
		}
		d.sumsCache = c
	}
	return d.sumsCache
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
				err = c.Save(r.repl.sumsPath(d), fd)
				unix.Close(fd)
			}
			if err != nil {
				a.log.Warn("could not save the resync hashes", "module", r.cfg.Name, "dir", d.path, "err", err)
			}
		}
	}
}
