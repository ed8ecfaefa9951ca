#!/bin/sh
# The official image's contract, as far as the project uses it: initialise an empty $PGDATA with the superuser
# $POSTGRES_USER (password $POSTGRES_PASSWORD, scram-sha-256 over TCP) and database $POSTGRES_DB, then run the
# server as the postgres user, listening on every address.
set -eu
mkdir -p "$PGDATA" /var/run/postgresql
chown -R postgres:postgres "$PGDATA" /var/run/postgresql
chmod 0700 "$PGDATA"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    printf '%s\n' "$POSTGRES_PASSWORD" > /tmp/pwfile
    chown postgres /tmp/pwfile
    runuser -u postgres -- initdb --username="$POSTGRES_USER" --pwfile=/tmp/pwfile --auth-local=trust \
        --auth-host=scram-sha-256 -D "$PGDATA" >/dev/null
    rm -f /tmp/pwfile
    echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
    runuser -u postgres -- pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
    if [ "${POSTGRES_DB:-$POSTGRES_USER}" != postgres ]; then
        runuser -u postgres -- createdb --username="$POSTGRES_USER" "${POSTGRES_DB:-$POSTGRES_USER}"
    fi
    runuser -u postgres -- pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
fi
exec runuser -u postgres -- "$@" -D "$PGDATA" -c listen_addresses='*'
