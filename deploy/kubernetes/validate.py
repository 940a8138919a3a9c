"""Checks rendered kustomize overlays offline (run by validate.sh inside its tool venv).

    python validate.py --kube-version 1.29 --kube-version latest RENDERED.yaml...

1. Every object against the Kubernetes OpenAPI schemas bundled in `kubernetes-validate`, in
   strict mode (unknown fields are errors), for each --kube-version. Custom resources have no
   bundled schema: each must have one in schemas/ (CRD_SCHEMAS); an unknown kind is an error,
   not a warning.
2. The deployment's own invariants (DESIGN_CHECKS), which a schema cannot express: the data
   volume, the probes, the secret, the disk budget, the HPA target against the slots.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import re
import sys

import jsonschema
import kubernetes_validate
import yaml

HERE = pathlib.Path(__file__).resolve().parent

# (apiVersion, kind) -> JSON Schema file under schemas/.
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json",
}

# A live call's recording on the volume: 10 minutes (the default longest call) of 8 kHz
# 16-bit stereo WAV.
LIVE_RECORDING_BYTES = 600 * 8000 * 2 * 2

QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
FACTORS = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


class Failure(Exception):
    pass


def quantity(text) -> float:
    """A Kubernetes resource quantity ("10Gi", "600m", "120") as a number."""
    m = QUANTITY.match(str(text))
    if not m:
        raise Failure(f"not a quantity: {text!r}")
    return float(m.group(1)) * FACTORS[m.group(2)]


def schema_errors(obj: dict, versions: list[str]) -> list[str]:
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in CRD_SCHEMAS:
        schema = json.loads((HERE / "schemas" / CRD_SCHEMAS[key]).read_text())
        validator = jsonschema.Draft202012Validator(schema)
        return [f"{'.'.join(map(str, e.path)) or '<root>'}: {e.message}" for e in validator.iter_errors(obj)]
    errors = []
    for version in versions:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            errors.append(f"k8s {version}: {'.'.join(map(str, e.path))}: {e.message}")
        except kubernetes_validate.SchemaNotFoundError as e:
            errors.append(f"{e.message}; add a schema to schemas/ and CRD_SCHEMAS, or drop the object")
    return errors


def one(objs: list[dict], kind: str) -> dict:
    found = [o for o in objs if o["kind"] == kind]
    if len(found) != 1:
        raise Failure(f"expected one {kind}, found {len(found)}")
    return found[0]


def env_of(container: dict) -> dict:
    return {e["name"]: e for e in container.get("env", [])}


def settings(objs: list[dict], container: dict) -> dict:
    """The env the worker sees: ConfigMaps named in envFrom, then literal env values."""
    maps = {o["metadata"]["name"]: o.get("data", {}) for o in objs if o["kind"] == "ConfigMap"}
    values = {}
    for source in container.get("envFrom", []):
        name = source.get("configMapRef", {}).get("name")
        if name is not None:
            if name not in maps:
                raise Failure(f"envFrom names ConfigMap {name}, which the overlay does not render")
            values.update(maps[name])
    for name, e in env_of(container).items():
        if "value" in e:
            values[name] = e["value"]
    return values


def check_design(objs: list[dict]) -> list[str]:
    """The deployment's invariants; returns what is wrong."""
    problems = []
    sts = one(objs, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == "cxb-core"]
    env = settings(objs, container)

    # The durable state lives on the per-pod claim, mounted where the worker writes it.
    claims = {t["metadata"]["name"]: t for t in sts["spec"].get("volumeClaimTemplates", [])}
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    data_dir = env.get("CXBCORE_DATA_DIR")
    claim = claims.get(mounts.get(data_dir))
    if claim is None:
        problems.append(f"CXBCORE_DATA_DIR={data_dir} is not the mount of a volumeClaimTemplate")

    probes = {p: container.get(p, {}).get("httpGet", {}).get("path") for p in ("readinessProbe", "livenessProbe")}
    if probes != {"readinessProbe": "/ready", "livenessProbe": "/health"}:
        problems.append(f"probes must be readiness /ready and liveness /health, got {probes}")

    secret = env_of(container).get("CXBCORE_SECRET", {}).get("valueFrom", {}).get("secretKeyRef")
    if not secret or secret.get("optional"):
        problems.append("CXBCORE_SECRET must come from a required secretKeyRef")

    security = container.get("securityContext", {})
    if not (pod.get("securityContext", {}).get("runAsNonRoot") and security.get("readOnlyRootFilesystem")):
        problems.append("the pod must run as non-root with a read-only root filesystem")

    slots = int(env["MAX_CONCURRENT_CALLS"])
    if claim is not None:
        storage = quantity(claim["spec"]["resources"]["requests"]["storage"])
        needed = (int(env["CXBCORE_OUTBOX_MAX_BYTES"]) + int(env["CXBCORE_RECORDINGS_MAX_BYTES"])
                  + slots * LIVE_RECORDING_BYTES)
        if storage < needed:
            problems.append(f"the data volume ({storage / 2**30:.1f} GiB) is smaller than the outbox and "
                            f"recordings budgets plus {slots} live recordings ({needed / 2**30:.1f} GiB)")

    for hpa in (o for o in objs if o["kind"] == "HorizontalPodAutoscaler"):
        for metric in hpa["spec"].get("metrics", []):
            if metric["type"] == "Pods" and metric["pods"]["metric"]["name"] == "cxb_active_calls":
                target = quantity(metric["pods"]["target"]["averageValue"])
                if not 0 < target < slots:
                    problems.append(f"HPA target {target:g} active calls per pod must be below the {slots} slots")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kube-version", action="append", required=True,
                        help="Kubernetes version to validate against ('latest': newest bundled); repeatable")
    parser.add_argument("rendered", nargs="+", type=pathlib.Path)
    args = parser.parse_args()
    versions = [kubernetes_validate.latest_version() if v == "latest" else v for v in args.kube_version]
    failed = False
    for path in args.rendered:
        objs = [o for o in yaml.safe_load_all(path.read_text()) if o]
        problems = []
        for obj in objs:
            name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
            problems += [f"{name}: {e}" for e in schema_errors(obj, versions)]
        try:
            problems += [f"design: {p}" for p in check_design(objs)]
        except Failure as e:
            problems.append(f"design: {e}")
        except (KeyError, ValueError) as e:
            problems.append(f"design: missing or malformed {e!r}")
        if problems:
            failed = True
            print(f"FAIL {path.name}:", *problems, sep="\n  ")
        else:
            print(f"ok   {path.name}: {len(objs)} objects valid for Kubernetes {', '.join(versions)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
