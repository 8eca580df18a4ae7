// Package resync benchmarks Tandem's resynchronisation of a returning
// secondary against references run on the same machine in the same run:
//
//   - (a) incremental: a tree (2,000 files of ~512 KiB plus a 1 GiB file)
//     changes while the secondary is down (1 % of the 4 KiB blocks
//     rewritten at random, files created and removed); the time from the
//     secondary's start to the primary's "resync complete" event, against
//     the limit (copying only the changed bytes, cmd/resyncwork limit) and
//     rsync -a --inplace;
//   - (b) full: the same tree into an empty secondary, against rsync -a -W;
//   - (c) compare: a million small files identical on both sides,
//     second --full with nothing to send, against rsync -a -n, with the
//     agents' peak memory.
//
// It needs root and runs only when asked (it takes long):
//
//	TANDEM_BENCH=1 go test ./bench/resync -run TestResyncBench -v -timeout 4h
//
// See docs/benchmarks.md for the method, the knobs and the results.
package resync
