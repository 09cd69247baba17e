#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the tests (the origin's metadata store runs its tests against it
# when EDDY_TEST_POSTGRES_URL is set): everything lives in DIR, with trust authentication, listening
# only on a unix socket in DIR and on 127.0.0.1 at a free port. Durability is switched off: nothing
# in it outlives the test run.
#
#     bash scripts/postgres.sh start DIR   # prints the admin URL postgres://postgres@127.0.0.1:PORT/postgres
#     bash scripts/postgres.sh stop DIR    # stops it at once, quietly; DIR is left for the caller to remove
#
# Works as root (as CI runs), where initdb and postgres refuse to run: the cluster then belongs to the
# postgres user that Debian's package creates, and DIR is handed to it.
set -euo pipefail

usage() {
  echo "usage: bash scripts/postgres.sh start|stop DIR" >&2
  exit 2
}
[ $# -eq 2 ] || usage
action=$1
dir=$2

# Debian installs the server outside PATH, one folder per major version: take the newest.
bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
if [ -z "$bindir" ] || [ ! -x "$bindir/pg_ctl" ]; then
  echo "scripts/postgres.sh: no PostgreSQL server in /usr/lib/postgresql/*/bin: install the postgresql package" \
    "(bash scripts/install-deps.sh)" >&2
  exit 1
fi

as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

start() {
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  if [ "$(id -u)" -eq 0 ]; then
    chown postgres: "$dir"
  fi
  if ! as_owner "$bindir/initdb" -D "$dir/data" -U postgres --auth=trust --encoding=UTF8 --no-sync \
    >"$dir/initdb.log" 2>&1; then
    echo "scripts/postgres.sh: initdb failed in $dir/data:" >&2
    tail -n 20 "$dir/initdb.log" >&2
    exit 1
  fi
  cat >>"$dir/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
fsync = off
synchronous_commit = off
full_page_writes = off
EOF
  # A random port, and another if it is taken: postgres fails to bind and pg_ctl says so.
  for _ in 1 2 3 4 5 6 7 8; do
    port=$((20000 + RANDOM % 40000))
    if as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -o "-p $port" -w -t 60 -s start \
      >/dev/null 2>&1; then
      echo "postgres://postgres@127.0.0.1:$port/postgres"
      return 0
    fi
  done
  echo "scripts/postgres.sh: PostgreSQL did not start in $dir/data:" >&2
  tail -n 20 "$dir/server.log" >&2
  exit 1
}

stop() {
  if [ -d "$dir/data" ]; then
    as_owner "$bindir/pg_ctl" -D "$dir/data" -m immediate -s stop >/dev/null 2>&1 || true
  fi
}

case $action in
  start) start ;;
  stop) stop ;;
  *) usage ;;
esac
