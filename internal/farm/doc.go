// Package farm is the load-balancing side of a farm module: N nodes, all
// active, behind one virtual IP, with no load balancer in front of them.
//
// Every node receives every packet sent to the VIP (see L2 below) and keeps
// only the packets whose client hashes into one of its buckets:
//
//   - hash.go: the kernel's jhash, as nftables computes it, so Go code (status,
//     tests) knows which bucket a client falls in;
//   - assign.go: which node owns each of the 256 buckets for a given set of
//     live nodes. Every node computes the same answer from the same view;
//     when a node leaves only its buckets move, when it returns it gets
//     exactly those back; weights are honoured at every level;
//   - plan.go: the hand-over between nodes (take a bucket only once no live
//     peer holds it; keep serving established connections of a bucket given
//     away for a drain time);
//   - state.go: the farm module state machine (STOP, WAIT, UP), pure like
//     internal/module;
//   - filter.go, l2.go, arp.go: the kernel side (nftables tables, the VIP on
//     lo, the shared MAC address and its ARP responder). They need root.
//
// L2: the VIP resolves (ARP) to a locally administered unicast MAC address
// that no node ever uses as a source address, so no switch or bridge learns
// it and every frame sent to it is flooded to all ports. Each node accepts
// frames for that MAC on its farm interface (unicast filter entry, and
// nftables marks them for the local host) and the VIP is configured on lo
// so that the kernel neither answers ARP for it nor uses it as the source of
// its own ARP requests. See docs/farm.md.
package farm
