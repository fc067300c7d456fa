#!/usr/bin/env bash
# A throwaway PostgreSQL 15 cluster for the tests (Debian's `postgresql` package).
#
#   scripts/pg-test-server.sh start   initdb (once) and start; create role and database `vmgrid`
#   scripts/pg-test-server.sh url     print the libpq URL of the test database
#   scripts/pg-test-server.sh stop    stop the server and delete the cluster
#
# The cluster lives in $VMGRID_PG_DIR (default /tmp/vmgrid-pg): data/, sock/, log;
# `make test` (scripts/run-tests.sh) uses its own, /tmp/vmgrid-pg/run-PID, so that
# concurrent runs do not share or stop each other's server.
# It listens on the unix socket in sock/ only (no TCP), trusts local connections
# (the socket directory is 0700, so only its owner and root can connect), and
# trades durability for speed (fsync off) unless VMGRID_PG_DURABLE=1 (fsync, synchronous_commit
# and full_page_writes on, the server's defaults: what a production database runs, used by
# bench/infosvc's durable rows). The setting applies when the server starts.
# `start` and `stop` are idempotent.
# The role `vmgrid` is not a superuser: it has CREATEDB (each test makes its own
# database) and CREATEROLE (the information service creates its query role), as
# a production controller's role would.
set -euo pipefail

BIN=/usr/lib/postgresql/15/bin
DIR=${VMGRID_PG_DIR:-/tmp/vmgrid-pg}
DATA=$DIR/data
SOCK=$DIR/sock
LOG=$DIR/log
ROLE=vmgrid
DB=vmgrid

# The server refuses to run as root: run its tools as `postgres` then.
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

url() { echo "postgresql://$ROLE@/$DB?host=$SOCK"; }

running() { [ -f "$DATA/PG_VERSION" ] && as_owner "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; }

psql_admin() {
  as_owner psql -X -q -v ON_ERROR_STOP=1 -h "$SOCK" -d postgres "$@"
}

start() {
  [ -x "$BIN/initdb" ] || { echo "pg-test-server: $BIN/initdb missing (apt-get install postgresql)" >&2; exit 1; }
  if [ ! -f "$DATA/PG_VERSION" ]; then
    # The server (as postgres) must be able to reach $DIR through its parent.
    [ -d "$(dirname "$DIR")" ] || install -d -m 0711 "$(dirname "$DIR")"
    mkdir -p "$DIR"
    mkdir -p "$DATA" "$SOCK"
    [ "$(id -u)" -eq 0 ] && chown postgres:postgres "$DIR" "$DATA" "$SOCK"
    chmod 700 "$DATA" "$SOCK"
    chmod 711 "$DIR"
    as_owner "$BIN/initdb" -D "$DATA" -U postgres --auth=trust --encoding=UTF8 --locale=C \
      >"$DIR/initdb.log" 2>&1 || { cat "$DIR/initdb.log" >&2; exit 1; }
  fi
  local durability="-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
  [ "${VMGRID_PG_DURABLE:-0}" = 1 ] && durability="-c fsync=on -c synchronous_commit=on -c full_page_writes=on"
  if ! running; then
    as_owner "$BIN/pg_ctl" -D "$DATA" -l "$LOG" -w -t 60 start \
      -o "-c listen_addresses='' -c unix_socket_directories='$SOCK' -c unix_socket_permissions=0700 \
          $durability -c max_connections=300" \
      >/dev/null || { tail -20 "$LOG" >&2; exit 1; }
  fi
  psql_admin <<SQL
SELECT 'CREATE ROLE $ROLE LOGIN CREATEDB CREATEROLE'
  WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$ROLE') \gexec
SELECT 'CREATE DATABASE $DB OWNER $ROLE'
  WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = '$DB') \gexec
SQL
}

stop() {
  if running; then as_owner "$BIN/pg_ctl" -D "$DATA" -m immediate -w stop >/dev/null; fi
  # Only what start made: $DIR may hold other clusters (scripts/run-tests.sh
  # puts one per run in $DIR/run-PID).
  rm -rf "$DATA" "$SOCK" "$LOG" "$DIR/initdb.log"
  rmdir "$DIR" 2>/dev/null || true
}

case "${1:-}" in
  start) start; url ;;
  stop) stop ;;
  url) url ;;
  *) echo "usage: $0 start|stop|url" >&2; exit 2 ;;
esac
