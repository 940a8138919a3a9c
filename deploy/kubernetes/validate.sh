#!/usr/bin/env bash
# Render every kustomize overlay and validate the result offline: strict Kubernetes schemas
# (kubernetes-validate, which bundles them) for the oldest supported and the newest bundled
# Kubernetes version, the ServiceMonitor against schemas/, and the deployment's invariants
# (validate.py). Installs its tools itself, idempotently:
#   - kustomize: `kubectl kustomize` (kubectl ships in the project's machine image; a standalone
#     `kustomize` on PATH is used first). Needs kustomize v5 (components, `labels`).
#   - kubernetes-validate (PyPI, pinned) in a venv under target/deploy-tools (or
#     $CXB_DEPLOY_TOOLS).
#
#   deploy/kubernetes/validate.sh            all overlays
#   KEEP_RENDERED=dir validate.sh            also keep the rendered YAML in dir
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TOOLS=${CXB_DEPLOY_TOOLS:-$ROOT/target/deploy-tools}
KUBERNETES_VALIDATE=1.37.0
# The oldest Kubernetes the manifests are written for (PDB unhealthyPodEvictionPolicy is GA in
# 1.31, beta and on by default since 1.27; StatefulSet PVC retention is on by default since 1.27).
MIN_KUBE=1.29

# Prints the kustomize command to use and its version ("kustomize build" first, then kubectl's).
if command -v kustomize >/dev/null 2>&1; then
  KUSTOMIZE="kustomize build"
  version=$(kustomize version 2>/dev/null || true)
elif command -v kubectl >/dev/null 2>&1; then
  KUSTOMIZE="kubectl kustomize"
  version=$(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: //p' || true)
else
  echo "validate.sh: needs kubectl (with kustomize v5) or kustomize on PATH" >&2
  exit 1
fi
case "${version#v}" in
  [5-9].*) ;;
  *) echo "validate.sh: kustomize v5 or newer needed ('$KUSTOMIZE' is '${version:-unknown}')" >&2; exit 1 ;;
esac

PY="$TOOLS/venv/bin/python"
if ! "$PY" -c "import kubernetes_validate, sys; sys.exit(kubernetes_validate.__version__ != '$KUBERNETES_VALIDATE')" 2>/dev/null; then
  echo "validate.sh: installing kubernetes-validate $KUBERNETES_VALIDATE into $TOOLS/venv"
  # Debian's own python3 needs python3-venv for this.
  python3 -m venv "$TOOLS/venv" 2>/dev/null || {
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv) >/dev/null
    python3 -m venv "$TOOLS/venv"
  }
  "$PY" -m pip install --quiet --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE"
fi

OUT=${KEEP_RENDERED:-$(mktemp -d)}
[ -n "${KEEP_RENDERED:-}" ] || trap 'rm -rf "$OUT"' EXIT
mkdir -p "$OUT"
rendered=()
for overlay in "$HERE"/overlays/*/; do
  name=$(basename "$overlay")
  $KUSTOMIZE "$overlay" >"$OUT/$name.yaml"
  rendered+=("$OUT/$name.yaml")
done
[ ${#rendered[@]} -gt 0 ] || { echo "validate.sh: no overlays under $HERE/overlays" >&2; exit 1; }
"$PY" "$HERE/validate.py" --kube-version "$MIN_KUBE" --kube-version latest "${rendered[@]}"
