// Package fs is the FUSE front of mirror replication on the primary: a
// passthrough filesystem (go-fuse v2, fs API) mounted over the replicated
// directory itself. Every mutation is applied to the real directory, reached
// through a directory fd opened before the mount (RootFd), and then described
// to a Replicator as an op.Op, in the order it was applied. Reads, getattr,
// readdir, readlink, getxattr, listxattr, statfs and access go to the real
// directory and never to the Replicator.
//
// # Resolving nodes
//
// Every inode the kernel knows holds an O_PATH fd opened with openat on its
// parent's fd (as libfuse's passthrough_hp does); operations use that fd
// (*at calls, /proc/self/fd/N for chmod, truncate, open and xattrs), never a
// joined path: depth is not limited by PATH_MAX and a rename between lookup
// and use cannot redirect an operation. For the ops, each inode also keeps the
// names it is known by (parent + name; several for hard links, the first one
// is used) and builds its root-relative path on demand, cached until a name
// it depends on changes. Op paths may be longer than PATH_MAX: the applier
// must resolve them component by component. A file whose known names were all
// unlinked while another name (never looked up) remains is found by a scan of
// the real tree (rare); a deleted file that is still open sends no ops.
//
// go-fuse may create several nodes for one inode and drop them without
// telling us, and may revive a node it has reported forgotten, so fds are
// released by a runtime cleanup once a node is unreachable, never earlier:
// no request can see a closed or reused fd. Forgetting a deleted file
// triggers a collection soon, so its space comes back within a fraction of a
// second. Each inode cached by the kernel costs one fd: the agent needs a
// high RLIMIT_NOFILE (Mount raises the soft limit to the hard one and warns
// below 65536; an open that hits the limit is retried after a collection).
//
// # Ordering
//
// One namespace RWMutex: unlink, rmdir and rename take it exclusively (they
// change a path that data ops may be using); data and attribute ops, and the
// operations that only add a name (create, mkdir, mknod, symlink,
// link) take it shared: they change no existing path, and the kernel already
// serializes operations on one directory by holding its lock. Data and
// attribute ops also take a per-inode mutex. The local apply and the Submit
// happen under these locks, so ops reach the Replicator in the local order
// for any one file and for the namespace (the path an op carries is the one
// its apply used). Waits for the peer happen after the locks are released.
// The write path takes no exclusive global lock and allocates one op per
// request (the data is not copied; the Replicator copies it).
//
// # Durability
//
// Sync=SyncFsync: FSYNC and FSYNCDIR sync locally, submit an Fsync op
// (DataOnly for fdatasync) and Wait(seq, durable). O_SYNC/O_DSYNC writes,
// and RWF_DSYNC ones, need nothing more: the kernel follows each of them with
// an FSYNC request before write(2) returns (generic_write_sync; checked by
// TestWaits), so the real file is opened without O_SYNC/O_DSYNC and synced
// once. A FLUSH (close) of a handle that wrote waits until the peer applied
// everything submitted for the inode ("close after write returns once the
// secondary applied it"). Plain writes only submit. Sync=SyncWrite: every
// write also waits (applied). FSYNC is never answered with ENOSYS. The
// Replicator decides what a peer failure means: Wait returns nil while this
// node goes on alone (the data is safe here; SPEC: the application is never
// blocked by a dead peer), an error when the acknowledgement cannot be given
// (this node is leaving the serving role and the peer may lack the data):
// the call then fails with EIO, never a false acknowledgement. syncfs(2) is
// not replicated (go-fuse answers SYNCFS with ENOSYS).
//
// Unmount fences the mount first: from then on every change is refused
// (EROFS) and the changes under way are waited for. A busy mount is
// detached lazily; the files left open can still be read until closed,
// not changed, since nothing would replicate the change and the copy may
// be a SECOND's next.
//
// Freeze blocks every mutation (it takes the namespace lock exclusively)
// while lookups, reads, getattr, readdir and xattr reads go on. FreezeFile
// blocks only the changes of one inode (its data lock, taken on the meta
// every op on that inode uses, made if no node holds it) and renames and
// removals (the namespace lock shared).
//
// A write carries the mtime it gave the file (the secondary sets it after
// applying the write), so the copies' mtimes match even for a file that
// stays open across a failover; a truncate is followed by its mtime, and a
// handle whose file changed otherwise sends it when closed; creation ops
// carry the new entry's times. Explicit times and UTIME_NOW are sent as the values that
// resulted on the primary. ctime and atime are not replicated.
//
// # Kernel caching choices
//
// Writeback cache off: every write(2) reaches the daemon before it returns
// (needed for sync=write and for close/fsync semantics), and the kernel
// applies O_APPEND: it sends the offset where the append lands (its i_size,
// exact since every change goes through the mount), and the real file is
// written at that offset (opened without O_APPEND), so the op carries the
// real offset. Writeback cache would also hide O_DSYNC and let write(2)
// return before the daemon saw the data; measured, it is not faster here.
//
// No passthrough: passed-through writes bypass the daemon, and once an inode
// has a backing file the kernel fails every non-passthrough open of it with
// EIO, so read and write opens of one file could not coexist safely. Reads
// are spliced from the real file instead.
//
// Direct I/O (direct.go): a write-only handle, or one opened O_SYNC or
// O_DSYNC, is FOPEN_DIRECT_IO: its writes reach the daemon from the
// caller's buffer without a copy into the mount's page cache (the kernel
// invalidates the range for cached readers), and an O_DSYNC/O_SYNC write is
// made durable inside its WRITE request, since the kernel sends no FSYNC
// after a direct write (one request instead of two: 20-40 µs less per
// O_DSYNC write here). An O_DSYNC write larger than max_write (1 MiB) comes
// as several requests, each synced. Read handles keep the page cache.
//
// Shared writable mmap works without writeback cache: dirty pages reach the
// daemon as WRITE requests on msync, fsync, close or background writeback,
// and are replicated like any write (msync(MS_SYNC) then waits durable).
//
// Entry, attribute and negative-entry timeouts are 5 s: nothing but the mount
// changes the directory while it is mounted, and the kernel invalidates what
// a request through the mount changes. max_write is 1 MiB (capped by
// fs.fuse.max_pages_limit), MaxBackground 64. Mounted with allow_other,
// default_permissions (the kernel checks permissions as the caller), and the
// underlying mount's nosuid/nodev/noexec; files are created as the caller
// (fchown after create, the directory's group when it is set-group-ID), and
// Create/Mkdir/Mknod/Symlink ops carry the resulting Uid, Gid and Mode.
//
// Not replicated (refused or not offered): RENAME_WHITEOUT (EINVAL), ioctls
// such as FS_IOC_SETFLAGS (ENOTTY), O_TMPFILE (EOPNOTSUPP);
// copy_file_range falls back to read/write in the kernel.
//
// Mount the directory before the application starts: a process whose cwd or
// open files are in the directory from before the mount bypasses it.
package fs
