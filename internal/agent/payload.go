package agent

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"

	"github.com/tandem-ha/tandem/internal/api"
	"github.com/tandem-ha/tandem/internal/config"
	"github.com/tandem-ha/tandem/internal/module"
)

// payload is what a node tells its peers in every heartbeat: a digest of its
// cluster file and the public state of each of its modules. Full field lists
// travel only while digests differ, so the mismatch can be named.
type payload struct {
	ClusterDigest string             `json:"cd"`
	ClusterFields []config.Field     `json:"cf,omitempty"`
	Modules       map[string]modView `json:"m"`
}

type modView struct {
	State    module.State   `json:"s"`
	Target   module.State   `json:"t,omitempty"`
	Epoch    uint64         `json:"e"`
	UpToDate bool           `json:"u,omitempty"`
	Started  bool           `json:"st,omitempty"`
	Handover bool           `json:"h,omitempty"`
	SwapReq  uint64         `json:"sr,omitempty"`
	Sync     module.Sync    `json:"sy,omitempty"`
	Claim    bool           `json:"c,omitempty"`
	Ack      bool           `json:"a,omitempty"`
	Digest   string         `json:"d"`
	Fields   []config.Field `json:"f,omitempty"`
	Held     []string       `json:"v,omitempty"` // VIPs present on this node
	// FailoverOff: the failover maintenance switch is set on this node.
	FailoverOff bool `json:"fo,omitempty"`
	// Farm: a farm module's buckets (farm.go); nil for a mirror.
	Farm *farmView `json:"fm,omitempty"`
	// Resync: the primary's resynchronisation of its SECOND, while it runs.
	Resync *api.ResyncStatus `json:"rs,omitempty"`
}

func digestHex(f []config.Field) string {
	d := config.Digest(f)
	return hex.EncodeToString(d[:8])
}

func decodePayload(b []byte) (*payload, error) {
	if len(b) == 0 {
		return nil, fmt.Errorf("empty payload")
	}
	var p payload
	if err := json.Unmarshal(b, &p); err != nil {
		return nil, fmt.Errorf("undecodable payload: %w", err)
	}
	return &p, nil
}

// diffSummary names the differing fields, at most a few.
func diffSummary(what string, local, remote []config.Field) string {
	if remote == nil {
		return what + " differs (waiting for the peer's field list)"
	}
	lines := config.DiffFields(local, remote)
	if len(lines) == 0 {
		return what + " differs"
	}
	if len(lines) > 3 {
		lines = append(lines[:3], fmt.Sprintf("and %d more", len(lines)-3))
	}
	return what + " differs: " + strings.Join(lines, "; ")
}
