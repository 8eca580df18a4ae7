package agent

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tandem-ha/tandem/internal/config"
	"github.com/tandem-ha/tandem/internal/membership"
	"github.com/tandem-ha/tandem/internal/module"
)

func TestPersistentRoundTripAndCorruption(t *testing.T) {
	path := filepath.Join(t.TempDir(), "web", "state.json")
	p, err := loadPersistent(path)
	if err != nil || p != (module.Persistent{}) {
		t.Fatalf("missing file must read as never run: %+v %v", p, err)
	}
	want := module.Persistent{State: module.Prim, Started: true, UpToDate: true, Epoch: 7, PeerOutdated: true, SwapSeen: 2}
	if err := savePersistent(path, want); err != nil {
		t.Fatal(err)
	}
	got, err := loadPersistent(path)
	if err != nil || got != want {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	if fi, _ := os.Stat(path); fi.Mode().Perm()&0o077 != 0 {
		t.Errorf("state file readable by others: %v", fi.Mode())
	}
	os.WriteFile(path, []byte("{\"state\": \"PRIM\", \"epo"), 0o600)
	if _, err := loadPersistent(path); err == nil || !strings.Contains(err.Error(), "corrupt") || !strings.Contains(err.Error(), path) {
		t.Fatalf("torn state file must be reported with its path: %v", err)
	}
}

// newTestAgent builds an agent with one module runner, without sockets.
func newTestAgent(t *testing.T) (*Agent, *modRunner) {
	t.Helper()
	c := &config.Cluster{Name: "c", Networks: []string{"lan"}}
	a := &Agent{cluster: c, node: "alpha", peerViews: map[string]peerInfo{}, byName: map[string]*modRunner{}}
	a.clusterFields = []config.Field{{Path: "heartbeat.timeout", Value: "600ms"}, {Path: "name", Value: "c"}}
	a.clusterDigest = digestHex(a.clusterFields)
	m := &config.Module{Name: "web", Kind: "mirror", Nodes: []string{"alpha", "beta"}}
	r := &modRunner{a: a, cfg: m, peer: "beta", fields: []config.Field{{Path: "kind", Value: "mirror"}}}
	r.digest = digestHex(r.fields)
	r.m = module.New("alpha", "beta", true, module.Persistent{})
	a.mods = []*modRunner{r}
	a.byName["web"] = r
	return a, r
}

func setPeer(t *testing.T, a *Agent, alive bool, p payload) {
	t.Helper()
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	pl, err := decodePayload(b)
	if err != nil {
		t.Fatal(err)
	}
	a.peerViews["beta"] = peerInfo{view: membership.PeerView{Name: "beta", Alive: alive, Payload: b}, payload: pl}
}

func TestPeerViewFromPayload(t *testing.T) {
	a, r := newTestAgent(t)
	if p := a.peerFor(r); p.Alive {
		t.Fatalf("unknown peer must be down: %+v", p)
	}
	setPeer(t, a, true, payload{ClusterDigest: a.clusterDigest, Modules: map[string]modView{
		"web": {State: module.Prim, Epoch: 4, UpToDate: true, Started: true, Claim: true, Digest: r.digest},
	}})
	p := a.peerFor(r)
	if !p.Alive || !p.Known || p.Incompatible != "" || p.State != module.Prim || p.Epoch != 4 || !p.Claim {
		t.Fatalf("peer view: %+v", p)
	}

	// Module absent on the peer: alive, not known.
	setPeer(t, a, true, payload{ClusterDigest: a.clusterDigest, Modules: map[string]modView{}})
	if p := a.peerFor(r); !p.Alive || p.Known {
		t.Fatalf("module absent on peer: %+v", p)
	}
}

func TestPairingRefusedNamesTheField(t *testing.T) {
	a, r := newTestAgent(t)
	theirs := []config.Field{{Path: "heartbeat.timeout", Value: "1s"}, {Path: "name", Value: "c"}}
	setPeer(t, a, true, payload{ClusterDigest: digestHex(theirs), ClusterFields: theirs, Modules: map[string]modView{
		"web": {State: module.Prim, Digest: r.digest},
	}})
	p := a.peerFor(r)
	if p.Incompatible == "" || !strings.Contains(p.Incompatible, "heartbeat.timeout") || !strings.Contains(p.Incompatible, "600ms") {
		t.Fatalf("cluster mismatch must name the field and both values: %q", p.Incompatible)
	}
	// Before the peer's field list arrives the mismatch is still refused.
	setPeer(t, a, true, payload{ClusterDigest: digestHex(theirs), Modules: map[string]modView{}})
	if p := a.peerFor(r); p.Incompatible == "" {
		t.Fatal("digest mismatch without fields must still refuse pairing")
	}
	// Module definitions that differ are refused too.
	otherMod := []config.Field{{Path: "kind", Value: "mirror"}, {Path: "vips[0].address", Value: "192.0.2.100/24"}}
	setPeer(t, a, true, payload{ClusterDigest: a.clusterDigest, Modules: map[string]modView{
		"web": {State: module.Second, Digest: digestHex(otherMod), Fields: otherMod},
	}})
	if p := a.peerFor(r); !strings.Contains(p.Incompatible, "vips[0].address") {
		t.Fatalf("module mismatch must name the field: %q", p.Incompatible)
	}
	// We publish our own field lists while they differ, so the peer can name them too.
	a.mem = nil
	pl := a.payloadNow()
	if len(pl.Modules["web"].Fields) == 0 {
		t.Error("module field list not published while module digests differ")
	}
}

func TestMalformedPayloadIsIncompatible(t *testing.T) {
	a, r := newTestAgent(t)
	a.peerViews["beta"] = peerInfo{view: membership.PeerView{Name: "beta", Alive: true}, bad: "undecodable payload"}
	if p := a.peerFor(r); p.Incompatible == "" || p.Known {
		t.Fatalf("garbage payload must never pair: %+v", p)
	}
}
