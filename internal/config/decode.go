package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Duration is how durations are written in the files: "500ms", "3s", "1m".
type Duration = time.Duration

var durationType = reflect.TypeFor[time.Duration]()

// decoder fills a typed "raw" struct from a yaml.Node tree. It is strict
// like yaml's Decoder.KnownFields(true) but keeps going after an error, so
// every problem of a file is reported at once, and each error carries the
// field path as well as the line. It also remembers the node of every path
// so that semantic checks can report lines too.
type decoder struct {
	file  string
	errs  []*Error
	nodes map[string]*yaml.Node // field path -> value node (null included)
	bad   map[string]bool       // paths whose value could not be decoded
	keys  map[string]*yaml.Node // field path -> key node
}

func newDecoder(file string) *decoder {
	return &decoder{file: file, nodes: map[string]*yaml.Node{}, keys: map[string]*yaml.Node{}, bad: map[string]bool{}}
}

// parse reads exactly one YAML document. A missing or empty document yields
// a null root, so the required-field checks report what is missing.
func (d *decoder) parse(src []byte) (*yaml.Node, bool) {
	dec := yaml.NewDecoder(bytes.NewReader(src))
	dec.KnownFields(true)
	var doc yaml.Node
	err := dec.Decode(&doc)
	if errors.Is(err, io.EOF) {
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null"}, true
	}
	if err != nil {
		d.errs = append(d.errs, syntaxError(d.file, src, err))
		return nil, false
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		if err != nil {
			d.errs = append(d.errs, syntaxError(d.file, src, err))
		} else {
			d.add(extra.Line, "", "only one YAML document is allowed per file (remove the second '---')")
		}
		return nil, false
	}
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		return doc.Content[0], true
	}
	return &doc, true
}

func (d *decoder) add(line int, field, format string, args ...any) {
	d.errs = append(d.errs, errorf(d.file, line, field, format, args...))
}

// fail records a value that could not be decoded: semantic checks then
// leave path alone rather than repeat the problem.
func (d *decoder) fail(line int, path, format string, args ...any) {
	d.bad[path] = true
	d.add(line, path, format, args...)
}

// ok reports whether path was given a value that decoded cleanly.
func (d *decoder) ok(path string) bool {
	return d.set(path) && !d.bad[path]
}

// set reports whether path was given a non-null value in the file.
func (d *decoder) set(path string) bool {
	n, ok := d.nodes[path]
	return ok && !isNull(n)
}

// isMapping reports whether path holds a mapping in the file.
func (d *decoder) isMapping(path string) bool {
	n, ok := d.nodes[path]
	return ok && n.Kind == yaml.MappingNode
}

// line returns the line of path's value, or of its closest ancestor that
// appears in the file (the place where a missing field belongs).
func (d *decoder) line(path string) int {
	for {
		if n, ok := d.nodes[path]; ok && n.Line > 0 {
			return n.Line
		}
		if path == "" {
			return 1
		}
		path = parentPath(path)
	}
}

// keyLine is the line of path's key if there is one, else line(path).
func (d *decoder) keyLine(path string) int {
	if k, ok := d.keys[path]; ok {
		return k.Line
	}
	return d.line(path)
}

func parentPath(p string) string {
	i := strings.LastIndexAny(p, ".[")
	if i < 0 {
		return ""
	}
	return p[:i]
}

func joinPath(parent, name string) string {
	if parent == "" {
		return name
	}
	return parent + "." + name
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

func deref(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return strconv.Quote(n.Value)
	}
	return "something else"
}

