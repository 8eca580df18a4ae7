package farm

import (
	"encoding/binary"
	"fmt"
	"net/netip"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// FilterConfig describes the bucket filter of one farm module on this node.
type FilterConfig struct {
	Module    string
	VIP       netip.Addr // IPv4
	Interface string     // where clients' frames arrive
	Ifindex   int
	Mode      string // HashAddr or HashAddrPort
	// Handover installs the conntrack table that lets a node finish the
	// established TCP connections of buckets it gave away (drain) while the
	// new owner drops, rather than resets, their packets.
	Handover bool
	// NetNS, when not zero, is a network namespace fd to work in (tests);
	// otherwise the calling thread's namespace.
	NetNS int
}

// Filter owns the nftables tables of one farm module:
//
//	table netdev tandem_farm_M    ingress on the farm interface: packets for
//	                              the VIP are hashed and looked up in the map
//	                              "buckets" (bucket -> verdict): "goto own"
//	                              marks them for this host (pkttype host: they
//	                              were sent to the shared MAC) and accepts
//	                              them; anything else for the VIP is dropped.
//	table ip tandem_farm_M        prerouting after conntrack, only for buckets
//	                              changing hands (map "handover"): "drain"
//	                              passes only established TCP connections;
//	                              "fresh" drops TCP packets that neither open a
//	                              connection nor belong to a known one.
//	table arp tandem_farm_M       drops ARP for the VIP before the kernel
//	                              answers it with the interface's own MAC
//	                              (the farm's ARP responder answers instead).
type Filter struct {
	cfg  FilterConfig
	seed uint32
}

// NewFilter checks cfg.
func NewFilter(cfg FilterConfig) (*Filter, error) {
	if !cfg.VIP.Is4() {
		return nil, fmt.Errorf("farm filter %s: VIP %s: only IPv4 farm VIPs are supported", cfg.Module, cfg.VIP)
	}
	if err := CheckMode(cfg.Mode); err != nil {
		return nil, fmt.Errorf("farm filter %s: %w", cfg.Module, err)
	}
	if cfg.Ifindex <= 0 || cfg.Interface == "" {
		return nil, fmt.Errorf("farm filter %s: no interface", cfg.Module)
	}
	return &Filter{cfg: cfg, seed: Seed(cfg.VIP)}, nil
}

// TableName is the name of the module's tables in every family.
func TableName(module string) string { return "tandem_farm_" + module }

// Registers: 32-bit registers 0 and 1 hold the hashed key (address, then
// port), the hash result goes back to register 0.
const (
	reg0 = 8 // NFT_REG32_00
	reg1 = 9 // NFT_REG32_01
)

func (f *Filter) conn() (*nftables.Conn, error) {
	var opts []nftables.ConnOption
	if f.cfg.NetNS != 0 {
		opts = append(opts, nftables.WithNetNSFd(f.cfg.NetNS))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("farm filter %s: open nftables netlink: %w", f.cfg.Module, err)
	}
	return c, nil
}

func (f *Filter) tables() (nd, ip, arp *nftables.Table) {
	n := TableName(f.cfg.Module)
	return &nftables.Table{Name: n, Family: nftables.TableFamilyNetdev},
		&nftables.Table{Name: n, Family: nftables.TableFamilyIPv4},
		&nftables.Table{Name: n, Family: nftables.TableFamilyARP}
}

// deleteAll queues the removal of every table of the module, present or
// not (a table is added first, which is a no-op if it exists).
func deleteAll(c *nftables.Conn, tables ...*nftables.Table) {
	for _, t := range tables {
		c.AddTable(t)
		c.DelTable(t)
	}
}

// Install replaces the module's tables (left by a crashed agent, say) by
// fresh ones where every bucket is dropped.
func (f *Filter) Install() error {
	c, err := f.conn()
	if err != nil {
		return err
	}
	nd, ip, arp := f.tables()
	deleteAll(c, nd, ip, arp)
	c.AddTable(nd)
	c.AddTable(arp)

	// netdev: the bucket filter.
	own := c.AddChain(&nftables.Chain{Name: "own", Table: nd})
	c.AddRule(&nftables.Rule{Table: nd, Chain: own, Exprs: []expr.Any{
		// Frames sent to the shared MAC arrive as "other host": mark them
		// for us, or IP would drop them.
		&expr.Immediate{Register: 1, Data: []byte{unix.PACKET_HOST}},
		&expr.Meta{Key: expr.MetaKeyPKTTYPE, SourceRegister: true, Register: 1},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}})
	buckets := &nftables.Set{Table: nd, Name: "buckets", IsMap: true, KeyType: nftables.TypeInteger,
		DataType: nftables.TypeVerdict, KeyByteOrder: binaryutil.NativeEndian}
	if err := c.AddSet(buckets, f.elements(nil)); err != nil {
		return fmt.Errorf("farm filter %s: %w", f.cfg.Module, err)
	}
	accept := nftables.ChainPolicyAccept
	ingress := c.AddChain(&nftables.Chain{Name: "ingress", Table: nd, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookIngress, Priority: nftables.ChainPriorityFilter, Device: f.cfg.Interface, Policy: &accept})
	for _, r := range f.hashRules(buckets, true) {
		c.AddRule(&nftables.Rule{Table: nd, Chain: ingress, Exprs: r})
	}
	c.AddRule(&nftables.Rule{Table: nd, Chain: ingress, Exprs: append(f.matchVIP(true),
		&expr.Verdict{Kind: expr.VerdictDrop})})

	// ip: hand-over of established connections.
	if f.cfg.Handover {
		c.AddTable(ip)
		drain := c.AddChain(&nftables.Chain{Name: "drain", Table: ip})
		c.AddRule(&nftables.Rule{Table: ip, Chain: drain, Exprs: append(isTCP(),
			&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
				Mask: u32native(expr.CtStateBitESTABLISHED | expr.CtStateBitRELATED), Xor: u32native(0)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: u32native(0)},
			&expr.Verdict{Kind: expr.VerdictAccept},
		)})
		c.AddRule(&nftables.Rule{Table: ip, Chain: drain, Exprs: []expr.Any{&expr.Verdict{Kind: expr.VerdictDrop}}})
		fresh := c.AddChain(&nftables.Chain{Name: "fresh", Table: ip})
		c.AddRule(&nftables.Rule{Table: ip, Chain: fresh, Exprs: append(isTCP(),
			&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4, Mask: u32native(expr.CtStateBitNEW), Xor: u32native(0)},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: u32native(0)},
			// tcp flags & (syn|ack) != syn: not the opening of a connection.
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 13, Len: 1},
			&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 1, Mask: []byte{0x12}, Xor: []byte{0}},
			&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: []byte{0x02}},
			&expr.Verdict{Kind: expr.VerdictDrop},
		)})
		handover := &nftables.Set{Table: ip, Name: "handover", IsMap: true, KeyType: nftables.TypeInteger,
			DataType: nftables.TypeVerdict, KeyByteOrder: binaryutil.NativeEndian}
		if err := c.AddSet(handover, nil); err != nil {
			return fmt.Errorf("farm filter %s: %w", f.cfg.Module, err)
		}
		pre := c.AddChain(&nftables.Chain{Name: "pre", Table: ip, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityMangle, Policy: &accept})
		for _, r := range f.hashRules(handover, false) {
			c.AddRule(&nftables.Rule{Table: ip, Chain: pre, Exprs: r})
		}
	}

	// arp: the kernel must not answer for the VIP with its own MAC.
	arpIn := c.AddChain(&nftables.Chain{Name: "in", Table: arp, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookRef(0 /* NF_ARP_IN */), Priority: nftables.ChainPriorityFilter, Policy: &accept})
	c.AddRule(&nftables.Rule{Table: arp, Chain: arpIn, Exprs: []expr.Any{
		// Ethernet/IPv4 ARP (hlen 6, plen 4) whose target address is the VIP.
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 4, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{6, 4}},
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 24, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: f.cfg.VIP.AsSlice()},
		&expr.Verdict{Kind: expr.VerdictDrop},
	}})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("farm filter %s: install nftables tables %s on %s: %w (is nf_tables available? `nft list tables` must work)",
			f.cfg.Module, TableName(f.cfg.Module), f.cfg.Interface, err)
	}
	return nil
}

