// Package failover benchmarks VIP failover: the time from a fault on the
// primary to the first answer a client gets from the other node through
// the VIP, for Tandem and for keepalived (VRRPv3) in the same test bed at
// the same heartbeat interval.
//
// It needs root and runs only when asked (it takes minutes):
//
//	TANDEM_BENCH=1 go test ./bench/failover -run TestFailoverBench -v -timeout 30m
//
// See docs/benchmarks.md for the method, the knobs and the results.
package failover
