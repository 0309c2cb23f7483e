#!/bin/sh
# Fill deploy/secrets/ with the files docker-compose.yml mounts as secrets.
#
#   deploy/make-secrets.sh            random values for every file that is missing
#
# Existing files are never changed: replace mdm_api_key and webhook_hmac_key with your
# NanoMDM's -api key and -webhook-hmac-key, and keep secrets_key (the master key sealing
# escrowed FileVault keys and PINs) backed up beside the database backups. The folder is
# private (0700); the files are world-readable (0644) because they are bind-mounted into
# containers that run as other users, and only the folder keeps other host users out.
set -eu

DIR=${MDMFLOW_SECRETS_DIR:-$(dirname "$0")/secrets}
mkdir -p "$DIR"
chmod 0700 "$DIR"

token() {  # 24 random bytes, URL-safe base64: a key a person may have to type
    head -c 24 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n'
}

master_key() {  # 32 random bytes, base64: what MDMFLOW_SECRETS_KEY must be
    head -c 32 /dev/urandom | base64 | tr -d '\n'
}

make() {
    if [ -s "$DIR/$1" ]; then
        echo "kept     $DIR/$1"
        return
    fi
    value=$($2)
    printf '%s\n' "$value" > "$DIR/$1"
    chmod 0644 "$DIR/$1"
    echo "created  $DIR/$1"
}

make api_key token
make mdm_api_key token
make webhook_hmac_key token
make secrets_key master_key
make postgres_password token
