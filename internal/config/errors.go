package config

import (
	"cmp"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Error is one problem in a configuration file. Line is 0 when the problem
// is not tied to a line (missing file, script permissions); Field is empty
// when it is not tied to a field.
type Error struct {
	File  string
	Line  int
	Field string
	Msg   string
}

// Error formats as "file:line: field: msg", leaving out empty parts.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteString(":")
		b.WriteString(strconv.Itoa(e.Line))
	}
	if e.Field != "" {
		b.WriteString(": ")
		b.WriteString(e.Field)
	}
	b.WriteString(": ")
	b.WriteString(e.Msg)
	return b.String()
}

// Errors returns every *Error inside err (as produced by the Load
// functions), in order. Errors of other types are skipped.
func Errors(err error) []*Error {
	var out []*Error
	var walk func(error)
	walk = func(err error) {
		if err == nil {
			return
		}
		if e, ok := err.(*Error); ok {
			out = append(out, e)
			return
		}
		if j, ok := err.(interface{ Unwrap() []error }); ok {
			for _, e := range j.Unwrap() {
				walk(e)
			}
			return
		}
		var e *Error
		if errors.As(err, &e) {
			out = append(out, e)
		}
	}
	walk(err)
	return out
}

// joinErrors sorts by file then line so output reads top to bottom, and
// returns nil for an empty list.
func joinErrors(errs []*Error) error {
	if len(errs) == 0 {
		return nil
	}
	errs = slices.Clone(errs)
	slices.SortStableFunc(errs, func(a, b *Error) int {
		if c := cmp.Compare(a.File, b.File); c != 0 {
			return c
		}
		return cmp.Compare(a.Line, b.Line)
	})
	// Drop exact duplicates (the same module checked from two nodes).
	errs = slices.CompactFunc(errs, func(a, b *Error) bool { return *a == *b })
	list := make([]error, len(errs))
	for i, e := range errs {
		list[i] = e
	}
	return errors.Join(list...)
}

var yamlLineRe = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

var anchorRe = regexp.MustCompile(`^unknown anchor '(.*)' referenced$`)

// parserProblems are the yaml parser's (not scanner's) messages. The yaml
// package reports their line 0-based (scanner errors are 1-based), so we
// add one; without a line they are on the first line.
var parserProblems = map[string]bool{
	"did not find expected ',' or ']'":       true,
	"did not find expected ',' or '}'":       true,
	"did not find expected '-' indicator":    true,
	"did not find expected <document start>": true,
	"did not find expected <stream-start>":   true,
	"did not find expected key":              true,
	"did not find expected node content":     true,
	"found duplicate %TAG directive":         true,
	"found duplicate %YAML directive":        true,
	"found incompatible YAML document":       true,
	"found undefined tag handle":             true,
}

// syntaxError turns a parser error of the yaml package into an *Error.
func syntaxError(file string, src []byte, err error) *Error {
	msg := err.Error()
	line := 0
	if m := yamlLineRe.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	} else {
		msg = strings.TrimPrefix(msg, "yaml: ")
	}
	if parserProblems[msg] {
		line++
	}
	if m := anchorRe.FindStringSubmatch(msg); m != nil && line == 0 {
		for i, l := range strings.Split(string(src), "\n") {
			if strings.Contains(l, "*"+m[1]) {
				line = i + 1
				break
			}
		}
	}
	if strings.Contains(msg, "cannot start any token") && lineHasTab(src, line) {
		msg += " (a tab is used for indentation; YAML needs spaces)"
	}
	return &Error{File: file, Line: line, Msg: "invalid YAML: " + msg}
}

func lineHasTab(src []byte, line int) bool {
	if line <= 0 {
		return false
	}
	lines := strings.Split(string(src), "\n")
	if line > len(lines) {
		return false
	}
	return strings.Contains(lines[line-1], "\t")
}

func errorf(file string, line int, field, format string, args ...any) *Error {
	return &Error{File: file, Line: line, Field: field, Msg: fmt.Sprintf(format, args...)}
}
