#!/usr/bin/env bash
# Runs every test of the repository: unit tests, then the multi-host
# end-to-end tests, which need root (network namespaces) and skip without it.
# As root it first installs the system tools the tests use (Debian packages).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

# command -> Debian package
declare -A tools=(
  [ip]=iproute2 [nsenter]=util-linux [unshare]=util-linux [nft]=nftables
  [ping]=iputils-ping [keepalived]=keepalived
  [runuser]=util-linux [ipcrm]=util-linux [mountpoint]=util-linux
  [nginx]=nginx
)
missing=()
for cmd in "${!tools[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${tools[$cmd]}")
done
# PostgreSQL for the application tests (server, initdb, pg_ctl, pgbench):
# Debian keeps them in /usr/lib/postgresql/VERSION/bin, off the PATH.
for tool in pg_ctl initdb postgres pgbench; do
  compgen -G "/usr/lib/postgresql/*/bin/$tool" >/dev/null || { missing+=(postgresql); break; }
done
if ((${#missing[@]})); then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing: ${missing[*]}"
    apt-get update -qq
    # Tests run their own daemons (nginx...) in test hosts: never start the
    # system services the packages ship.
    policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && policy=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(printf '%s\n' "${missing[@]}" | sort -u) >/dev/null
    if [ -n "$policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
  else
    echo "warning: missing ${missing[*]}; the tests that need them will fail or skip" >&2
  fi
fi

go vet ./...
go test -count=1 -timeout 20m ./... "$@"
