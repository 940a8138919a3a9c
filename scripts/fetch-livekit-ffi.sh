#!/usr/bin/env bash
# Fetch LiveKit's FFI engine (liblivekit_ffi.so) from the pinned PyPI `livekit` wheel.
#
#   scripts/fetch-livekit-ffi.sh [DEST]                 default DEST: target/livekit-ffi (repo root)
#   scripts/fetch-livekit-ffi.sh --write-protos DIR     regenerate the .proto files from the wheel
#
# The official `livekit` crate cannot build on these machines (webrtc-sys downloads a prebuilt
# libwebrtc). The Python SDK wheel ships LiveKit's own FFI engine, built from rust-sdks'
# livekit-ffi, as a self-contained shared library. This script downloads that wheel with pip,
# checks its sha256 against the pin below, and puts into DEST:
#
#   liblivekit_ffi.so            the engine (checked against its own pinned sha256 as well)
#   livekit_ffi.h                the C header shipped beside it
#   LICENSE.md                   the engine's third-party licences (libwebrtc, ...)
#   livekit_ffi_descriptors.pb   a protobuf FileDescriptorSet of the FFI protocol, taken from the
#                                wheel's generated *_pb2.py modules: the exact protocol this
#                                library speaks. cxb-livekit-ffi's tests compare it with the
#                                committed crates/cxb-livekit-ffi/proto/*.proto.
#   VERSION                      what was fetched (wheel, hashes)
#
# Idempotent: a DEST whose library and descriptors already match the pins is left alone.
# Nothing else downloads: the crate builds from the committed .proto files and loads the library
# at run time from LIVEKIT_FFI_LIB or DEST.
#
# --write-protos DIR regenerates crates/cxb-livekit-ffi/proto from the wheel's descriptors after a
# version bump (the wheel has no .proto sources; the descriptors are what the library was built
# with). It needs the `protobuf` Python package, which it installs into a throwaway venv.
set -euo pipefail

LIVEKIT_VERSION=1.2.1
WHEEL_PLATFORM=manylinux_2_28_x86_64
WHEEL_FILE="livekit-${LIVEKIT_VERSION}-py3-none-${WHEEL_PLATFORM}.whl"
WHEEL_SHA256=c9a0269cc23a889e20f716405a59fbae375a0248ea3d2d043da103cfb0b71711
LIB_SHA256=b0e3b91dcf42b486045b6acca4863b132e3c4d114d5701b5759c7661c04ea1eb
# Where the pieces live inside the wheel.
RES_DIR=livekit/rtc/resources
PROTO_PY_DIR=livekit/rtc/_proto

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WRITE_PROTOS=""
DEST=""
while [ $# -gt 0 ]; do
  case "$1" in
    --write-protos) WRITE_PROTOS=${2:?--write-protos needs a directory}; shift 2 ;;
    -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
    -*) echo "unknown option: $1" >&2; exit 2 ;;
    *) DEST=$1; shift ;;
  esac
done
DEST=${DEST:-$ROOT/target/livekit-ffi}

if [ "$(uname -s)" != Linux ] || [ "$(uname -m)" != x86_64 ]; then
  echo "fetch-livekit-ffi: only linux x86_64 is pinned (this is $(uname -s) $(uname -m))" >&2
  exit 1
fi
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || { echo "fetch-livekit-ffi: $PY not found (pip downloads the wheel)" >&2; exit 1; }

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

version_text() {
  printf 'wheel=%s\nwheel_sha256=%s\nlib_sha256=%s\n' "$WHEEL_FILE" "$WHEEL_SHA256" "$LIB_SHA256"
}

up_to_date() {
  [ -f "$DEST/liblivekit_ffi.so" ] && [ -f "$DEST/livekit_ffi_descriptors.pb" ] && [ -f "$DEST/VERSION" ] &&
    [ "$(cat "$DEST/VERSION")" = "$(version_text)" ] && [ "$(sha256_of "$DEST/liblivekit_ffi.so")" = "$LIB_SHA256" ]
}

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

