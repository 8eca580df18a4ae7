// Package wire carries replicated operations from a module's primary
// (Sender) to its secondary (Receiver, which hands them to an
// apply.Applier), over one TCP connection per module.
//
// # Handshake
//
// The secondary speaks first, a challenge: "TDMR", version, a 32-byte
// random nonce. The primary answers with its hello: cluster, module, node,
// epoch, first seq, its own nonce, and HMAC-SHA256 under the cluster key of
// the challenge and the hello. Because the hello covers the secondary's
// fresh nonce, a recorded hello cannot be replayed to displace a live
// session. The secondary refuses (bad MAC, wrong cluster or module, an
// epoch older than its own or than the current session's) or accepts with
// its epoch, last applied seq and node name; either answer is MACed over
// the whole exchange. A refusal not authenticated by our key is reported as
// such (RefusedError.Authentic), and never as a stale epoch.
//
// Session keys: HKDF-SHA256(cluster key, salt = client nonce || server
// nonce, info "tandem replica c2s" / "tandem replica s2c"), AES-256-GCM
// with the frame counter of the direction as nonce and the frame length
// as additional data. A frame that fails to open ends the session.
//
// # Frames
//
// Primary to secondary: batches, "B", the first op's seq, then ops with
// consecutive seqs in the compact encoding of AppendOp (about 1 MiB per
// batch; a batch goes out as soon as the writer is idle, so a lone op is
// not delayed). Secondary to primary: acks, "K", the applied seq, the
// durable seq (the last Fsync or SyncAll op done, in order: that op's
// effect is durable, for an Fsync one file), the flushed seq (the last
// SyncAll done: every op up to it is durable; what the primary's change
// records may forget), and an error (seq, errno, message) that ends the
// session. A SyncAll flagged op.Background (the primary's periodic one,
// which nobody waits for) is flushed by its own goroutine while the ops
// after it are applied; a SyncAll someone waits for first waits for the
// background ones before it.
//
// # Failure
//
// The Sender declares the peer failed, once, on a connection error, an
// apply error reported by the secondary, or no ack progress for Timeout
// while ops are outstanding; Submit and Wait never block longer than
// Timeout and return at once after that, so the application on the primary
// is never held by a dead peer. The module then runs alone; which zones
// need resynchronising is the journal's business (replica/journal), not
// this package's: a failed Sender drops what it had queued.
package wire
