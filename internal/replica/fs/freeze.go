package fs

import "sync"

// Freeze blocks every mutation through the mount (namespace, data and
// attributes) once those in progress have finished, until thaw is called.
// Reads go on. The agent freezes while it attaches a new replication stream
// and sends a full copy, so no op can slip between the copy and the stream.
func (m *Mounted) Freeze() (thaw func()) {
	m.fsys.ns.Lock()
	var once sync.Once
	return func() { once.Do(m.fsys.ns.Unlock) }
}
