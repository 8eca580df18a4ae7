package testbed

import (
	"fmt"
	"os/exec"
	"strings"
)

// dropTable is the nftables table DropFrom manages in a host's namespace.
const dropTable = "testbed_drop"

// Hooked before conntrack and any filter the software under test installs.
const dropTableScript = `table inet testbed_drop {
	set v4 { type ipv4_addr; }
	set v6 { type ipv6_addr; }
	set mac { type ether_addr; }
	chain input {
		type filter hook input priority -400; policy accept;
		ip saddr @v4 drop
		ip6 saddr @v6 drop
		ether saddr @mac drop
	}
	chain output {
		type filter hook output priority -400; policy accept;
		ip daddr @v4 drop
		ip6 daddr @v6 drop
	}
}
`

func nftAvailable() error {
	if _, err := exec.LookPath("nft"); err != nil {
		return fmt.Errorf("nft not found in PATH: install nftables (apt-get install -y nftables)")
	}
	return nil
}

// DropFrom partitions h from other: h drops every packet from and to
// other's addresses on all networks (v4 and v6) and every frame from
// other's interfaces (so traffic from addresses other gains later, such as
// a VIP, is dropped on the way in too). Rules live in h's namespace only;
// ARP and neighbour discovery still pass.
func (h *Host) DropFrom(other *Host) error {
	if err := nftAvailable(); err != nil {
		return fmt.Errorf("host %s: drop traffic from %s: %w", h.Name, other.Name, err)
	}
	if other == h {
		return fmt.Errorf("host %s: drop traffic from itself: pick another host", h.Name)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.dropped[other.Name]; ok {
		return nil
	}
	var v4, v6, macs []string
	for _, n := range h.bed.networks {
		for _, p := range other.Addrs[n.Name] {
			if p.Addr().Is4() {
				v4 = append(v4, p.Addr().String())
			} else {
				v6 = append(v6, p.Addr().String())
			}
		}
		mac, err := other.MAC(n.Name)
		if err != nil {
			return fmt.Errorf("host %s: drop traffic from %s: %w", h.Name, other.Name, err)
		}
		macs = append(macs, mac.String())
	}
	elems := elementLines("add", v4, v6, macs)
	var script strings.Builder
	if !h.dropMade {
		script.WriteString(dropTableScript)
	}
	script.WriteString(strings.Join(elems, ""))
	if err := h.nft(script.String()); err != nil {
		return fmt.Errorf("host %s: drop traffic from %s: %w", h.Name, other.Name, err)
	}
	h.dropMade = true
	h.dropped[other.Name] = elems
	return nil
}

// Undrop removes what DropFrom(other) added; it is a no-op if nothing was.
func (h *Host) Undrop(other *Host) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	elems, ok := h.dropped[other.Name]
	if !ok {
		return nil
	}
	var script strings.Builder
	for _, e := range elems {
		script.WriteString(strings.Replace(e, "add element", "delete element", 1))
	}
	if err := h.nft(script.String()); err != nil {
		return fmt.Errorf("host %s: undrop traffic from %s: %w", h.Name, other.Name, err)
	}
	delete(h.dropped, other.Name)
	return nil
}

func elementLines(verb string, v4, v6, macs []string) []string {
	var out []string
	for set, list := range map[string][]string{"v4": v4, "v6": v6, "mac": macs} {
		if len(list) > 0 {
			out = append(out, fmt.Sprintf("%s element inet %s %s { %s }\n", verb, dropTable, set, strings.Join(list, ", ")))
		}
	}
	return out
}

// nft runs an nft script inside the host.
func (h *Host) nft(script string) error {
	cmd := h.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(script)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("nft -f -: %w: %s\nscript:\n%s", err, strings.TrimSpace(string(out)), script)
	}
	return nil
}
