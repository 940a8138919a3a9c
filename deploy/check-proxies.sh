#!/usr/bin/env bash
# Check deploy/haproxy.cfg and deploy/nginx.conf: `haproxy -c` and `nginx -t` on the files as
# shipped, then check_proxies.py drives both against a stub worker on 127.0.0.1 (routes, 404s,
# the fleet_available health check, the Upgrade map). Installs haproxy, nginx and openssl from
# Debian when missing (idempotent); makes a throwaway TLS certificate for HAProxy's listener.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
need=()
for tool in haproxy nginx openssl; do
  command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "check-proxies: installing ${need[*]} from Debian"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}") >/dev/null
fi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
openssl req -x509 -newkey rsa:2048 -nodes -subj /CN=calls.test -days 1 \
  -keyout "$TMP/key.pem" -out "$TMP/cert.pem" >/dev/null 2>&1
cat "$TMP/cert.pem" "$TMP/key.pem" >"$TMP/calls.pem"
python3 "$HERE/check_proxies.py" "$TMP/calls.pem"
