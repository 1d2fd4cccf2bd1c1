#!/usr/bin/env bash
# A throwaway PostgreSQL for the keystore's PostgreSQL tests and the replica end-to-end tests.
#
#   scripts/postgres.sh start   install PostgreSQL (Debian package `postgresql`) if absent,
#                               initialise a cluster, start it on 127.0.0.1, create the
#                               database, print its URL on stdout
#   scripts/postgres.sh url     print the URL on stdout (fails if the server is not running)
#   scripts/postgres.sh ca      print the path of the CA certificate of the server's TLS
#                               certificate (for sslmode=verify-full&sslrootcert=...)
#   scripts/postgres.sh stop    stop the server and remove the cluster
#   scripts/postgres.sh status  exit 0 if running
#
# Idempotent: `start` on a running cluster only prints the URL; `stop` on nothing does nothing.
# Everything else goes to stderr, so `url=$(scripts/postgres.sh start)` works.
#
# The cluster is for tests only: trust authentication, listening on loopback only, fsync off.
# It offers TLS (ssl=on; plaintext still accepted) with a certificate for 127.0.0.1 and
# localhost signed by a throwaway CA made with openssl at initialisation (its key is deleted at
# once), so clients can test every sslmode against it.
# As root, the server runs as the `postgres` user (created by the Debian package); PostgreSQL
# refuses to run as root.
#
# Settings (environment):
#   KEYGATE_PG_PORT  port on 127.0.0.1 (default 25432: below Linux's ephemeral range, 32768 and
#                    up, so that no outgoing connection of a busy test machine can hold it)
#   KEYGATE_PG_DIR   cluster directory (default /tmp/keygate-postgres-$KEYGATE_PG_PORT); it must
#                    be reachable by the postgres user, which is why it is not under the checkout
#   KEYGATE_PG_DB    database name (default keygate)
set -euo pipefail

PORT=${KEYGATE_PG_PORT:-25432}
DIR=${KEYGATE_PG_DIR:-/tmp/keygate-postgres-$PORT}
DB=${KEYGATE_PG_DB:-keygate}
SUPERUSER=postgres
URL="postgres://$SUPERUSER@127.0.0.1:$PORT/$DB"

say() { printf '[postgres] %s\n' "$*" >&2; }
die() { say "FAIL: $*"; exit 1; }

case "$PORT" in
  '' | *[!0-9]*) die "KEYGATE_PG_PORT must be a port number (got '$PORT')" ;;
esac
case "$DB" in
  '' | *[!A-Za-z0-9_]*) die "KEYGATE_PG_DB must be [A-Za-z0-9_]+ (got '$DB')" ;;
esac

# The newest installed server's bin directory (Debian: /usr/lib/postgresql/<major>/bin).
find_bindir() {
  local d
  d=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
  if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
    printf '%s\n' "$d"
    return 0
  fi
  if command -v pg_config >/dev/null 2>&1; then
    d=$(pg_config --bindir 2>/dev/null || true)
    if [ -n "$d" ] && [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ]; then
      printf '%s\n' "$d"
      return 0
    fi
  fi
  return 1
}

install_postgres() {
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || die "PostgreSQL is not installed and installing it needs root (or sudo)"
    sudo=(sudo)
  fi
  say "installing the Debian package postgresql"
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq postgresql >/dev/null
}

BINDIR=""
need_bindir() {
  if [ -z "$BINDIR" ]; then
    BINDIR=$(find_bindir) || { install_postgres; BINDIR=$(find_bindir) || die "no initdb/pg_ctl after installing postgresql"; }
  fi
}

# Runs a command as the cluster's owner: the postgres user when we are root, else ourselves.
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then
    id -u postgres >/dev/null 2>&1 || die "running as root, but there is no postgres user to run the server"
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

is_running() {
  [ -f "$DIR/data/PG_VERSION" ] || return 1
  need_bindir
  as_owner "$BINDIR/pg_ctl" -D "$DIR/data" status >/dev/null 2>&1
}

# psql against the maintenance database over TCP.
psql_admin() {
  PGCONNECT_TIMEOUT=5 psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U "$SUPERUSER" -d postgres "$@"
}

