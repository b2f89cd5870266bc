#!/usr/bin/env bash
# Start optional local services for the test suite. Failing here only skips tests.
#
# PostgreSQL (for tests/test_optuna.py's shared-storage test): Debian's
# `postgresql` package, one cluster on 127.0.0.1:5432, with user `kb`
# (password `kb`) owning database `kb_test`. The tests find it through the
# fixed DSN postgresql://kb:kb@127.0.0.1:5432/kb_test (or KERAS_BEST_TEST_POSTGRES).
# Idempotent: run it again and it only checks that all of that is in place.
set -uo pipefail

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else return 1; fi
}

start_postgres() {
    if ! command -v pg_lsclusters >/dev/null 2>&1; then
        echo "services: installing PostgreSQL (Debian package 'postgresql')"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || return 1
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null || return 1
    fi
    local version
    version=$(pg_lsclusters --no-header 2>/dev/null | awk '{print $1; exit}')
    if [ -z "$version" ]; then
        version=$(ls /usr/lib/postgresql | sort -V | tail -n 1)
        [ -n "$version" ] || return 1
        as_root pg_createcluster "$version" main --port 5432 >/dev/null || return 1
    fi
    local cluster
    cluster=$(pg_lsclusters --no-header | awk -v v="$version" '$1 == v {print $2; exit}')
    if ! pg_lsclusters --no-header | awk -v v="$version" -v c="$cluster" '$1 == v && $2 == c {print $4}' | grep -q online; then
        # Listen on loopback only; pg_ctlcluster works without systemd (containers).
        printf "listen_addresses = '127.0.0.1'\nport = 5432\n" |
            as_root tee "/etc/postgresql/$version/$cluster/conf.d/keras_best_tests.conf" >/dev/null || true
        as_root pg_ctlcluster "$version" "$cluster" start || return 1
    fi
    local psql=(as_root runuser -u postgres -- psql -v ON_ERROR_STOP=1 -qAt -h /var/run/postgresql)
    for _ in $(seq 1 30); do
        "${psql[@]}" -c "select 1" >/dev/null 2>&1 && break
        sleep 1
    done
    if [ "$("${psql[@]}" -c "select 1 from pg_roles where rolname = 'kb'")" != 1 ]; then
        "${psql[@]}" -c "create role kb login password 'kb'" || return 1
    fi
    if [ "$("${psql[@]}" -c "select 1 from pg_database where datname = 'kb_test'")" != 1 ]; then
        "${psql[@]}" -c "create database kb_test owner kb" || return 1
    fi
    PGPASSWORD=kb psql -qAt -h 127.0.0.1 -p 5432 -U kb -d kb_test -c "select 1" >/dev/null || return 1
    echo "services: PostgreSQL $version ready at postgresql://kb:kb@127.0.0.1:5432/kb_test"
}

status=0
start_postgres || { echo "services: PostgreSQL unavailable; its tests will skip"; status=1; }
exit "$status"
