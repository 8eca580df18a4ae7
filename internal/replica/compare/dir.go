package compare

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sort"

	"github.com/tandem-ha/tandem/internal/replica/op"
	"github.com/tandem-ha/tandem/internal/replica/sumcache"
	"github.com/zeebo/xxh3"
	"golang.org/x/sys/unix"
)

// pEntry is the primary's side of an entry, read after the answer came.
type pEntry struct {
	name   string
	st     unix.Stat_t
	key    inoKey
	target string
	xdig   uint64
	hashed bool // sum is the hash of its first hashN bytes, all it had (read in a batch)
	sum    uint64
	hashN  int64
	before int64           // sumcache.Now() before its stat
	sums   *sumcache.Cache // the hashes its listing may take or record (nil: none)
}

// smallCandidate: p is a small file whose answer came with a hash (j
// walks sents, sorted by name, as p does): plan compares it; it is read
// in a batch (batchReader), after the answer came, as the package comment
// wants. Those not read so are read one by one.
func smallCandidate(p *pEntry, sents []Entry, j *int, inline int64) bool {
	if p.st.Mode&unix.S_IFMT != unix.S_IFREG || p.st.Nlink > 1 || p.st.Size > inline {
		return false
	}
	for *j < len(sents) && sents[*j].Name < p.name {
		*j++
	}
	return *j < len(sents) && sents[*j].Name == p.name && sents[*j].HasHash && sents[*j].Nlink == 1
}

// fix is what the compare of one entry decided.
type fix struct {
	name     string
	p        *pEntry // nil: absent on the primary
	s        *Entry  // nil: absent on the secondary
	remove   bool    // RemoveTree the secondary's entry first
	create   bool    // create the primary's entry
	link     *linkRec
	meta     bool   // send the attributes that differ
	data     *task  // file task queued once the fixes are sent
	sub      *task  // directory task queued once the fixes are sent
	deferred bool   // compared again after the walk (a further name of an inode not sent yet)
	lateMeta bool   // attributes compared again once all names are linked
	findIno  uint64 // the secondary's other names of this inode are compared again
	scoped   bool   // its scope entry (recorded zones) is taken once the fixes are sent
	covered  bool   // a scope file whose task was queued already
	rec      *linkRec
}

func (f *fix) ops() bool { return f.remove || f.create || f.link != nil || f.meta }

// linkRec follows one inode of the primary with several names.
type linkRec struct {
	first string // the name sent first; the others become links to it
	sIno  uint64 // the secondary's inode at first (0: created by the engine)
	gen   uint64 // namespace generation once first was sent
	ready bool
	nlink uint64
	seen  map[string]bool
	scan  bool // searched for in the tree (incremental)
	reg   bool // a regular file
	// planner is the task that planned first last (ready once sent).
	planner uint64
	key     inoKey
	// started: the inode's data (attributes) compare began; a name linked
	// after that queues it again (a live change through a name not yet
	// linked missed the secondary's inode).
	started bool
	// linkedAt: names the engine linked to first, with the namespace
	// generation just after the link and the first (and its gen) linked
	// to. While sIno is unknown (0: first created by the engine), such a
	// name, untouched since, names first's secondary inode: its listing
	// teaches sIno instead of asking for the same link again (and, the
	// replaced inode having other names, a search for them that finds
	// this name and lists it again, forever).
	linkedAt map[string]linkMark
}

// linkMark is one name the engine linked to a first name.
type linkMark struct {
	gen      uint64 // namespace generation after the link
	first    string
	firstGen uint64
}

type pageResult struct {
	vanished, stale, changed, more bool
	last                           string
	self                           *Entry
}

func vanished(err error) bool {
	return err == unix.ENOENT || err == unix.ENOTDIR || err == unix.ELOOP
}

// dirTask compares directory t.path (or its entry t.only) page by page,
// then the directory's own attributes.
func (r *run) dirTask(t *task) error {
	unlock := r.lockDir(t.path)
	defer unlock()
	if t.only == "" {
		r.st.dirs.Add(1)
	}
	after := ""
	changed := false
	var self *Entry
	first := true
	for retries := 0; ; {
		var res pageResult
		var err error
		if retries >= maxRetries {
			// The namespace keeps changing under this directory: compare
			// one small page with mutations frozen across the round trip.
			r.st.locked.Add(1)
			r.frozen(func() { res, err = r.page(t, after, true) })
		} else {
			res, err = r.page(t, after, false)
		}
		if err != nil {
			return err
		}
		if res.vanished {
			return nil
		}
		if res.stale {
			retries++
			r.st.retries.Add(1)
			continue
		}
		retries = 0
		changed = changed || res.changed
		if first {
			self, first = res.self, false
		}
		if !res.more {
			break
		}
		after = res.last
	}
	return r.dirMeta(t, self, changed)
}