download_wheel() {
  echo "fetch-livekit-ffi: downloading $WHEEL_FILE with pip" >&2
  "$PY" -m pip download "livekit==${LIVEKIT_VERSION}" --no-deps --only-binary=:all: \
    --platform "$WHEEL_PLATFORM" --python-version 3.11 --disable-pip-version-check --progress-bar off \
    -d "$TMP/wheel" >&2
  local whl="$TMP/wheel/$WHEEL_FILE"
  [ -f "$whl" ] || { echo "fetch-livekit-ffi: pip did not produce $WHEEL_FILE" >&2; ls "$TMP/wheel" >&2; exit 1; }
  local got
  got=$(sha256_of "$whl")
  if [ "$got" != "$WHEEL_SHA256" ]; then
    echo "fetch-livekit-ffi: sha256 mismatch for $WHEEL_FILE: got $got, pinned $WHEEL_SHA256" >&2
    exit 1
  fi
  WHEEL_PATH=$whl
}

# Unpacks the library, header and licences, and builds the FileDescriptorSet from the serialized
# FileDescriptorProtos that protoc embedded in each *_pb2.py (`AddSerializedFile(b'...')`).
# Standard library only: the bytes literal is read with ast, and a FileDescriptorSet is just
# `repeated FileDescriptorProto file = 1`, i.e. each file as a length-delimited field 1.
extract() {
  "$PY" - "$WHEEL_PATH" "$1" "$RES_DIR" "$PROTO_PY_DIR" <<'PY'
import ast, sys, zipfile, os
whl, out, res_dir, proto_dir = sys.argv[1:5]
os.makedirs(out, exist_ok=True)
def varint(n):
    b = bytearray()
    while True:
        x = n & 0x7F
        n >>= 7
        if n:
            b.append(x | 0x80)
        else:
            b.append(x)
            return bytes(b)
with zipfile.ZipFile(whl) as z:
    for name in ("liblivekit_ffi.so", "livekit_ffi.h", "LICENSE.md"):
        with z.open(f"{res_dir}/{name}") as src, open(os.path.join(out, name), "wb") as dst:
            dst.write(src.read())
    fds = bytearray()
    count = 0
    for info in sorted(z.infolist(), key=lambda i: i.filename):
        n = info.filename
        if not (n.startswith(proto_dir + "/") and n.endswith("_pb2.py")):
            continue
        tree = ast.parse(z.read(n).decode("utf-8"))
        found = [ast.literal_eval(c.args[0]) for c in ast.walk(tree)
                 if isinstance(c, ast.Call) and getattr(c.func, "attr", "") == "AddSerializedFile"]
        if len(found) != 1:
            sys.exit(f"{n}: expected one AddSerializedFile call, found {len(found)}")
        fds += b"\x0a" + varint(len(found[0])) + found[0]
        count += 1
    if count == 0:
        sys.exit("no *_pb2.py descriptors in the wheel")
    with open(os.path.join(out, "livekit_ffi_descriptors.pb"), "wb") as f:
        f.write(fds)
    print(f"fetch-livekit-ffi: {count} protocol files described", file=sys.stderr)
PY
}

if [ -n "$WRITE_PROTOS" ]; then
  download_wheel
  extract "$TMP/out"
  "$PY" -m venv "$TMP/venv"
  "$TMP/venv/bin/pip" install --quiet --disable-pip-version-check 'protobuf>=5' >&2
  mkdir -p "$WRITE_PROTOS"
  # Prints .proto source from descriptors. Handles what the FFI protocol uses (proto2 messages,
  # enums, oneofs, maps, nested types, field options deprecated/packed/default) and refuses
  # anything else, so a protocol change that needs more is noticed rather than mistranslated.
  "$TMP/venv/bin/python" - "$TMP/out/livekit_ffi_descriptors.pb" "$WRITE_PROTOS" "$WHEEL_FILE" <<'PY'
