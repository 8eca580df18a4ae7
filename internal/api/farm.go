package api

// FarmStatus is the load-balancing side of a farm module, as this node
// sees it. The JSON names are stable.
type FarmStatus struct {
	VIP       string `json:"vip"`       // with its prefix length
	Interface string `json:"interface"` // where clients' frames arrive ("" until started)
	MAC       string `json:"mac"`       // the shared MAC the VIP resolves to
	Hash      string `json:"hash"`      // addr or addr+port
	Buckets   int    `json:"buckets"`   // the number of buckets (256)
	// Held: buckets whose new connections this node accepts; Draining:
	// buckets it gave away and still serves established TCP connections
	// of; Blocked: buckets assigned to it that a live peer still holds.
	Held     int `json:"held"`
	Draining int `json:"draining"`
	Blocked  int `json:"blocked"`
	// Nodes: every node of the farm, this one included, in name order.
	Nodes []FarmNode `json:"nodes"`
}

// FarmNode is one node of a farm.
type FarmNode struct {
	Node string `json:"node"`
	// State: UP, WAIT or STOP as the node publishes it; DOWN when it is
	// not heard; UNKNOWN when it runs no copy of the module.
	State  string `json:"state"`
	Weight int    `json:"weight"`
	// Assigned: buckets the assignment gives it for the nodes this node
	// sees UP; Held: buckets it says it accepts (its heartbeat).
	Assigned int `json:"assigned"`
	Held     int `json:"held"`
	// Share is Held in percent of all buckets: the part of the clients it
	// serves.
	Share float64 `json:"share"`
	// Reason: why it is not UP, when it says.
	Reason string `json:"reason,omitempty"`
}