// page compares the entries after name after (one answer's worth).
func (r *run) page(t *task, after string, locked bool) (res pageResult, err error) {
	d, err := openNoatime(r.root, t.path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW)
	if vanished(err) {
		// Gone on the primary: its parent's compare or the live ops
		// take care of what replaced it.
		res.vanished = true
		return res, nil
	}
	if err != nil {
		return res, fmt.Errorf("compare: open directory %s on the primary: %w", show(t.path), err)
	}
	// The *os.File owns d (its finalizer would close it otherwise).
	df := os.NewFile(uintptr(d), t.path)
	defer df.Close()
	g0 := r.e.ns.now()
	var ans *ListAnswer
	if t.fresh && !r.e.ns.touchedDir(t.freshGen, t.id, t.path) {
		ans = &ListAnswer{Status: statusOK} // created empty by us, unchanged since
		g0 = t.freshGen
	} else {
		pm := maxPageEntries
		if locked {
			pm = lockedPage
		}
		b, err := r.query(r.ctx, ListDirQuery(t.path, ListParams{InlineMax: r.inline(), PageMax: pm, After: after, Only: t.only}))
		if err != nil {
			return res, err
		}
		if ans, err = ParseListAnswer(b); err != nil {
			return res, fmt.Errorf("compare: list %s: %w", show(t.path), err)
		}
		if ans.Status == statusOK {
			res.self = &ans.Self
		}
	}
	if ans.Status != statusOK {
		if t.path == "" {
			return res, fmt.Errorf("compare: the secondary cannot list its replicated directory (status %d)", ans.Status)
		}
		// Missing or not a directory there: its entry is compared in the
		// parent, which creates it and compares it whole.
		r.recheck(t.path)
		res.vanished = true
		return res, nil
	}
	var names []string
	if t.only != "" {
		names = []string{t.only}
	} else {
		names, err = df.Readdirnames(-1)
		if errors.Is(err, unix.ENOENT) {
			res.vanished = true // removed since it was opened
			return res, nil
		}
		if err != nil {
			return res, fmt.Errorf("compare: read directory %s on the primary: %w", show(t.path), err)
		}
		sort.Strings(names)
		names = names[sort.SearchStrings(names, after):]
		if len(names) > 0 && names[0] == after {
			names = names[1:]
		}
		if ans.More && len(ans.Entries) > 0 {
			last := ans.Entries[len(ans.Entries)-1].Name
			names = names[:sort.Search(len(names), func(i int) bool { return names[i] > last })]
		}
	}
	pents := make([]*pEntry, 0, len(names))
	// Small files are read in batches while the next ones are stat'ed.
	var br batchReader
	reading, inline, j := uringOn(), r.inline(), 0
	sums := r.e.opt.Sums.For(d) // nil on a filesystem whose ctimes cannot be trusted
	before := sumcache.Now()
	for _, n := range names {
		p := &pEntry{name: n, before: before, sums: sums}
		ok, err := r.statP(d, p, inline)
		if err != nil {
			br.wait()
			return res, fmt.Errorf("compare: %s on the primary: %w", show(join(t.path, n)), err)
		}
		if !ok {
			continue
		}
		pents = append(pents, p)
		if p.hashed {
			continue // remembered
		}
		if reading && smallCandidate(p, ans.Entries, &j, inline) {
			br.add(smallFile{dfd: d, name: p.name, ino: p.st.Ino, size: p.st.Size, tag: len(pents) - 1, stamp: sumcache.StampOf(&p.st)})
		}
	}
	for _, batch := range br.wait() {
		for _, f := range batch {
			if f.ok {
				p := pents[f.tag]
				p.hashed, p.sum, p.hashN = true, f.sum, f.size
				sums.PutSum(f.stamp, before, f.sum)
			}
		}
	}
	var lFiles, lBytes int64
	if t.only == "" {
		lFiles, lBytes = listedBytes(t, pents)
		r.addListed(lFiles, lBytes)
	}
	fixes, err := r.plan(t, d, ans.Entries, pents, g0)
	if err != nil {
		return res, err
	}
	stale, changed, err := r.execute(t, d, g0, fixes, locked)
	if err != nil || stale {
		r.addListed(-lFiles, -lBytes) // listed again
		res.stale = stale
		return res, err
	}
	res.changed = changed
	res.more = ans.More
	if len(ans.Entries) > 0 {
		res.last = ans.Entries[len(ans.Entries)-1].Name
	}
	return res, nil
}

func show(p string) string {
	if p == "" {
		return `"." (the replicated directory)`
	}
	return fmt.Sprintf("%q", p)
}