import os, sys
from google.protobuf import descriptor_pb2 as D
FD = D.FieldDescriptorProto
SCALAR = {FD.TYPE_DOUBLE: "double", FD.TYPE_FLOAT: "float", FD.TYPE_INT64: "int64", FD.TYPE_UINT64: "uint64",
          FD.TYPE_INT32: "int32", FD.TYPE_FIXED64: "fixed64", FD.TYPE_FIXED32: "fixed32", FD.TYPE_BOOL: "bool",
          FD.TYPE_STRING: "string", FD.TYPE_BYTES: "bytes", FD.TYPE_UINT32: "uint32", FD.TYPE_SFIXED32: "sfixed32",
          FD.TYPE_SFIXED64: "sfixed64", FD.TYPE_SINT32: "sint32", FD.TYPE_SINT64: "sint64"}
LABEL = {FD.LABEL_OPTIONAL: "optional", FD.LABEL_REQUIRED: "required", FD.LABEL_REPEATED: "repeated"}
def tname(f): return SCALAR.get(f.type) or f.type_name
def fopts(f):
    o = []
    if f.HasField("default_value"):
        v = f.default_value
        if f.type == FD.TYPE_STRING: v = '"%s"' % v.replace("\\", "\\\\").replace('"', '\\"')
        o.append("default = %s" % v)
    if f.options.HasField("deprecated"): o.append("deprecated = %s" % str(f.options.deprecated).lower())
    if f.options.HasField("packed"): o.append("packed = %s" % str(f.options.packed).lower())
    if f.HasField("json_name"): o.append('json_name = "%s"' % f.json_name)
    rest = D.FieldOptions(); rest.CopyFrom(f.options); rest.ClearField("deprecated"); rest.ClearField("packed")
    if rest.ByteSize(): sys.exit("unsupported field option on %s: %s" % (f.name, rest))
    return (" [%s]" % ", ".join(o)) if o else ""
def enum(e, ind, out):
    if e.options.ByteSize() or e.reserved_range or e.reserved_name: sys.exit("unsupported enum feature in " + e.name)
    out.append("%senum %s {" % (ind, e.name))
    for v in e.value:
        if v.options.ByteSize(): sys.exit("unsupported enum value option in " + e.name)
        out.append("%s  %s = %d;" % (ind, v.name, v.number))
    out.append(ind + "}")
def message(m, ind, out):
    if m.extension or m.extension_range or m.reserved_name: sys.exit("unsupported message feature in " + m.name)
    out.append("%smessage %s {" % (ind, m.name))
    entries = {n.name: n for n in m.nested_type if n.options.map_entry}
    for n in m.nested_type:
        if n.name not in entries: message(n, ind + "  ", out)
    for e in m.enum_type: enum(e, ind + "  ", out)
    if m.reserved_range:
        out.append("%s  reserved %s;" % (ind, ", ".join(
            str(r.start) if r.end == r.start + 1 else "%d to %d" % (r.start, r.end - 1) for r in m.reserved_range)))
    seen, i, fields = set(), 0, list(m.field)
    while i < len(fields):
        f = fields[i]
        if f.HasField("oneof_index") and not f.proto3_optional:
            oi = f.oneof_index
            if oi in seen: sys.exit("non-contiguous oneof in " + m.name)
            seen.add(oi)
            out.append("%s  oneof %s {" % (ind, m.oneof_decl[oi].name))
            while i < len(fields) and fields[i].HasField("oneof_index") and fields[i].oneof_index == oi:
                g = fields[i]; out.append("%s    %s %s = %d%s;" % (ind, tname(g), g.name, g.number, fopts(g))); i += 1
            out.append(ind + "  }")
            continue
        short = f.type_name.rsplit(".", 1)[-1]
        if f.label == FD.LABEL_REPEATED and f.type == FD.TYPE_MESSAGE and short in entries \
                and f.type_name.endswith(m.name + "." + short):
            k, v = entries[short].field[0], entries[short].field[1]
            out.append("%s  map<%s, %s> %s = %d%s;" % (ind, tname(k), tname(v), f.name, f.number, fopts(f)))
        else:
            out.append("%s  %s %s %s = %d%s;" % (ind, LABEL[f.label], tname(f), f.name, f.number, fopts(f)))
        i += 1
    out.append(ind + "}")
