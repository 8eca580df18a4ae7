package mountinfo

import "testing"

func TestParse(t *testing.T) {
	text := `22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
90 22 0:45 / /srv/a\040b ro,relatime - fuse.tandem tandem rw,user_id=0
91 22 0:46 / /srv/a\040b rw,relatime master:3 - tmpfs tmp\134x rw
bad line
`
	ms := Parse(text)
	if len(ms) != 3 {
		t.Fatalf("parsed %d mounts: %+v", len(ms), ms)
	}
	if ms[1].Point != "/srv/a b" || ms[1].FSType != "fuse.tandem" || !ms[1].ReadOnly() || ms[1].Dev != "0:45" {
		t.Errorf("second mount: %+v", ms[1])
	}
	top, ok := Top(ms, "/srv/a b")
	if !ok || top.FSType != "tmpfs" || top.Source != `tmp\x` || top.ReadOnly() {
		t.Errorf("top: %+v %v", top, ok)
	}
	if _, ok := Top(ms, "/nope"); ok {
		t.Error("Top found a missing mount point")
	}
	if got := Unescape(`/a\040b\134c`); got != `/a b\c` {
		t.Errorf("Unescape: %q", got)
	}
}