// statP reads the primary's entry p.name in d; false if it vanished.
// A small regular file (up to inline bytes) whose hash is remembered is
// marked hashed.
func (r *run) statP(d int, p *pEntry, inline int64) (bool, error) {
	if err := unix.Fstatat(d, p.name, &p.st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		if err == unix.ENOENT {
			return false, nil
		}
		return false, fmt.Errorf("stat: %w", err)
	}
	p.key = inoKey{p.st.Dev, p.st.Ino}
	if p.st.Mode&unix.S_IFMT == unix.S_IFLNK {
		t, err := readTarget(d, p.name)
		if err == unix.ENOENT || err == unix.EINVAL {
			return false, nil // gone, or no longer a symlink since the stat
		}
		if err != nil {
			return false, err
		}
		p.target = t
	}
	stamp := sumcache.StampOf(&p.st)
	k := p.sums.Get(stamp, p.st.Mode&unix.S_IFMT == unix.S_IFREG && p.st.Size <= inline)
	if k.HasSum {
		p.hashed, p.sum, p.hashN = true, k.Sum, p.st.Size
	}
	if k.HasXattrs {
		p.xdig = k.Xattrs
		return true, nil
	}
	dig, err := xattrDigest(d, p.name)
	if err == unix.ENOENT {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("read attributes: %w", err)
	}
	p.xdig = dig
	p.sums.PutXattrs(stamp, p.before, dig)
	return true, nil
}

func mtimeOf(st *unix.Stat_t) op.Time { return op.Time{Sec: st.Mtim.Sec, Nsec: st.Mtim.Nsec} }

// metaDiffers compares the attributes the replication keeps equal.
func metaDiffers(p *pEntry, s *Entry) bool {
	if p.st.Mode&unix.S_IFMT != unix.S_IFLNK && p.st.Mode&0o7777 != s.Mode&0o7777 {
		return true
	}
	return p.st.Uid != s.Uid || p.st.Gid != s.Gid || p.xdig != s.Xattrs || mtimeOf(&p.st) != s.Mtime
}

// sameNode: same type, and same symlink target or device number.
func sameNode(p *pEntry, s *Entry) bool {
	t := p.st.Mode & unix.S_IFMT
	if t != s.typ() {
		return false
	}
	switch t {
	case unix.S_IFLNK:
		return p.target == s.Target
	case unix.S_IFCHR, unix.S_IFBLK:
		return p.st.Rdev == s.Rdev
	}
	return true
}

// plan decides each entry's fixes, outside any freeze: the answer came
// before the primary was read, so an entry equal here is equal at the
// moment the fixes are sent (see the package comment).
func (r *run) plan(t *task, d int, sents []Entry, pents []*pEntry, g0 uint64) ([]*fix, error) {
	var fixes []*fix
	i, j := 0, 0
	for i < len(sents) || j < len(pents) {
		f := &fix{}
		switch {
		case j >= len(pents) || i < len(sents) && sents[i].Name < pents[j].name:
			f.name, f.s = sents[i].Name, &sents[i]
			i++
		case i >= len(sents) || pents[j].name < sents[i].Name:
			f.name, f.p = pents[j].name, pents[j]
			j++
		default:
			f.name, f.s, f.p = sents[i].Name, &sents[i], pents[j]
			i++
			j++
		}
		if t.only != "" && f.name != t.only {
			continue
		}
		path := join(t.path, f.name)
		switch {
		case f.p == nil:
			f.remove = true
		case f.s == nil:
			r.planNew(t, f, path)
		case !sameNode(f.p, f.s) || r.mustRecreate(path, f.p.key):
			f.remove = true
			r.planNew(t, f, path)
		default:
			if err := r.planExisting(t, d, f, path, g0); err != nil {
				return nil, err
			}
		}
		if r.e.log.Enabled(r.ctx, slog.LevelDebug) {
			var pn, pi, sn, si uint64
			if f.p != nil {
				pn, pi = f.p.st.Nlink, f.p.st.Ino
			}
			if f.s != nil {
				sn, si = f.s.Nlink, f.s.Ino
			}
			r.e.log.Debug("resync compare: plan", "path", path, "p", f.p != nil, "s", f.s != nil, "remove", f.remove, "create", f.create,
				"link", f.link != nil, "meta", f.meta, "data", f.data != nil, "defer", f.deferred, "rec", f.rec != nil, "late", t.late,
				"pnlink", pn, "pino", pi, "snlink", sn, "sino", si, "task", t.id)
		}
		fixes = append(fixes, f)
	}
	return fixes, nil
}

// mustRecreate: a file compare found the secondary's inode shared with
// names ours lacks.
func (r *run) mustRecreate(path string, key inoKey) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	k, ok := r.recreate[path]
	if ok {
		delete(r.recreate, path)
	}
	return ok && k == key
}

// planNew: the primary's entry is to be created on the secondary.
func (r *run) planNew(t *task, f *fix, path string) {
	if f.p.st.Mode&unix.S_IFMT != unix.S_IFDIR && f.p.st.Nlink > 1 {
		switch v, rec := r.linkVerdict(t, path, f.p, nil, 0); v {
		case vRelink:
			f.link = rec
			return
		case vDefer:
			f.remove, f.deferred = false, true
			return
		default:
			f.rec = rec
		}
	}
	f.create = true
}

