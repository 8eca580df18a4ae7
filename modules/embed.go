// Package modules holds the built-in module templates that
// "tandem module new" copies into a modules directory.
package modules

import "embed"

// FS holds one directory per template. Embedded
// files carry no permission bits: the copier marks bin/ files executable.
//
//go:embed all:mirror all:farm all:nginx
var FS embed.FS
