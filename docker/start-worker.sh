#!/bin/sh
# A Ray worker node joining the head at RAY_HEAD (host:port of its GCS); its CPUs and GPUs run trials.
set -eu
. "$(dirname "$0")/ray-token.sh"
: "${RAY_HEAD:?set RAY_HEAD to the head's GCS address, e.g. ray-head:6379}"
exec ray start --address="$RAY_HEAD" --block --disable-usage-stats \
  ${RAY_NUM_CPUS:+--num-cpus="$RAY_NUM_CPUS"} \
  ${RAY_NUM_GPUS:+--num-gpus="$RAY_NUM_GPUS"} \
  ${RAY_NODE_IP:+--node-ip-address="$RAY_NODE_IP"} \
  ${RAY_TEMP_DIR:+--temp-dir="$RAY_TEMP_DIR"}