// inScopeDirs: the scope lists directory path (its entries were recorded).
func (r *run) inScopeDirs(path string) bool {
	_, ok := slices.BinarySearch(r.scopeDirs, path)
	return ok
}

// planExisting: same kind of entry on both sides.
func (r *run) planExisting(t *task, d int, f *fix, path string, g0 uint64) error {
	p, s := f.p, f.s
	typ := p.st.Mode & unix.S_IFMT
	if typ == unix.S_IFDIR {
		f.meta = metaDiffers(p, s)
		full := fullAt(t, path)
		switch {
		case full && !r.isFreshDir(path):
			f.sub = &task{dir: true, path: path, recurse: true, from: t.from}
		case !full && (mtimeOf(&p.st) != s.Mtime || p.st.Nlink != s.Nlink) && !r.inScopeDirs(path):
			// Not recorded, yet its times or subdirectory count differ:
			// replaced (or renamed over) while the copies were apart.
			// Its listing is compared too. (A recorded directory differs
			// by what its records say, and the scope lists it anyway.)
			f.sub = &task{dir: true, path: path}
		}
		return nil
	}
	if p.st.Nlink > 1 || s.Nlink > 1 {
		v, rec := r.linkVerdict(t, path, p, s, g0)
		switch v {
		case vSame:
			return nil // another name of an inode compared through its first name
		case vRelink:
			f.remove, f.link = true, rec
			return nil
		case vDefer:
			f.deferred = true
			return nil
		case vRecreate:
			f.remove, f.create, f.rec = true, true, rec
			return nil
		}
		f.rec = rec
		if rec != nil {
			// The first name of a hard-linked inode: compared once every
			// name is linked there (see queueChildren).
			if typ == unix.S_IFREG {
				f.scoped = true
				f.data = &task{path: path, how: howWhole, pKey: p.key, rec: rec}
				return nil
			}
			f.meta = metaDiffers(p, s)
			f.lateMeta = !t.metaPass
			if t.metaPass {
				r.lmu.Lock()
				rec.started = true
				r.lmu.Unlock()
			}
			return nil
		}
	}
	if typ != unix.S_IFREG {
		f.meta = metaDiffers(p, s)
		return nil
	}
	how, ok, err := r.dataNeeded(t, d, f, path)
	if err != nil {
		return err
	}
	if !ok {
		// A scope file whose task is queued or done already: that task
		// sends its attributes after its data.
		f.meta = !f.covered && metaDiffers(p, s)
		return nil
	}
	f.data = &task{path: path, how: how, pKey: p.key, s: s, since: g0, rec: f.rec}
	if how == howZones {
		sf := r.peekScopeFile(path, p.key)
		f.data.zones, f.data.probe = sf.zones, sf.probe
	}
	return nil
}

// dataNeeded decides how an existing regular file's data is compared;
// false when it is known equal.
func (r *run) dataNeeded(t *task, d int, f *fix, path string) (fileHow, bool, error) {
	p, s := f.p, f.s
	if s.HasHash && p.st.Size <= r.inline() {
		// Small file: the answer carries its hash; read ours (perhaps
		// read already in a batch).
		sum, n, err := p.sum, p.hashN, error(nil)
		if !p.hashed {
			sum, n, err = r.hashSmall(d, p)
		}
		if err != nil {
			return 0, false, fmt.Errorf("compare: read %s on the primary: %w", show(path), err)
		}
		r.st.examined.Add(n)
		r.e.prog.examined.Add(n)
		f.scoped = true
		if n == s.Size && sum == s.Hash {
			return 0, false, nil
		}
		return howOverwrite, true, nil
	}
	if fullAt(t, path) {
		f.scoped = true
		return howWhole, true, nil
	}
	if sf := r.peekScopeFile(path, p.key); sf.path != "" {
		f.scoped = true
		return sf.how, true, nil
	}
	if r.scopeTaken(p.key) {
		// Its recorded zones were queued by an earlier listing of this
		// directory (listed twice, or asked again after a stale page):
		// its size and mtime differ for that reason, and comparing it
		// whole as well would hash it all and, both tasks running at
		// once, send its changed blocks twice.
		f.covered = true
		return 0, false, nil
	}
	if p.st.Size != s.Size || mtimeOf(&p.st) != s.Mtime {
		// Not recorded as changed, yet it differs: replaced (renamed
		// over) while the copies were apart.
		return howWhole, true, nil
	}
	return 0, false, nil
}

// inline: files up to this size are hashed whole inside the listings
// (one block, at most 256 KiB: the answer reads them all).
func (r *run) inline() int64 { return min(r.e.opt.BlockSize, 256<<10) }