HEADER = """// Copyright 2023 LiveKit, Inc.
//
// Licensed under the Apache License, Version 2.0 (the "License");
// you may not use this file except in compliance with the License.
// You may obtain a copy of the License at
//
//     http://www.apache.org/licenses/LICENSE-2.0
//
// Unless required by applicable law or agreed to in writing, software
// distributed under the License is distributed on an "AS IS" BASIS,
// WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
// See the License for the specific language governing permissions and
// limitations under the License.
//
// LiveKit FFI protocol, as compiled into the liblivekit_ffi of the PyPI wheel %s.
// Regenerated from the FileDescriptorProto embedded in that wheel's livekit/rtc/_proto/%s
// by scripts/fetch-livekit-ffi.sh --write-protos. A descriptor carries no comments, so the
// upstream documentation comments are not reproduced here."""
fds = D.FileDescriptorSet(); fds.ParseFromString(open(sys.argv[1], "rb").read())
outdir, wheel = sys.argv[2], sys.argv[3]
for f in fds.file:
    if f.service or f.extension or f.public_dependency or f.weak_dependency:
        sys.exit("unsupported file feature in " + f.name)
    out = [HEADER % (wheel, f.name.replace(".proto", "_pb2.py")), ""]
    out += ['syntax = "%s";' % (f.syntax or "proto2"), "", "package %s;" % f.package, ""]
    out += ['import "%s";' % d for d in f.dependency]
    if f.dependency: out.append("")
    o = D.FileOptions(); o.CopyFrom(f.options)
    if o.HasField("csharp_namespace"):
        out += ['option csharp_namespace = "%s";' % o.csharp_namespace, ""]; o.ClearField("csharp_namespace")
    if o.ByteSize(): sys.exit("unsupported file option %s" % o)
    for e in f.enum_type: enum(e, "", out); out.append("")
    for m in f.message_type: message(m, "", out); out.append("")
    path = os.path.join(outdir, f.name)
    with open(path, "w") as fh: fh.write("\n".join(out).rstrip("\n") + "\n")
    print("wrote", path)
PY
  exit 0
fi

if up_to_date; then
  echo "fetch-livekit-ffi: $DEST already holds $WHEEL_FILE's engine"
else
  download_wheel
  mkdir -p "$DEST"
  # Extract beside DEST and move into place, so an interrupted run never leaves a half-written
  # library where the crate would load it.
  STAGE=$(mktemp -d "$DEST/.stage.XXXXXX")
  extract "$STAGE"
  got=$(sha256_of "$STAGE/liblivekit_ffi.so")
  if [ "$got" != "$LIB_SHA256" ]; then
    rm -rf "$STAGE"
    echo "fetch-livekit-ffi: library sha256 mismatch: got $got, pinned $LIB_SHA256" >&2
    exit 1
  fi
  version_text >"$STAGE/VERSION"
  for f in livekit_ffi.h LICENSE.md livekit_ffi_descriptors.pb liblivekit_ffi.so VERSION; do
    mv -f "$STAGE/$f" "$DEST/$f"
  done
  rmdir "$STAGE"
fi
echo "fetch-livekit-ffi: livekit $LIVEKIT_VERSION ($WHEEL_FILE)"
echo "  library:     $DEST/liblivekit_ffi.so ($(stat -c %s "$DEST/liblivekit_ffi.so") bytes, sha256 $LIB_SHA256)"
echo "  descriptors: $DEST/livekit_ffi_descriptors.pb"
echo "  header:      $DEST/livekit_ffi.h"
echo "  licences:    $DEST/LICENSE.md"
echo "use it with:   LIVEKIT_FFI_LIB=$DEST/liblivekit_ffi.so (the crate's default path when unset)"
