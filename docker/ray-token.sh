#!/bin/sh
# Sourced by the start scripts: every Ray node and the API use the cluster's token (Ray's token
# authentication stays on). The token comes from a file mounted as a secret (RAY_AUTH_TOKEN_FILE,
# default /run/secrets/ray_token) or from RAY_AUTH_TOKEN; nothing is baked into the image.
export RAY_AUTH_MODE=token
if [ -z "${RAY_AUTH_TOKEN:-}" ]; then
  token_file=${RAY_AUTH_TOKEN_FILE:-/run/secrets/ray_token}
  if [ ! -r "$token_file" ]; then
    echo "caviar: no Ray token: mount one at $token_file (a compose or Kubernetes secret) or set RAY_AUTH_TOKEN" >&2
    exit 2
  fi
  RAY_AUTH_TOKEN=$(cat "$token_file")
  export RAY_AUTH_TOKEN
fi