// hashSmall reads and hashes the small file p of directory d; n -1 when
// the name no longer holds the file the listing found.
func (r *run) hashSmall(d int, p *pEntry) (uint64, int64, error) {
	fd, err := openatNoatime(d, p.name, unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_NONBLOCK)
	if err != nil {
		if vanished(err) {
			return 0, -1, nil
		}
		return 0, 0, err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, 0, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Ino != p.st.Ino || st.Dev != p.st.Dev {
		// Replaced since the listing (a directory there now, or another
		// file): as gone; the change that did it makes the listing stale.
		return 0, -1, nil
	}
	buf := getBuf()
	defer putBuf(buf)
	k, err := preadFull(fd, buf[:r.inline()+1], 0)
	if err != nil {
		return 0, 0, err
	}
	sum := xxh3.Hash(buf[:k])
	if int64(k) == st.Size {
		p.sums.PutSum(sumcache.StampOf(&st), p.before, sum)
	}
	return sum, int64(k), nil
}

// The scope's files are known by their primary inode (stat at the start
// of the run): a name moved meanwhile still finds its zones.
func (r *run) scopeFileLocked(p string, key inoKey) *task {
	if t := r.scopeKeys[key]; t != nil {
		return t
	}
	if t := r.scopeFiles[p]; t != nil && t.pKey == (inoKey{}) {
		return t // its inode was unknown at the start
	}
	return nil
}

func (r *run) peekScopeFile(p string, key inoKey) *task {
	r.mu.Lock()
	defer r.mu.Unlock()
	if t := r.scopeFileLocked(p, key); t != nil {
		return t
	}
	return &task{}
}

func (r *run) takeScopeFile(p string, key inoKey) *task {
	r.mu.Lock()
	defer r.mu.Unlock()
	t := r.scopeFileLocked(p, key)
	if t == nil {
		return &task{}
	}
	r.scopeDone[key] = true
	if t.pKey != (inoKey{}) {
		r.scopeDone[t.pKey] = true
	}
	delete(r.scopeFiles, t.path)
	if t.pKey != (inoKey{}) {
		delete(r.scopeKeys, t.pKey)
	}
	return t
}

// scopeTaken: the scope task of the primary's inode key was queued.
func (r *run) scopeTaken(key inoKey) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.scopeDone[key]
}

type verdict int

const (
	vOK       verdict = iota // compare as usual (first or only name)
	vSame                    // a further name, already the right inode there
	vRelink                  // a further name: make it a link to the first
	vDefer                   // a further name whose first is not sent yet
	vRecreate                // the secondary shares this inode with other names: recreate it
)

// linkVerdict places a non-directory entry in its hard-link group. s is
// nil when the secondary lacks the entry; asked is the namespace
// generation when s was asked for.
func (r *run) linkVerdict(t *task, path string, p *pEntry, s *Entry, asked uint64) (verdict, *linkRec) {
	var again []string
	defer func() {
		// Names matched or linked to the secondary inode the group had
		// before: compared again, against the new one.
		for _, p := range again {
			r.recheck(p)
		}
	}()
	r.lmu.Lock()
	defer r.lmu.Unlock()
	rec := r.links[p.key]
	takeover := false
	if rec != nil && rec.first != "" && rec.first != path && rec.ready && r.e.ns.touchedPath(rec.gen, noOwner, rec.first) {
		rec.first = "" // its first name moved or went: another one takes over
	}
	if p.st.Nlink > 1 && rec != nil && rec.first == "" {
		rec.first, rec.ready, rec.scan, takeover = path, false, false, true
	}
	if rec != nil {
		rec.seen[path] = true
	}
	if p.st.Nlink > 1 && rec != nil && rec.first != path {
		rec.seen[path] = true
		if !rec.ready {
			if !t.late || r.isRunning(rec.planner) {
				return vDefer, nil
			}
			// Its first name was planned by a task that ended without
			// sending it (it vanished): this one takes over.
			rec.first, rec.scan, takeover = path, false, true
		} else if s != nil && rec.sIno != 0 && s.Ino == rec.sIno {
			return vSame, nil
		} else if m, ok := rec.linkedAt[path]; s != nil && rec.sIno == 0 && ok && m.first == rec.first && m.firstGen == rec.gen &&
			m.gen <= asked && !r.e.ns.touchedPath(m.gen, noOwner, path) {
			// Asked after the link, and nothing moved the name since:
			// s is the link, first's inode there.
			rec.sIno = s.Ino
			return vSame, nil
		} else {
			return vRelink, rec
		}
	}
	recreate := false
	if s != nil && s.Nlink > 1 {
		if owner, ok := r.sOwner[s.Ino]; ok && owner != p.key || s.Nlink > p.st.Nlink {
			recreate = true
		} else {
			r.sOwner[s.Ino] = p.key
		}
	}
	if p.st.Nlink > 1 {
		if rec == nil {
			rec = &linkRec{first: path, nlink: p.st.Nlink, seen: map[string]bool{path: true},
				reg: p.st.Mode&unix.S_IFMT == unix.S_IFREG, key: p.key}
			r.links[p.key] = rec
		}
		old := rec.sIno
		rec.ready, rec.planner = false, t.id
		rec.sIno = 0
		if s != nil && !recreate {
			rec.sIno = s.Ino
		}
		if old != rec.sIno || recreate || takeover {
			for n := range rec.seen {
				if n != path {
					again = append(again, n)
				}
			}
			slices.Sort(again)
		}
	}
	if recreate {
		return vRecreate, rec
	}
	return vOK, rec
}