// decode stores n into v, recording errors under path.
func (d *decoder) decode(n *yaml.Node, path string, v reflect.Value) {
	n = deref(n)
	d.nodes[path] = n
	if isNull(n) {
		return
	}
	if v.Type() == durationType {
		d.duration(n, path, v)
		return
	}
	switch v.Kind() {
	case reflect.Struct:
		d.structure(n, path, v)
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			d.fail(n.Line, path, "expected a list (e.g. [a, b] or lines starting with '- '), got %s", describe(n))
			return
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, c := range n.Content {
			d.decode(c, fmt.Sprintf("%s[%d]", path, i), s.Index(i))
		}
		v.Set(s)
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			d.fail(n.Line, path, "expected a mapping (key: value), got %s", describe(n))
			return
		}
		m := reflect.MakeMap(v.Type())
		d.pairs(n, path, func(key string, k, val *yaml.Node) {
			fp := joinPath(path, key)
			d.keys[fp] = k
			e := reflect.New(v.Type().Elem()).Elem()
			d.decode(val, fp, e)
			m.SetMapIndex(reflect.ValueOf(key), e)
		})
		v.Set(m)
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			d.fail(n.Line, path, "expected a single value, got %s", describe(n))
			return
		}
		v.SetString(n.Value)
	case reflect.Int:
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" {
			d.fail(n.Line, path, "expected a whole number, got %s", describe(n))
			return
		}
		var i int
		if err := n.Decode(&i); err != nil {
			d.fail(n.Line, path, "number %s out of range", n.Value)
			return
		}
		v.SetInt(int64(i))
	case reflect.Bool:
		// YAML 1.2 booleans only: "yes" or "on" are strings there, and a
		// setting silently read as false would surprise.
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!bool" || (n.Value != "true" && n.Value != "false") {
			d.fail(n.Line, path, "expected true or false, got %s", describe(n))
			return
		}
		v.SetBool(n.Value == "true")
	default:
		// Only reached by a programming error in a raw struct.
		d.fail(n.Line, path, "internal error: cannot decode into %s", v.Type())
	}
}

func (d *decoder) duration(n *yaml.Node, path string, v reflect.Value) {
	const hint = "(use e.g. 500ms, 3s)"
	if n.Kind != yaml.ScalarNode {
		d.fail(n.Line, path, "expected a duration %s, got %s", hint, describe(n))
		return
	}
	t, err := time.ParseDuration(n.Value)
	if err != nil {
		if _, nerr := strconv.ParseFloat(n.Value, 64); nerr == nil {
			d.fail(n.Line, path, "invalid duration %q: a unit is needed %s", n.Value, hint)
		} else {
			d.fail(n.Line, path, "invalid duration %q %s", n.Value, hint)
		}
		return
	}
	if t <= 0 {
		d.fail(n.Line, path, "duration %q must be greater than zero", n.Value)
		return
	}
	v.SetInt(int64(t))
}

// pairs walks a mapping, rejecting duplicate and non-scalar keys.
func (d *decoder) pairs(n *yaml.Node, path string, f func(key string, k, v *yaml.Node)) {
	first := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, val := deref(n.Content[i]), n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			d.add(k.Line, path, "keys must be plain names, got %s", describe(k))
			continue
		}
		if k.ShortTag() == "!!merge" {
			d.add(k.Line, joinPath(path, k.Value), "merge keys (<<) are not supported; write the fields out")
			continue
		}
		fp := joinPath(path, k.Value)
		if l, dup := first[k.Value]; dup {
			d.add(k.Line, fp, "given twice (first at line %d); keep one", l)
			continue
		}
		first[k.Value] = k.Line
		f(k.Value, k, val)
	}
}

func (d *decoder) structure(n *yaml.Node, path string, v reflect.Value) {
	if n.Kind != yaml.MappingNode {
		d.fail(n.Line, path, "expected a mapping (key: value), got %s", describe(n))
		return
	}
	t := v.Type()
	var names []string
	index := map[string]int{}
	for i := range t.NumField() {
		name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
		if name == "" || name == "-" {
			continue
		}
		names = append(names, name)
		index[name] = i
	}
	d.pairs(n, path, func(key string, k, val *yaml.Node) {
		fp := joinPath(path, key)
		i, ok := index[key]
		if !ok {
			d.add(k.Line, fp, "unknown field%s (known here: %s)", suggest(key, names), strings.Join(names, ", "))
			return
		}
		d.keys[fp] = k
		d.decode(val, fp, v.Field(i))
	})
}

// suggest proposes the closest known name for a likely typo.
func suggest(key string, names []string) string {
	best, bestDist := "", 3
	for _, n := range names {
		if dist := editDistance(strings.ToLower(key), n); dist < bestDist {
			best, bestDist = n, dist
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf("; did you mean %q?", best)
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// sortedKeys lists a map's keys in order, for stable error output.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
