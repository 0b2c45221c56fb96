#!/bin/sh
# A Ray head that runs no trials (0 CPUs, 0 GPUs): the GCS, the dashboard and the Jobs API, where
# each study's driver runs. Binds its dashboard on the internal network only (compose: no published
# port; Kubernetes: a ClusterIP service).
set -eu
. "$(dirname "$0")/ray-token.sh"
exec ray start --head --block \
  --port="${RAY_GCS_PORT:-6379}" \
  --dashboard-host=0.0.0.0 --dashboard-port="${RAY_DASHBOARD_PORT:-8265}" --include-dashboard=true \
  --num-cpus=0 --num-gpus=0 --disable-usage-stats \
  ${RAY_NODE_IP:+--node-ip-address="$RAY_NODE_IP"} \
  ${RAY_TEMP_DIR:+--temp-dir="$RAY_TEMP_DIR"}