func (r *run) isFreshDir(p string) bool {
	r.lmu.Lock()
	g, ok := r.freshDirs[p]
	r.lmu.Unlock()
	return ok && !r.e.ns.touchedPath(g, noOwner, p)
}

// execute sends the fixes, a batch of entries per freeze, unless the
// directory's namespace changed since the answer (stale: ask again).
func (r *run) execute(t *task, d int, g0 uint64, fixes []*fix, locked bool) (stale, changed bool, err error) {
	fz := r.frozen
	if locked {
		fz = func(fn func()) { fn() }
	}
	var batch []*fix
	flush := func() {
		if len(batch) == 0 {
			return
		}
		fz(func() {
			if !locked && r.e.ns.touchedDir(g0, t.id, t.path) {
				stale = true
				return
			}
			for _, f := range batch {
				c, ferr := r.applyFix(t, d, f)
				if ferr != nil {
					err = ferr
					return
				}
				changed = changed || c
			}
			// Records of the first names just sent: further names may
			// link to them from now on.
			gen := r.e.ns.now()
			r.lmu.Lock()
			for _, f := range batch {
				if f.rec != nil && f.rec.first == join(t.path, f.name) {
					f.rec.ready, f.rec.gen = true, gen
				}
				if f.sub != nil && f.sub.fresh {
					f.sub.freshGen = gen
					r.freshDirs[f.sub.path] = gen
				}
				if f.data != nil && (f.data.how == howFresh) {
					f.data.since = gen
				}
			}
			r.lmu.Unlock()
		})
		if stale || err != nil {
			return
		}
		for _, f := range batch {
			r.queueChildren(t, f)
		}
		batch = batch[:0]
	}
	var quiet []*fix
	for _, f := range fixes {
		if !f.ops() {
			quiet = append(quiet, f)
			continue
		}
		batch = append(batch, f)
		if len(batch) >= batchEntries {
			if flush(); stale || err != nil {
				return stale, changed, err
			}
		}
	}
	if flush(); stale || err != nil {
		return stale, changed, err
	}
	// Entries without fixes: their records are valid as they are.
	r.lmu.Lock()
	for _, f := range quiet {
		if f.rec != nil && f.rec.first == join(t.path, f.name) && !f.rec.ready {
			f.rec.ready, f.rec.gen = true, g0
		}
	}
	r.lmu.Unlock()
	for _, f := range quiet {
		r.queueChildren(t, f)
	}
	return false, changed, nil
}

func (r *run) queueChildren(t *task, f *fix) {
	if f.findIno != 0 {
		r.push(&task{findIno: f.findIno, dir: true})
	}
	if f.scoped && f.p != nil {
		r.takeScopeFile(join(t.path, f.name), f.p.key)
		if f.data != nil {
			f.data.scoped = true // should its name move, the inode is searched for
		}
	}
	if f.deferred {
		r.deferTask(&task{dir: true, path: t.path, only: f.name, recurse: t.recurse, from: t.from, late: true})
	}
	if f.sub != nil {
		r.push(f.sub)
	}
	if f.lateMeta {
		r.deferDataTask(&task{dir: true, path: t.path, only: f.name, late: true, metaPass: true})
	}
	if f.data != nil {
		if f.p != nil && f.p.st.Nlink > 1 {
			// Every name must be one inode on the secondary before the
			// data is compared: a change through a name not linked yet
			// would miss it.
			r.deferDataTask(f.data)
		} else {
			r.push(f.data)
		}
	}
}

// linked: a name was just linked to rec's inode. If its compare began
// already, it is queued again.
func (r *run) linked(rec *linkRec) {
	r.lmu.Lock()
	again := rec.started && rec.first != ""
	rec.started = false
	first, key, reg := rec.first, rec.key, rec.reg
	r.lmu.Unlock()
	if !again {
		return
	}
	if reg {
		r.deferDataTask(&task{path: first, how: howWhole, pKey: key, rec: rec})
	} else {
		r.deferDataTask(&task{dir: true, path: parent(first), only: base(first), late: true, metaPass: true})
	}
}

