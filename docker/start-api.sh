#!/bin/sh
# The API against an existing Ray cluster (RAY_ADDRESS: the head's dashboard, e.g. http://ray-head:8265)
# and the store at CAVIAR_DATABASE_URL (or CAVIAR_DATABASE_URL_FILE, a mounted secret). Beyond
# loopback it needs API tokens: create one with `caviar token create --owner NAME` against the same
# database first (or pass CAVIAR_INSECURE=1 on a trusted network).
set -eu
. "$(dirname "$0")/ray-token.sh"
: "${RAY_ADDRESS:?set RAY_ADDRESS to the Ray head's dashboard, e.g. http://ray-head:8265}"
if [ -z "${CAVIAR_DATABASE_URL:-}" ] && [ -n "${CAVIAR_DATABASE_URL_FILE:-}" ]; then
  CAVIAR_DATABASE_URL=$(cat "$CAVIAR_DATABASE_URL_FILE")
  export CAVIAR_DATABASE_URL
fi
exec caviar serve --host "${CAVIAR_HOST:-0.0.0.0}" --port "${CAVIAR_PORT:-8000}" --ray-address "$RAY_ADDRESS" \
  ${CAVIAR_INSECURE:+--insecure}
