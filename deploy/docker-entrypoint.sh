#!/bin/sh
# The mdmflow image's entrypoint: secrets from files, then the command.
#
# Compose mounts secrets as files (/run/secrets/NAME), while mdmflow reads its keys from
# the environment. For each variable below, NAME_FILE=/path exports NAME with the file's
# content (trailing newlines dropped) and unsets NAME_FILE. Setting both, or naming a
# missing or empty file, stops the container with a message instead of starting with a
# generated key.
#
#   docker compose exec api docker-entrypoint mdmflow runs --id <enrollment id>
set -eu

FROM_FILES="MDMFLOW_API_KEY MDMFLOW_MDM_API_KEY MDMFLOW_WEBHOOK_HMAC_KEY
MDMFLOW_WEBHOOK_BASIC_AUTH MDMFLOW_WEBHOOK_PATH_TOKEN MDMFLOW_SECRETS_KEY MDMFLOW_DB_URL
PGPASSWORD"

fail() {
    echo "docker-entrypoint: $*" >&2
    exit 64
}

for name in $FROM_FILES; do
    eval "file=\${${name}_FILE:-}"
    [ -n "$file" ] || continue
    eval "direct=\${${name}:-}"
    [ -z "$direct" ] || fail "both $name and ${name}_FILE are set; keep one"
    [ -r "$file" ] || fail "${name}_FILE: cannot read $file"
    value=$(cat "$file") || fail "${name}_FILE: cannot read $file"
    [ -n "$value" ] || fail "${name}_FILE: $file is empty"
    export "$name=$value"
    unset "${name}_FILE"
done
unset file direct value

[ "$#" -gt 0 ] || fail "no command given"
exec "$@"
