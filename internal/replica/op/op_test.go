package op

import (
	"bytes"
	"strings"
	"testing"
)

func TestXattrsRoundTrip(t *testing.T) {
	list := []Xattr{
		{Name: "user.a", Value: []byte("one")},
		{Name: "user.empty", Value: []byte{}},
		{Name: "trusted.kept", Keep: true},
		{Name: "user.big", Value: bytes.Repeat([]byte{7}, XattrSizeMax)},
	}
	b := AppendXattrs(nil, list)
	got, err := ParseXattrs(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(list) {
		t.Fatalf("got %d attributes, want %d", len(got), len(list))
	}
	for i := range list {
		if got[i].Name != list[i].Name || got[i].Keep != list[i].Keep || !bytes.Equal(got[i].Value, list[i].Value) {
			t.Errorf("attribute %d: got %+v, want %+v", i, got[i], list[i])
		}
		if !got[i].Keep && got[i].Value == nil {
			t.Errorf("attribute %d: an empty value decodes as nil (absent)", i)
		}
	}
	if got, err := ParseXattrs(AppendXattrs(nil, nil)); err != nil || len(got) != 0 {
		t.Errorf("empty list: %v, %v", got, err)
	}
}

func TestXattrsRejected(t *testing.T) {
	good := AppendXattrs(nil, []Xattr{{Name: "user.a", Value: []byte("v")}})
	cases := map[string][]byte{
		"empty input":     nil,
		"truncated":       good[:len(good)-1],
		"trailing bytes":  append(append([]byte(nil), good...), 0),
		"empty name":      AppendXattrs(nil, []Xattr{{Name: "", Value: []byte("v")}}),
		"NUL in name":     AppendXattrs(nil, []Xattr{{Name: "user.a\x00b", Value: []byte("v")}}),
		"long name":       AppendXattrs(nil, []Xattr{{Name: "user." + strings.Repeat("n", XattrNameMax)}}),
		"repeated name":   AppendXattrs(nil, []Xattr{{Name: "user.a"}, {Name: "user.a"}}),
		"value too large": AppendXattrs(nil, []Xattr{{Name: "user.a", Value: make([]byte, XattrSizeMax+1)}}),
		"huge count":      {0xff, 0xff, 0xff, 0xff, 0x0f},
	}
	for name, b := range cases {
		if _, err := ParseXattrs(b); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestValidateNewKinds(t *testing.T) {
	good := []Op{
		{Kind: Query, Flags: QueryListDir},
		{Kind: Query, Flags: QueryHashBlocks, Path: "a/b", Off: 65536, Len: 1 << 20},
		{Kind: Query, Flags: QuerySkipped},
		{Kind: Query, Flags: QueryFindInode, Data: []byte{7}},
		{Kind: RemoveTree, Path: "a/b"},
		{Kind: XattrSet, Path: "", Data: AppendXattrs(nil, nil)},
		{Kind: XattrSet, Path: "f", Data: AppendXattrs(nil, []Xattr{{Name: "user.x", Value: []byte("1")}})},
	}
	for _, o := range good {
		if err := o.Validate(); err != nil {
			t.Errorf("%s: %v", &o, err)
		}
	}
	bad := []Op{
		{Kind: Query},
		{Kind: Query, Flags: 99},
		{Kind: Query, Flags: QueryHashBlocks, Path: "../x"},
		{Kind: Query, Flags: QueryHashBlocks, Path: "f", Off: -1},
		{Kind: RemoveTree, Path: ""},
		{Kind: RemoveTree, Path: "a/../b"},
		{Kind: XattrSet, Path: "f"},
		{Kind: XattrSet, Path: "f", Data: []byte{1, 0}},
	}
	for _, o := range bad {
		if err := o.Validate(); err == nil {
			t.Errorf("%s: accepted", &o)
		}
	}
}

func TestQueryString(t *testing.T) {
	for o, want := range map[*Op]string{
		{Kind: Query, Flags: QueryListDir, Path: "d"}:                    `query listdir "d"`,
		{Kind: Query, Flags: QueryHashBlocks, Path: "f", Off: 4, Len: 8}: `query hashblocks "f" 8@4`,
		{Kind: Query, Flags: 42, Path: "x"}:                              `query type(42) "x"`,
		{Kind: RemoveTree, Path: "t"}:                                    `removetree "t"`,
		{Kind: XattrSet, Path: "", Data: AppendXattrs(nil, nil)}:         `xattrset ""`,
	} {
		if got := o.String(); got != want {
			t.Errorf("got %s, want %s", got, want)
		}
	}
}