// applyFix sends one entry's fixes; it runs with mutations frozen. The
// primary's entry is read again: values sent are current ones.
func (r *run) applyFix(t *task, d int, f *fix) (changed bool, err error) {
	path := join(t.path, f.name)
	var st unix.Stat_t
	if f.p != nil {
		if err := unix.Fstatat(d, f.name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			if err == unix.ENOENT {
				return false, nil // the namespace is frozen and unchanged: not reached
			}
			return false, fmt.Errorf("compare: stat %s on the primary: %w", show(path), err)
		}
		if (inoKey{st.Dev, st.Ino}) != f.p.key {
			return false, nil
		}
	}
	if f.remove {
		r.submit(&op.Op{Kind: op.RemoveTree, Path: path}, t.id)
		r.st.removed.Add(1)
		changed = true
		if f.s != nil && f.s.Nlink > 1 && f.s.typ() != unix.S_IFDIR {
			f.findIno = f.s.Ino
		}
	}
	if f.link != nil {
		switch r.linkState(f.link, f.p.key) {
		case linkOK:
			r.submit(&op.Op{Kind: op.Link, Path: f.link.first, Path2: path}, t.id)
			r.st.linked.Add(1)
			r.lmu.Lock()
			if f.link.linkedAt == nil {
				f.link.linkedAt = map[string]linkMark{}
			}
			f.link.linkedAt[path] = linkMark{gen: r.e.ns.now(), first: f.link.first, firstGen: f.link.gen}
			r.lmu.Unlock()
			r.linked(f.link)
			return true, nil
		case linkWait:
			// Its first name is being compared again: after the walk.
			f.link, f.deferred = nil, true
			return changed, nil
		}
		// Its first name moved or went meanwhile: this name becomes the
		// first, and the names linked to the old one are compared again.
		r.lmu.Lock()
		var again []string
		for n := range f.link.seen {
			if n != path {
				again = append(again, n)
			}
		}
		f.link.first, f.link.ready, f.link.sIno = path, false, 0
		f.rec = f.link
		r.lmu.Unlock()
		slices.Sort(again)
		for _, n := range again {
			r.recheck(n)
		}
		f.link, f.create = nil, true
	}
	if f.create {
		if err := r.createOps(t, path, d, f.name, &st); err != nil {
			return changed, err
		}
		r.st.created.Add(1)
		changed = true
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			// Sent (or compared) whole: its recorded zones, if any, are
			// covered (queueChildren takes them).
			f.scoped = true
			if f.rec != nil {
				// Hard-linked: until every name is linked there, live
				// changes through the other names miss this new inode, so
				// it is compared (once all names are) rather than assumed
				// empty.
				f.data = &task{path: path, how: howWhole, pKey: f.p.key, rec: f.rec}
			} else if st.Size > 0 {
				f.data = &task{path: path, how: howFresh, pKey: f.p.key}
			} else {
				f.data = nil
			}
		case unix.S_IFDIR:
			f.sub = &task{dir: true, path: path, recurse: true, fresh: true}
		}
		return changed, nil
	}
	if f.meta {
		if err := r.metaOps(t, path, &st, f.s, d, f.name, false); err != nil {
			return changed, err
		}
	}
	return changed, nil
}

const (
	linkOK   = iota // link to the first name
	linkWait        // the first name is not sent (again) yet
	linkGone        // the first name moved or went
)

// linkState: may a further name be linked to rec's first name now? Only
// if it was sent and no namespace change reached it since (it still
// names the inode on both sides).
func (r *run) linkState(rec *linkRec, key inoKey) int {
	r.lmu.Lock()
	first, gen, ready := rec.first, rec.gen, rec.ready
	r.lmu.Unlock()
	if !ready {
		return linkWait
	}
	if r.e.ns.touchedPath(gen, noOwner, first) {
		return linkGone
	}
	var st unix.Stat_t
	if unix.Fstatat(r.root, first, &st, unix.AT_SYMLINK_NOFOLLOW) != nil || (inoKey{st.Dev, st.Ino}) != key {
		return linkGone
	}
	return linkOK
}

// createOps sends the ops creating the primary's entry (stat st, name in
// d) at path, with its attributes. A regular file's data and times
// follow in its file task.
func (r *run) createOps(t *task, path string, d int, name string, st *unix.Stat_t) error {
	uid, gid := int64(st.Uid), int64(st.Gid)
	perm := st.Mode & 0o7777
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		r.submit(&op.Op{Kind: op.Create, Path: path, Mode: unix.S_IFREG | perm, Uid: uid, Gid: gid}, t.id)
	case unix.S_IFDIR:
		r.submit(&op.Op{Kind: op.Mkdir, Path: path, Mode: unix.S_IFDIR | perm, Uid: uid, Gid: gid}, t.id)
	case unix.S_IFLNK:
		target, err := readTarget(d, name)
		if err != nil {
			return fmt.Errorf("compare: read symlink %s on the primary: %w", show(path), err)
		}
		r.submit(&op.Op{Kind: op.Symlink, Path: path, Data: []byte(target), Uid: uid, Gid: gid}, t.id)
	default:
		o := &op.Op{Kind: op.Mknod, Path: path, Mode: st.Mode&unix.S_IFMT | perm, Uid: uid, Gid: gid}
		if typ := st.Mode & unix.S_IFMT; typ == unix.S_IFCHR || typ == unix.S_IFBLK {
			o.Rdev = st.Rdev
		}
		r.submit(o, t.id)
	}
	list, err := readXattrs(d, name)
	if err != nil {
		return fmt.Errorf("compare: read the attributes of %s on the primary: %w", show(path), err)
	}
	if len(list) > 0 {
		if err := r.sendXattrs(t, path, list); err != nil {
			return err
		}
		if st.Mode&unix.S_IFMT != unix.S_IFLNK {
			// An ACL may have changed the mode bits.
			r.submit(&op.Op{Kind: op.Chmod, Path: path, Mode: perm}, t.id)
		}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || st.Size == 0 {
		r.submitTimes(t, path, st)
	}
	return nil
}

