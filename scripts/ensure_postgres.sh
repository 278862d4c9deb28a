#!/usr/bin/env bash
# Make sure a PostgreSQL answers on 127.0.0.1:5432 for the tests (user postgres, trust auth on
# loopback); each test run creates its own database and drops it after. Machines of this project
# run one already; elsewhere start one from the binaries on PATH (or /usr/lib/postgresql/*/bin),
# installing Debian's `postgresql` package if there are none.
set -euo pipefail
PORT="${MCNC_TEST_PGPORT:-5432}"
ready() { (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null; }
ready && { echo "postgres: running on 127.0.0.1:$PORT"; exit 0; }
find_bin() { command -v "$1" 2>/dev/null || ls /usr/lib/postgresql/*/bin/"$1" 2>/dev/null | sort -V | tail -1; }
if [ -z "$(find_bin initdb)" ]; then
  echo "postgres: not installed, installing postgresql"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq postgresql >/dev/null
fi
INITDB="$(find_bin initdb)"; PG_CTL="$(find_bin pg_ctl)"
DATA="${MCNC_TEST_PGDATA:-${TMPDIR:-/tmp}/mcnc-test-pgdata}"
# initdb and the server refuse to run as root: run them as the postgres user when we are root.
AS=(); if [ "$(id -u)" -eq 0 ]; then id postgres >/dev/null 2>&1 || useradd -r -m postgres; AS=(su postgres -c); fi
run() { if [ ${#AS[@]} -gt 0 ]; then "${AS[@]}" "$*"; else "$@"; fi; }
if [ ! -s "$DATA/PG_VERSION" ]; then
  mkdir -p "$DATA"; [ ${#AS[@]} -eq 0 ] || chown postgres "$DATA"
  run "$INITDB" -D "$DATA" -U postgres --auth=trust >/dev/null
fi
run "$PG_CTL" -D "$DATA" -l "$DATA/server.log" -o "'-c listen_addresses=127.0.0.1 -c port=$PORT'" -w start >/dev/null
ready && { echo "postgres: started on 127.0.0.1:$PORT ($DATA)"; exit 0; }
echo "postgres: failed to start (see $DATA/server.log)" >&2; exit 1
