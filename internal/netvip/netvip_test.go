package netvip

import (
	"net/netip"
	"strings"
	"testing"
)

func addrs(t *testing.T, spec ...string) []ifAddr {
	t.Helper()
	var out []ifAddr
	for i := 0; i+1 < len(spec); i += 2 {
		out = append(out, ifAddr{ifname: spec[i], prefix: netip.MustParsePrefix(spec[i+1])})
	}
	return out
}

func TestPickInterface(t *testing.T) {
	all := addrs(t,
		"lo", "127.0.0.1/8",
		"eth0", "192.0.2.1/24",
		"eth0", "192.0.2.10/24", // the VIP itself, already held
		"eth1", "198.51.100.1/25",
		"eth2", "198.51.100.2/25",
		"eth0", "2001:db8::1/64",
		"eth1", "fe80::1/64",
		"eth2", "fe80::2/64",
	)
	for _, tc := range []struct {
		vip, want, err string
	}{
		{vip: "192.0.2.10/24", want: "eth0"},
		{vip: "192.0.2.10/32", want: "eth0"}, // address subnet contains the VIP
		{vip: "2001:db8::10/64", want: "eth0"},
		{vip: "198.51.100.10/25", err: "interfaces eth1, eth2 all have an address in 198.51.100.0/25; set vips[].interface"},
		{vip: "198.51.100.200/25", err: "no interface has an address in 198.51.100.128/25; set vips[].interface"},
		{vip: "fe80::10/64", err: "no interface has an address in fe80::/64"}, // link-local never decides
	} {
		got, err := pickInterface(netip.MustParsePrefix(tc.vip), all)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("pickInterface(%s) = %q, %v; want error containing %q", tc.vip, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("pickInterface(%s) = %q, %v; want %q", tc.vip, got, err, tc.want)
		}
	}
}

func TestCheckVIP(t *testing.T) {
	for _, bad := range []netip.Prefix{
		{},
		netip.MustParsePrefix("0.0.0.0/24"),
		netip.MustParsePrefix("224.0.0.1/32"),
		netip.MustParsePrefix("::ffff:192.0.2.1/120"),
		netip.MustParsePrefix("ff02::1/64"),
	} {
		if err := checkVIP(bad); err == nil {
			t.Errorf("checkVIP(%v) accepted", bad)
		}
		if err := Add(bad, "eth0"); err == nil || !strings.Contains(err.Error(), "VIP") {
			t.Errorf("Add(%v) = %v; want an error naming the VIP", bad, err)
		}
	}
	if err := checkVIP(netip.MustParsePrefix("192.0.2.10/24")); err != nil {
		t.Errorf("checkVIP(192.0.2.10/24) = %v", err)
	}
}
