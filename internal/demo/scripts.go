package demo

import (
	"fmt"
	"strings"
)

// startPrim starts the demo application on the node taking the primary
// role, detached from the script (setsid), and waits until it serves. The
// pid file is where tcluster's Kill9 finds the application.
const startPrim = `#!/bin/sh
# Start the demo application: it listens on :%[2]d and appends the records
# it receives to %[3]s (replicated), fdatasync before each ack.
f="$TANDEM_STATE_DIR/app.pid"
rm -f "$f"
setsid %[1]s demo-app --listen :%[2]d --dir %[3]s --node "$TANDEM_NODE" --pidfile "$f" >>"$TANDEM_STATE_DIR/app.log" 2>&1 </dev/null &
i=0
while [ ! -s "$f" ] && [ $i -lt 500 ]; do sleep 0.01; i=$((i+1)); done
if [ ! -s "$f" ]; then
  echo "demo application did not start on $TANDEM_NODE within 5s; its log ($TANDEM_STATE_DIR/app.log) ends with:"
  tail -n 5 "$TANDEM_STATE_DIR/app.log"
  exit 1
fi
echo "demo application started on $TANDEM_NODE ($1 -> $2), pid $(cat "$f")"
`

// stopPrim stops it: SIGTERM, then SIGKILL after 3 s. A pid file left by
// a crash may name a reused pid: only a demo-app process is signalled.
const stopPrim = `#!/bin/sh
f="$TANDEM_STATE_DIR/app.pid"
# alive: the process exists and is not a zombie waiting for its reaper.
alive() { [ -e "/proc/$1" ] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }
if [ -s "$f" ]; then
  pid=$(cat "$f")
  if tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q demo-app; then
    kill "$pid" 2>/dev/null
    i=0
    while alive "$pid" && [ $i -lt 300 ]; do sleep 0.01; i=$((i+1)); done
    alive "$pid" && kill -9 "$pid" 2>/dev/null
  fi
  rm -f "$f"
fi
echo "demo application stopped on $TANDEM_NODE ($3)"
`

// appScripts are the demo module's start_prim and stop_prim for the
// tandem binary bin.
func appScripts(bin string) map[string]string {
	return map[string]string{
		"start_prim": fmt.Sprintf(startPrim, shellQuote(bin), AppPort, DataDir),
		"stop_prim":  stopPrim,
	}
}

// shellQuote quotes s for sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