func (r *run) submitTimes(t *task, path string, st *unix.Stat_t) {
	r.submit(&op.Op{Kind: op.Utimens, Path: path,
		Atime: op.Time{Sec: st.Atim.Sec, Nsec: st.Atim.Nsec}, Mtime: mtimeOf(st)}, t.id)
}

func (r *run) sendXattrs(t *task, path string, list []op.Xattr) error {
	data := op.AppendXattrs(nil, list)
	if len(data) > maxXattrsAnswer {
		return fmt.Errorf("compare: %s on the primary has %d bytes of extended attributes, more than one op carries (%d)", show(path), len(data), maxXattrsAnswer)
	}
	r.submit(&op.Op{Kind: op.XattrSet, Path: path, Data: data}, t.id)
	return nil
}

// metaOps sends the attributes of the primary's entry (stat st; its
// attributes read through dfd and name, name "" for dfd itself) that
// differ from the secondary's s: owner, extended attributes, mode (after
// the owner, which clears set-ID bits, and the attributes, since an ACL
// changes the mode), times (last; always when forceTimes).
func (r *run) metaOps(t *task, path string, st *unix.Stat_t, s *Entry, dfd int, name string, forceTimes bool) error {
	sent := false
	chown := s.Uid != st.Uid || s.Gid != st.Gid
	if chown {
		r.submit(&op.Op{Kind: op.Chown, Path: path, Uid: int64(st.Uid), Gid: int64(st.Gid)}, t.id)
		sent = true
	}
	list, err := readXattrs(dfd, name)
	if err != nil {
		return fmt.Errorf("compare: read the attributes of %s on the primary: %w", show(path), err)
	}
	xset := digestXattrs(list) != s.Xattrs
	if xset {
		if err := r.sendXattrs(t, path, list); err != nil {
			return err
		}
		sent = true
	}
	if st.Mode&unix.S_IFMT != unix.S_IFLNK && (st.Mode&0o7777 != s.Mode&0o7777 || xset || chown && st.Mode&0o6000 != 0) {
		r.submit(&op.Op{Kind: op.Chmod, Path: path, Mode: st.Mode & 0o7777}, t.id)
		sent = true
	}
	if forceTimes || mtimeOf(st) != s.Mtime {
		r.submitTimes(t, path, st)
		sent = true
	}
	if sent {
		r.st.metaFixed.Add(1)
	}
	return nil
}

// dirMeta sends the directory's own attributes when they differ or when
// its entries were changed (which changed its mtime there).
func (r *run) dirMeta(t *task, self *Entry, changed bool) error {
	if t.only != "" && !changed {
		return nil // an entry's recheck: the directory was compared as a whole
	}
	d, err := openNoatime(r.root, t.path, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW)
	if vanished(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("compare: open directory %s on the primary: %w", show(t.path), err)
	}
	defer unix.Close(d)
	if !changed {
		if self == nil {
			return nil // created by us with its attributes, nothing added
		}
		p := &pEntry{}
		if err := unix.Fstat(d, &p.st); err != nil {
			return fmt.Errorf("compare: stat directory %s on the primary: %w", show(t.path), err)
		}
		if p.xdig, err = xattrDigest(d, ""); err != nil {
			return fmt.Errorf("compare: read the attributes of %s on the primary: %w", show(t.path), err)
		}
		if !metaDiffers(p, self) {
			return nil
		}
	}
	r.frozen(func() {
		var st, now unix.Stat_t
		if err = unix.Fstat(d, &st); err != nil {
			err = fmt.Errorf("compare: stat directory %s on the primary: %w", show(t.path), err)
			return
		}
		if t.path != "" && (unix.Fstatat(r.root, t.path, &now, unix.AT_SYMLINK_NOFOLLOW) != nil || now.Ino != st.Ino || now.Dev != st.Dev) {
			return // renamed or replaced meanwhile: its new place is compared again
		}
		s := self
		if s == nil {
			// Created by us: owner, mode and attributes were sent then
			// (live changes since reached both sides).
			dig, _ := xattrDigest(d, "")
			s = &Entry{Mode: st.Mode, Uid: st.Uid, Gid: st.Gid, Xattrs: dig}
		}
		err = r.metaOps(t, t.path, &st, s, d, "", changed)
	})
	return err
}
