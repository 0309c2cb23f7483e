#!/bin/sh
# One-shot (temporalio/admin-tools): the namespace and mdmflow's search attributes.
#
#   setup-namespace.sh NAME=Type...      e.g. MdmEnrollmentId=Keyword
#
# Creates only what is missing, so it runs on every `docker compose up`. It ends once a
# visibility query naming every attribute succeeds: mdmflow's services start after it
# (service_completed_successfully) and can tag their first run at once.
set -eu

ADDRESS=${TEMPORAL_ADDRESS:-temporal:7233}
NAMESPACE=${TEMPORAL_NAMESPACE:-default}
RETENTION=${TEMPORAL_RETENTION:-720h}

# The frontend's name can resolve to an IPv6 address it does not listen on.
host=${ADDRESS%:*}
port=${ADDRESS##*:}
ip=$(getent ahosts "$host" | awk '$1 ~ /^[0-9.]+$/ && $2 == "STREAM" { print $1; exit }') || true
[ -z "$ip" ] || ADDRESS="$ip:$port"

t() { temporal --address "$ADDRESS" "$@"; }
quiet() { "$@" >/dev/null 2>&1; }

# retry TIMES COMMAND...: until it succeeds, 2 seconds apart; fails after TIMES tries.
retry() {
    times=$1
    shift
    try=1
    until "$@"; do
        [ "$try" -lt "$times" ] || return 1
        try=$((try + 1))
        sleep 2
    done
}

retry 60 quiet t operator cluster health \
    || { echo "Temporal at $ADDRESS is not healthy" >&2; exit 1; }

if quiet t operator namespace describe --namespace "$NAMESPACE"; then
    echo "namespace $NAMESPACE exists"
else
    t operator namespace create --namespace "$NAMESPACE" --retention "$RETENTION"
fi

# A new namespace reaches every part of the server a few seconds after it is created.
existing=$(retry 15 t operator search-attribute list --namespace "$NAMESPACE")
query=""
for spec in "$@"; do
    name=${spec%%=*}
    type=${spec#*=}
    if printf '%s\n' "$existing" | grep -qw -- "$name"; then
        echo "search attribute $name exists"
    else
        retry 15 t operator search-attribute create --namespace "$NAMESPACE" \
            --name "$name" --type "$type"
    fi
    query="${query:+$query AND }$name = 'mdmflow-setup-probe'"
done

# New attributes reach the frontend's cache a little after they are created.
[ -n "$query" ] || exit 0
retry 30 quiet t workflow list --namespace "$NAMESPACE" --query "$query" --limit 1 \
    || { echo "search attributes still unknown to Temporal: $query" >&2; exit 1; }
echo "namespace $NAMESPACE is ready with: $*"