func isTCP() []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 9, Len: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
	}
}

func u32native(v uint32) []byte { return binaryutil.NativeEndian.PutUint32(v) }

// matchVIP matches IPv4 packets to the VIP (netdev: the frame must carry
// IPv4; ip family: they arrive on the farm interface).
func (f *Filter) matchVIP(netdev bool) []expr.Any {
	var e []expr.Any
	if netdev {
		e = append(e,
			&expr.Meta{Key: expr.MetaKeyPROTOCOL, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.BigEndian.PutUint16(unix.ETH_P_IP)})
	} else {
		e = append(e,
			&expr.Meta{Key: expr.MetaKeyIIF, Register: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: u32native(uint32(f.cfg.Ifindex))})
	}
	return append(e,
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: f.cfg.VIP.AsSlice()})
}

// hashRules computes the client's bucket and looks it up in set (a
// verdict map). In addr+port mode TCP and UDP hash address and source port;
// anything else (and fragments after the first, which carry no port)
// hashes address and port 0, as BucketOf does.
func (f *Filter) hashRules(set *nftables.Set, netdev bool) [][]expr.Any {
	saddr := &expr.Payload{DestRegister: reg0, Base: expr.PayloadBaseNetworkHeader, Offset: 12, Len: 4}
	lookup := &expr.Lookup{SourceRegister: reg0, SetName: set.Name, SetID: set.ID, IsDestRegSet: true, DestRegister: 0}
	hash := func(n uint32) *expr.Hash {
		return &expr.Hash{SourceRegister: reg0, DestRegister: reg0, Length: n, Modulus: Buckets, Seed: f.seed, Type: expr.HashTypeJenkins}
	}
	if f.cfg.Mode == HashAddr {
		return [][]expr.Any{append(f.matchVIP(netdev), saddr, hash(4), lookup)}
	}
	// A packet whose bucket is not in the map must not fall through to
	// the port-0 rule (it would be looked up again under another bucket):
	// after each protocol's lookup, its packets end here (dropped at
	// ingress, where every bucket is in the map; accepted in the hand-over
	// chain, where only buckets changing hands are). Fragments after the
	// first have no port: loading it fails, so they go on to the port-0 rule.
	end := expr.VerdictDrop
	if !netdev {
		end = expr.VerdictAccept
	}
	var rules [][]expr.Any
	for _, proto := range []byte{unix.IPPROTO_TCP, unix.IPPROTO_UDP} {
		isProto := []expr.Any{
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 9, Len: 1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{proto}},
		}
		sport := &expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseTransportHeader, Offset: 0, Len: 2}
		r := append(f.matchVIP(netdev), isProto...)
		rules = append(rules, append(r, saddr, sport, hash(8), lookup))
		r = append(f.matchVIP(netdev), isProto...)
		rules = append(rules, append(r, sport, &expr.Verdict{Kind: end}))
	}
	return append(rules, append(f.matchVIP(netdev), saddr,
		&expr.Immediate{Register: reg1, Data: []byte{0, 0, 0, 0}}, hash(8), lookup))
}

