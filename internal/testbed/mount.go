package testbed

import (
	"fmt"
	"github.com/tandem-ha/tandem/internal/mountinfo"
	"path/filepath"
	"strings"
)

// Mounts inside a host live in the host's private mount namespace: nothing
// propagates to other hosts or to the root namespace, and everything
// mounted there (tmpfs, binds, FUSE) disappears with the namespace when
// Close unbinds it after killing the host's processes. That holds for a
// FUSE mount whose daemon was killed too: the dead daemon's connection is
// aborted (requests fail with ENOTCONN) and its superblock is released once
// the namespace is gone. TestFUSEMountInHost checks this through fusectl.
// Close still detaches the bind mounts itself, first, so that it can remove
// the directories BindMount created.

// bindScript bind-mounts $1 on $2, creating $2 (and missing parents) as a
// directory, or as an empty file when $1 is not a directory. It prints the
// topmost path it created, and removes what it created if the mount fails.
const bindScript = `src=$1 dst=$2 top= d=$2
while [ ! -e "$d" ] && [ ! -L "$d" ]; do top=$d; d=$(dirname "$d"); done
undo() {
	p=$dst
	while [ -n "$top" ]; do
		rm -d "$p" 2>/dev/null
		[ "$p" = "$top" ] && break
		p=$(dirname "$p")
	done
}
if [ ! -e "$src" ]; then echo "source $src does not exist in the host" >&2; exit 1; fi
if [ -d "$src" ]; then
	mkdir -p "$dst" || exit 1
else
	mkdir -p "$(dirname "$dst")" && { [ -e "$dst" ] || : >"$dst"; } || { undo; exit 1; }
fi
mount --bind "$src" "$dst" || { undo; exit 1; }
mount --make-private "$dst" || { umount "$dst"; undo; exit 1; }
printf '%s' "$top"`

// BindMount bind-mounts src on dst inside the host's mount namespace only
// (private propagation), so two hosts can see different contents at the
// same path, e.g. each node's own data directory. Both paths are absolute
// and resolved inside the host. dst is created when missing (a directory,
// or an empty file when src is not a directory), with its parents; Close
// detaches the mount and removes what BindMount created (if empty).
func (h *Host) BindMount(src, dst string) error {
	for _, p := range []string{src, dst} {
		if !filepath.IsAbs(p) || filepath.Clean(p) != p || p == "/" {
			return fmt.Errorf("host %s: bind mount %s on %s: %q is not a clean absolute path below /", h.Name, src, dst, p)
		}
	}
	out, err := h.Run("sh", "-c", bindScript, "sh", src, dst)
	if err != nil {
		return fmt.Errorf("host %s: bind mount %s on %s: %w", h.Name, src, dst, err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.binds = append(h.binds, dst)
	if top := strings.TrimSpace(out); top != "" {
		var made []string // deepest first, the order of removal
		for p := dst; ; p = filepath.Dir(p) {
			made = append(made, p)
			if p == top || p == "/" {
				break
			}
		}
		h.created = append(h.created, made)
	}
	return nil
}

// Unmount unmounts the mount at path inside the host (a tmpfs, a bind, a
// FUSE mount, even one whose daemon died). It fails when the mount is busy;
// FillDisk no longer accepts the path afterwards.
func (h *Host) Unmount(path string) error {
	if !filepath.IsAbs(path) || filepath.Clean(path) != path {
		return fmt.Errorf("host %s: unmount %q: want a clean absolute path", h.Name, path)
	}
	if _, err := h.Run("umount", path); err != nil {
		return fmt.Errorf("host %s: unmount %s (busy? a process of the host may still use it): %w", h.Name, path, err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.tmpfs, path)
	for i := len(h.binds) - 1; i >= 0; i-- {
		if h.binds[i] == path {
			h.binds = append(h.binds[:i], h.binds[i+1:]...)
			break
		}
	}
	return nil
}

// Mounted reports whether path is a mount point in the host's mount
// namespace (read from the host's mountinfo).
func (h *Host) Mounted(path string) (bool, error) {
	mounts, err := h.Mounts()
	if err != nil {
		return false, err
	}
	for _, m := range mounts {
		if m.Point == path {
			return true, nil
		}
	}
	return false, nil
}

// Mount is one line of a host's mount table.
type Mount struct {
	Point  string // mount point
	FSType string // e.g. tmpfs, fuse.NAME
	Source string
	Dev    string // major:minor; for FUSE the minor is the connection number
}

// Mounts lists the host's mount table, in mount order.
func (h *Host) Mounts() ([]Mount, error) {
	out, err := h.Run("cat", "/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	ms := mountinfo.Parse(out)
	mounts := make([]Mount, len(ms))
	for i, m := range ms {
		mounts[i] = Mount{Point: m.Point, FSType: m.FSType, Source: m.Source, Dev: m.Dev}
	}
	return mounts, nil
}

// unmountScript detaches the given mounts lazily, then removes the given
// paths if they are empty directories or files BindMount created; the
// first argument is how many mounts follow.
const unmountScript = `n=$1; shift
i=0
while [ $i -lt $n ]; do umount -l "$1" 2>/dev/null; shift; i=$((i+1)); done
for p in "$@"; do rm -d "$p" 2>/dev/null; done
true`

// releaseMounts detaches BindMount's mounts and removes the paths it
// created, inside the host (paths created there may not exist, or be other
// directories, in the root namespace). Best effort: the mounts go with the
// namespace anyway.
func (h *Host) releaseMounts() {
	h.mu.Lock()
	binds := append([]string(nil), h.binds...)
	created := append([][]string(nil), h.created...)
	h.binds, h.created = nil, nil
	h.mu.Unlock()
	if len(binds) == 0 && len(created) == 0 || h.mntIno == 0 {
		return
	}
	args := []string{"-c", unmountScript, "sh", fmt.Sprint(len(binds))}
	for i := len(binds) - 1; i >= 0; i-- {
		args = append(args, binds[i])
	}
	// Newest first: a later BindMount may have created paths inside an
	// earlier one's.
	for i := len(created) - 1; i >= 0; i-- {
		args = append(args, created[i]...)
	}
	_, _ = h.Run("sh", args...)
}
