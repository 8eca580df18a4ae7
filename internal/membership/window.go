package membership

// windowSize is how far behind the highest sequence a datagram may arrive
// and still be accepted (RFC 4303 section 3.4.3 style anti-replay window).
const windowSize = 64

// replayWindow tracks, for one sender, its highest incarnation and which of
// the last windowSize sequence numbers of that incarnation were seen.
type replayWindow struct {
	inc  uint64 // highest incarnation seen (or loaded from disk)
	top  uint64 // highest sequence seen in inc; 0 = none yet
	bits uint64 // bit i set: sequence top-i was seen
}

// check reports whether (inc, seq) is new, without recording it.
func (w *replayWindow) check(inc, seq uint64) bool {
	switch {
	case inc < w.inc:
		return false
	case inc > w.inc:
		return true
	case seq > w.top:
		return true
	}
	diff := w.top - seq
	if diff >= windowSize {
		return false
	}
	return w.bits&(1<<diff) == 0
}

// accept records (inc, seq), which check accepted. It reports whether the
// incarnation increased.
func (w *replayWindow) accept(inc, seq uint64) bool {
	if inc > w.inc {
		*w = replayWindow{inc: inc, top: seq, bits: 1}
		return true
	}
	if seq > w.top {
		shift := seq - w.top
		if shift >= windowSize {
			w.bits = 1
		} else {
			w.bits = w.bits<<shift | 1
		}
		w.top = seq
		return false
	}
	w.bits |= 1 << (w.top - seq)
	return false
}
