// Package replication benchmarks Tandem's replicated directories against
// the limit (the same data written twice to the local disk, both test hosts
// sharing one disk) and GlusterFS replica 2 over FUSE, in the same test bed:
// sequential 1 MiB writes, 4 KiB O_DSYNC writes, 4 KiB buffered writes,
// small files and a mkdir/rename/unlink storm, plus the agents' memory.
// The measured program (cmd/replwork) runs inside the primary host, where
// the FUSE mounts are.
//
// It needs root and runs only when asked (it takes minutes):
//
//	TANDEM_BENCH=1 go test ./bench/replication -run . -v -timeout 60m
//
// See docs/benchmarks.md for the method, the knobs and the results.
package replication
