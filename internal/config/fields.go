package config

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"slices"
	"strconv"
	"strings"
)

// Field is one setting of a canonical, flattened configuration: the two
// nodes of a cluster compare these lists to find what differs.
type Field struct {
	Path  string
	Value string
}

func sortFields(f []Field) []Field {
	slices.SortStableFunc(f, func(a, b Field) int { return cmp.Compare(a.Path, b.Path) })
	return f
}

// Fields returns the cluster file as a sorted list of settings, with
// defaults applied and paths resolved, so that a file that spells out a
// default equals one that leaves it out. Per-node overrides appear only
// when set.
func (c *Cluster) Fields() []Field {
	f := []Field{
		{"name", c.Name},
		{"key_file", c.KeyFile},
		{"state_dir", c.StateDir},
		{"modules_dir", c.ModulesDir},
		{"socket", c.Socket},
		{"health_listen", c.HealthListen},
		{"networks", strings.Join(c.Networks, ",")},
		{"heartbeat.port", strconv.Itoa(c.Heartbeat.Port)},
		{"heartbeat.interval", c.Heartbeat.Interval.String()},
		{"heartbeat.timeout", c.Heartbeat.Timeout.String()},
		{"replication.port", strconv.Itoa(c.Replication.Port)},
		{"replication.network", c.Replication.Network},
		{"nodes", strings.Join(c.NodeNames(), ",")},
	}
	for _, n := range c.Nodes {
		p := "nodes." + n.Name + "."
		for _, nw := range sortedKeys(n.Addresses) {
			f = append(f, Field{p + "addresses." + nw, n.Addresses[nw].String()})
		}
		for _, o := range []Field{
			{p + "socket", n.Socket},
			{p + "state_dir", n.StateDir},
			{p + "modules_dir", n.ModulesDir},
			{p + "health_listen", n.HealthListen},
		} {
			if o.Value != "" {
				f = append(f, o)
			}
		}
	}
	return sortFields(f)
}

// Digest is a SHA-256 over the canonical field list; equal digests mean
// equal configurations. The list is sorted first, so order does not matter.
func Digest(fields []Field) [32]byte {
	f := sortFields(slices.Clone(fields))
	h := sha256.New()
	var n [binary.MaxVarintLen64]byte
	for _, x := range f {
		// Length prefixes keep ("a","bc") and ("ab","c") apart.
		h.Write(n[:binary.PutUvarint(n[:], uint64(len(x.Path)))])
		h.Write([]byte(x.Path))
		h.Write(n[:binary.PutUvarint(n[:], uint64(len(x.Value)))])
		h.Write([]byte(x.Value))
	}
	var sum [32]byte
	h.Sum(sum[:0])
	return sum
}

// DiffFields describes, one line per differing path, how the local list
// differs from the peer's: "heartbeat.timeout: here 600ms, on peer 1s".
func DiffFields(local, remote []Field) []string {
	return diffFields(local, remote, "here", "on peer")
}

func diffFields(a, b []Field, labelA, labelB string) []string {
	ma := map[string]string{}
	mb := map[string]string{}
	for _, f := range a {
		ma[f.Path] = f.Value
	}
	for _, f := range b {
		mb[f.Path] = f.Value
	}
	paths := map[string]bool{}
	for p := range ma {
		paths[p] = true
	}
	for p := range mb {
		paths[p] = true
	}
	var out []string
	for _, p := range sortedKeys(paths) {
		va, oka := ma[p]
		vb, okb := mb[p]
		if oka == okb && va == vb {
			continue
		}
		out = append(out, fmt.Sprintf("%s: %s %s, %s %s", p, labelA, show(va, oka), labelB, show(vb, okb)))
	}
	return out
}

func show(v string, ok bool) string {
	switch {
	case !ok:
		return "(absent)"
	case v == "":
		return `""`
	}
	return v
}
