#!/usr/bin/env bash
# Every check of deploy/ that needs no cargo build (CI runs it before the tests): the Kubernetes
# overlays, the HAProxy and nginx configs. tests/tests/deploy.rs covers the Dockerfile, the
# systemd unit and the compose file against the built binary.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
echo "-- kubernetes overlays"
bash "$HERE/kubernetes/validate.sh"
echo "-- haproxy and nginx"
bash "$HERE/check-proxies.sh"