# A throwaway CA and the server's certificate it signs, in $DIR/tls (owned by the server's user).
make_tls() {
  local t="$DIR/tls"
  command -v openssl >/dev/null || die "no openssl (Debian package openssl)"
  mkdir -p "$t"
  local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
  openssl req -x509 "${ec[@]}" -days 30 -subj "/CN=keygate test PostgreSQL CA" \
    -keyout "$t/ca.key" -out "$t/ca.crt" 2>/dev/null || die "openssl: cannot make the CA"
  openssl req "${ec[@]}" -subj "/CN=localhost" -keyout "$t/server.key" -out "$t/server.csr" \
    2>/dev/null || die "openssl: cannot make the server key"
  printf '%s\n' 'subjectAltName=DNS:localhost,IP:127.0.0.1' 'basicConstraints=critical,CA:FALSE' \
    'keyUsage=critical,digitalSignature' 'extendedKeyUsage=serverAuth' >"$t/server.ext"
  openssl x509 -req -in "$t/server.csr" -CA "$t/ca.crt" -CAkey "$t/ca.key" -CAcreateserial \
    -days 30 -extfile "$t/server.ext" -out "$t/server.crt" 2>/dev/null \
    || die "openssl: cannot sign the server certificate"
  rm -f "$t/ca.key" "$t/ca.srl" "$t/server.csr" "$t/server.ext"
  chmod 0755 "$t"
  chmod 0644 "$t/ca.crt" "$t/server.crt"
  chmod 0600 "$t/server.key"
  if [ "$(id -u)" -eq 0 ]; then chown -R postgres:postgres "$t"; fi
}

start() {
  need_bindir
  if ! is_running; then
    if [ ! -f "$DIR/data/PG_VERSION" ]; then
      rm -rf "$DIR"
      mkdir -p "$DIR/data"
      chmod 0755 "$DIR"
      chmod 0700 "$DIR/data"
      if [ "$(id -u)" -eq 0 ]; then chown -R postgres:postgres "$DIR"; fi
      say "initialising a cluster in $DIR/data"
      as_owner "$BINDIR/initdb" -D "$DIR/data" --username="$SUPERUSER" --auth=trust \
        --encoding=UTF8 --no-locale >"$DIR/initdb.log" 2>&1 \
        || { cat "$DIR/initdb.log" >&2; die "initdb failed"; }
    fi
    [ -f "$DIR/tls/server.key" ] || make_tls
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
      die "127.0.0.1:$PORT is already taken by another process (set KEYGATE_PG_PORT)"
    fi
    say "starting PostgreSQL $("$BINDIR/postgres" --version | awk '{print $3}') on 127.0.0.1:$PORT"
    # Loopback only, sockets in the cluster directory, no durability (a throwaway test cluster).
    as_owner "$BINDIR/pg_ctl" -D "$DIR/data" -l "$DIR/postgres.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $PORT -c unix_socket_directories=$DIR \
          -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
          -c max_connections=300 -c shared_buffers=64MB \
          -c ssl=on -c ssl_cert_file=$DIR/tls/server.crt -c ssl_key_file=$DIR/tls/server.key" \
      start >/dev/null || { tail -n 30 "$DIR/postgres.log" >&2 || true; die "pg_ctl start failed"; }
  fi
  command -v psql >/dev/null || die "no psql (Debian package postgresql-client)"
  if [ "$(psql_admin -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != "1" ]; then
    psql_admin -c "CREATE DATABASE \"$DB\"" >/dev/null
    say "created database $DB"
  fi
  printf '%s\n' "$URL"
}

stop() {
  if [ -f "$DIR/data/PG_VERSION" ]; then
    need_bindir
    if is_running; then
      say "stopping PostgreSQL on 127.0.0.1:$PORT"
      as_owner "$BINDIR/pg_ctl" -D "$DIR/data" -m fast -w -t 60 stop >/dev/null
    fi
  fi
  if [ -d "$DIR" ]; then
    rm -rf "$DIR"
    say "removed $DIR"
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  url)
    is_running || die "not running (scripts/postgres.sh start)"
    printf '%s\n' "$URL"
    ;;
  ca)
    [ -f "$DIR/tls/ca.crt" ] || die "no cluster with TLS (scripts/postgres.sh start)"
    printf '%s\n' "$DIR/tls/ca.crt"
    ;;
  status)
    if is_running; then say "running: $URL"; else say "not running"; exit 1; fi
    ;;
  *)
    echo "usage: $0 start|stop|url|ca|status" >&2
    exit 2
    ;;
esac