// elements builds a verdict map's elements: v nil means every bucket gets
// the default (drop in "buckets").
func (f *Filter) elements(v *[Buckets]Verdict) []nftables.SetElement {
	out := make([]nftables.SetElement, 0, Buckets)
	for b := range Buckets {
		verdict := &expr.Verdict{Kind: expr.VerdictDrop}
		if v != nil {
			switch v[b] {
			case Own, OwnFresh, Drain:
				verdict = &expr.Verdict{Kind: expr.VerdictGoto, Chain: "own"}
			}
		}
		out = append(out, nftables.SetElement{Key: bucketKey(b), VerdictData: verdict})
	}
	return out
}

func bucketKey(b int) []byte {
	k := make([]byte, 4)
	binary.NativeEndian.PutUint32(k, uint32(b))
	return k
}

// Update loads the verdict of every bucket, atomically (one transaction:
// a packet sees the old map or the new one).
func (f *Filter) Update(v [Buckets]Verdict) error {
	c, err := f.conn()
	if err != nil {
		return err
	}
	nd, ip, _ := f.tables()
	buckets := &nftables.Set{Table: nd, Name: "buckets", IsMap: true, KeyType: nftables.TypeInteger, DataType: nftables.TypeVerdict}
	c.FlushSet(buckets)
	if err := c.SetAddElements(buckets, f.elements(&v)); err != nil {
		return fmt.Errorf("farm filter %s: %w", f.cfg.Module, err)
	}
	if f.cfg.Handover {
		handover := &nftables.Set{Table: ip, Name: "handover", IsMap: true, KeyType: nftables.TypeInteger, DataType: nftables.TypeVerdict}
		c.FlushSet(handover)
		var els []nftables.SetElement
		for b := range Buckets {
			switch v[b] {
			case Drain:
				els = append(els, nftables.SetElement{Key: bucketKey(b), VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: "drain"}})
			case OwnFresh:
				els = append(els, nftables.SetElement{Key: bucketKey(b), VerdictData: &expr.Verdict{Kind: expr.VerdictGoto, Chain: "fresh"}})
			}
		}
		if len(els) > 0 {
			if err := c.SetAddElements(handover, els); err != nil {
				return fmt.Errorf("farm filter %s: %w", f.cfg.Module, err)
			}
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("farm filter %s: update the bucket map: %w", f.cfg.Module, err)
	}
	return nil
}

// Remove deletes the module's tables; absent tables are fine.
func (f *Filter) Remove() error { return RemoveTables(f.cfg.Module, f.cfg.NetNS) }

// RemoveTables deletes a farm module's tables in every family (netns 0:
// the calling thread's namespace); absent tables are fine.
func RemoveTables(module string, netns int) error {
	var opts []nftables.ConnOption
	if netns != 0 {
		opts = append(opts, nftables.WithNetNSFd(netns))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return fmt.Errorf("farm filter %s: open nftables netlink: %w", module, err)
	}
	n := TableName(module)
	deleteAll(c, &nftables.Table{Name: n, Family: nftables.TableFamilyNetdev},
		&nftables.Table{Name: n, Family: nftables.TableFamilyIPv4},
		&nftables.Table{Name: n, Family: nftables.TableFamilyARP})
	if err := c.Flush(); err != nil {
		return fmt.Errorf("farm filter %s: remove nftables tables %s: %w", module, n, err)
	}
	return nil
}
