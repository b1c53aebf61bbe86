#!/usr/bin/env bash
# CI: a local PostgreSQL server for the tests of tuning with several workers through one
# Optuna study (tests/test_workers.py). Installs Debian's `postgresql` package when the
# server is missing, creates and starts its cluster when needed (idempotent: a running
# server is left as it is), makes a role that may create databases (each test session
# creates and drops its own) and prints the URL the tests read from
# MHFGEN_TEST_POSTGRES_URL. Needs root (CI runs as root). Listens on localhost only.
set -euo pipefail

ROLE=mhfgen
PASSWORD=mhfgen-ci
DATABASE=mhfgen_test

log() { echo "postgres.sh: $*" >&2; }

server_binary() { ls /usr/lib/postgresql/*/bin/postgres 2>/dev/null | sort -V | tail -1; }

if [ -z "$(server_binary)" ] || ! command -v pg_ctlcluster >/dev/null; then
    log "installing Debian's postgresql package"
    export DEBIAN_FRONTEND=noninteractive
    for attempt in 1 2 3; do
        if apt-get update -qq >&2 && apt-get install -y -qq postgresql >&2; then
            break
        fi
        [ "$attempt" = 3 ] && { log "apt-get failed 3 times"; exit 1; }
        sleep 5
    done
fi

VERSION=$(basename "$(dirname "$(dirname "$(server_binary)")")")
if ! pg_lsclusters -h | awk '{print $1, $2}' | grep -qx "$VERSION main"; then
    log "creating cluster $VERSION/main"
    pg_createcluster "$VERSION" main >&2
fi
PORT=$(pg_lsclusters -h | awk -v v="$VERSION" '$1 == v && $2 == "main" {print $3}')
if ! pg_lsclusters -h | awk -v v="$VERSION" '$1 == v && $2 == "main" {print $4}' | grep -q online; then
    log "starting cluster $VERSION/main on port $PORT"
    pg_ctlcluster "$VERSION" main start >&2
fi
for _ in $(seq 60); do
    pg_isready -q -h 127.0.0.1 -p "$PORT" && break
    sleep 1
done
pg_isready -h 127.0.0.1 -p "$PORT" >&2

psql_admin() { su postgres -c "psql -p $PORT -v ON_ERROR_STOP=1 -tAq $*"; }
if [ "$(psql_admin "-c \"SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'\"")" != 1 ]; then
    psql_admin "-c \"CREATE ROLE $ROLE LOGIN CREATEDB PASSWORD '$PASSWORD'\"" >&2
fi
if [ "$(psql_admin "-c \"SELECT 1 FROM pg_database WHERE datname = '$DATABASE'\"")" != 1 ]; then
    psql_admin "-c \"CREATE DATABASE $DATABASE OWNER $ROLE\"" >&2
fi
echo "postgresql://$ROLE:$PASSWORD@127.0.0.1:$PORT/$DATABASE"
