// Package changelog is the persistent, crash-safe record of what changed in
// a replicated directory on the serving node, for incremental resync (SPEC
// §6, issue 4). Files and directories are named by Key{Dev, Ino} of the
// backing filesystem (stable across renames); data changes are recorded per
// zone, a fixed power-of-two range of a file (Options.ZoneSize, 64 KiB by
// default, 4 KiB at least).
//
// # Two sets
//
// The ACTIVE set (an activity log, as DRBD's) holds at most MaxActive slots
// (extents of a file, a file's attributes, a directory's entries) that may
// hold local changes the peer has not acknowledged. Two granularities, as
// DRBD's activity log extents and bitmap: the active set works in coarse
// extents (Options.ExtentSize, 4 MiB by default), so a sequential writer
// pays one journal sync per extent, not per zone (and one per
// ReadAhead+1 extents: a Touch past an active extent of the file activates
// the next ones with it; once it has used half of them, the next
// ReadAhead+1 are appended and synced by a goroutine, so the stream does
// not wait for the journal at all); the zones touched inside
// an active extent are kept in memory with it (no I/O). When an extent
// leaves the active set acknowledged its zones are dropped; otherwise
// (changed alone, or spilled) they are written to DIRTY at zone
// granularity first. A Touch spanning more extents than MaxActive/16
// (at most 1024) is recorded as one hull slot per file instead. The FUSE layer calls Touch (or
// TouchMeta, TouchDir) before it changes anything, and Done with the op's
// stream sequence number once the op was handed to the replicator:
//
//	p, err := cl.Touch(key, off, len) // durable in the active set
//	if err != nil { fail the op with EIO; nothing was changed }
//	... apply locally ...
//	seq := rep.Submit(op)
//	cl.Done(p, seq)                   // Cancel(p) if nothing changed
//
// A slot that is not active is appended to the journal and made durable
// (fdatasync) before Touch returns; concurrent Touches share one
// fdatasync (group commit: the first waiter writes and syncs everything
// pending while the others queue). Touching an active slot costs a mutex
// and one map lookup per zone, no I/O. The sequence number comes in Done
// because the replicator assigns it only after the local apply, and Touch
// must come before; between the two the slot is pinned and cannot leave.
//
// Acked(seq) says the peer durably applied everything up to seq. An
// unpinned slot whose last seq is acknowledged may leave the active set:
// lazily, least recently touched first, when room is needed, or at a
// Checkpoint. When the set is full of unacknowledged slots, Touch waits for
// acks; after FullWait it moves the oldest unpinned ones to DIRTY instead
// (a spill: safe, it only makes a later resync send more) so writes never
// block for good. A Done with seq 0 while a peer is expected (no stream was
// attached) is never acknowledged.
//
// The DIRTY set holds what the peer may lack because it changed while this
// node ran without it. SetAlone(true) (durable) marks every active slot not
// yet acknowledged, and every slot touched from then on, as changed alone:
// such a slot leaves the active set only into DIRTY. SetAlone(false), when
// a new stream is attached, waits for the ops started before it to reach
// Done (ops starting meanwhile are the stream's: counted in a new phase,
// they do not hold it up, so a steady flow of writes cannot starve it) and
// moves every slot changed alone into DIRTY, durably; one pinned again
// meanwhile stays changed alone and goes to DIRTY once unpinned. Acks of
// the new stream then apply only to later ops, whatever their numbers. So
// a slot leaves the active set only acknowledged or durably in DIRTY.
//
// # Recovery
//
// Open replays the journal. Every slot still active at the crash is
// reported by InFlight (an extent counts whole: the zones kept in memory
// died with the process, so this is bounded by MaxActive extents; DIRTY
// records written before keep their zone granularity) (what a crashed primary must take back from the new
// primary, issue 4 point 3) and, if the node was alone, also added to
// DIRTY. The in-flight set persists until ReleaseInFlight. A power cut can
// tear only the last batch written (each batch is synced before the next
// is written): the reader stops at the first incomplete, zero or
// checksum-failing record and accepts that only if nothing but zeros lies
// more than one batch (1 MiB) beyond it. Any other damage, or a journal
// that cannot be read, makes Open fail with an error wrapping ErrLost (the
// peer needs a full resync); Recreate then moves the journal aside and
// starts an empty record marked NeedFull. Open always rewrites the journal
// as a fresh checkpoint, so a torn tail never stays in the middle.
//
// # Resync side
//
// Dirty returns a sorted snapshot (files with zone ranges and an attribute
// flag, directories), each entry with the generation of its last change:
// DIRTY, and the slots changed alone still in the active set (an op under
// way pins them there, out of a Checkpoint's reach).
// After a resync covered a snapshot, ClearDirty drops each entry whose
// generation is unchanged; an entry changed meanwhile stays whole. For a
// full resync take Gen before it and call Reset(gen) after: it drops the
// entries not changed since and clears NeedFull. A new record (first
// start, Recreate) is NeedFull: nothing says what differs from the peer.
//
// # Journal and bounds
//
// One file, "journal" (format in journal.go): a checkpoint of the whole
// state, then appended records (activate, evict, move to DIRTY, clear,
// alone, ...), each with a CRC-32C bound to the file and to its position.
// The file is extended with zeros ahead of the records (2 MiB at a time),
// so an fdatasync after an append needs no metadata update (measured 2-3x
// faster on ext4). When the records pass max(JournalBytes (16 MiB), twice
// the last checkpoint) the journal is rewritten as a checkpoint (temporary
// file, fsync, rename, directory fsync). A checkpoint is encoded under the
// lock: with 1,000,000 dirty files (a 20 MB checkpoint) writers stall about
// 0.5 s (measured on a loaded 2-CPU machine), once per some 2 million new
// activations; Open of that journal took about 3 s.
//
// Memory: the active set costs about 200 bytes per slot (1024 by default)
// plus its touched zones (16 bytes per run, at most a 512-byte bitmap per
// 4096 zones past 32 runs).
// DIRTY keeps a map slot per file (about 130 bytes with one run of zones,
// measured with 1,000,000 files) and, per file with more than one run,
// sorted runs (16 bytes each) up to 32 runs, then chunks of 4096 zones: a
// 512-byte bitmap per partly dirty chunk and runs of whole chunks. So a
// file never costs more than one bit per zone of the chunks it touches
// (a 1 TiB file with 64 KiB zones: at most 2 MiB; measured 2.4 MiB with
// one zone in 64 dirty), and a huge range costs one run. Open reads the
// whole journal into memory once.
package changelog
