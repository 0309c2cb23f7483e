#!/bin/sh
# One-shot (temporalio/admin-tools): create or upgrade Temporal's PostgreSQL schemas.
#
# Safe to run on every start: setup-schema only records version 0.0 on an empty database
# and update-schema applies only the versions a database does not have yet. The two
# databases themselves are made by deploy/postgres/initdb when PostgreSQL first starts.
set -eu

: "${POSTGRES_SEEDS:=postgres}" "${DB_PORT:=5432}" "${POSTGRES_USER:=mdmflow}"
: "${DBNAME:=temporal}" "${VISIBILITY_DBNAME:=temporal_visibility}"
SCHEMA=/etc/temporal/schema/postgresql/v12

SQL_PASSWORD=$(cat /run/secrets/postgres_password)
export SQL_PASSWORD

tries=0
until nc -z "$POSTGRES_SEEDS" "$DB_PORT"; do
    tries=$((tries + 1))
    [ "$tries" -lt 60 ] || { echo "PostgreSQL at $POSTGRES_SEEDS:$DB_PORT never answered" >&2; exit 1; }
    sleep 2
done

sql() {
    temporal-sql-tool --plugin postgres12 --ep "$POSTGRES_SEEDS" -p "$DB_PORT" \
        -u "$POSTGRES_USER" "$@"
}

sql --db "$DBNAME" setup-schema -v 0.0
sql --db "$DBNAME" update-schema -d "$SCHEMA/temporal/versioned"
sql --db "$VISIBILITY_DBNAME" setup-schema -v 0.0
sql --db "$VISIBILITY_DBNAME" update-schema -d "$SCHEMA/visibility/versioned"
echo "Temporal schemas are current in $DBNAME and $VISIBILITY_DBNAME"
