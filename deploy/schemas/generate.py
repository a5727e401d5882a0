#!/usr/bin/env python3
"""Write the JSON schemas kubeconform validates deploy/k8s against (deploy/validate.sh), from their sources.

Nothing is downloaded at validation time: the schemas are kept in this folder.

- kubernetes/v<K8S>-standalone-strict/<kind>[-<group>]-<version>.json: the built-in kinds the manifests use,
  from the PyPI package `kubernetes-validate` (its "-local-strict" schemas, which share one
  _definitions.json), made self-contained: only the definitions each kind needs, under `$defs`.
  Needs `pip install kubernetes-validate==1.37.0` (only to regenerate).
- crds/<group>/<kind>_<version>.json: the custom resources, converted from the CRDs' openAPIV3Schema in
  sources/ (deploy/schemas/fetch-sources.sh says where each comes from). Strict: an object with
  `properties` allows no other keys, unless it says x-kubernetes-preserve-unknown-fields; `metadata` is
  the Kubernetes ObjectMeta schema (the kubernetes/ one, so that must be generated first or be there).

    python3 deploy/schemas/generate.py                # rewrite both
    python3 deploy/schemas/generate.py --crds-only    # without kubernetes-validate (CRDs from sources/)
    python3 deploy/schemas/generate.py --check        # exit 1 if a file would change (what the tests do)
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
KUBERNETES_VERSION = "1.35.0"
KUBERNETES_DIR = HERE / "kubernetes" / f"v{KUBERNETES_VERSION}-standalone-strict"
CRD_DIR = HERE / "crds"
SOURCES = HERE / "sources"
# kubeconform's file names ({{.ResourceKind}}{{.KindSuffix}}) of the built-in kinds deploy/k8s uses
# (Secret too: an overlay may generate one). A kind missing here fails deploy/validate.sh.
KUBERNETES_KINDS = [
    "namespace-v1",
    "serviceaccount-v1",
    "configmap-v1",
    "secret-v1",
    "service-v1",
    "deployment-apps-v1",
    "poddisruptionbudget-policy-v1",
    "networkpolicy-networking-v1",
]
SCHEMA_DRAFT = "https://json-schema.org/draft/2020-12/schema"
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


def _dump(value: Any) -> str:
    return json.dumps(value, indent=1, sort_keys=True) + "\n"


# --- built-in kinds ----------------------------------------------------------------------------------


def _refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str):
            found.add(ref.rsplit("/", 1)[1])
        for value in node.values():
            found |= _refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= _refs(value)
    return found


def _local_refs(node: Any) -> Any:
    """`/api/_definitions.json#/$defs/X` -> `#/$defs/X`."""
    if isinstance(node, dict):
        return {k: ("#/$defs/" + v.rsplit("/", 1)[1] if k == "$ref" and isinstance(v, str) else _local_refs(v))
                for k, v in node.items()}
    if isinstance(node, list):
        return [_local_refs(v) for v in node]
    return node


def standalone(schema: dict, definitions: dict[str, Any]) -> dict:
    """`schema` with the closure of the definitions it refers to, as one self-contained document."""
    needed: set[str] = set()
    todo = _refs(schema)
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        todo |= _refs(definitions[name]) - needed
    out = {"$schema": SCHEMA_DRAFT, **_local_refs(schema)}
    out["$defs"] = {name: _local_refs(definitions[name]) for name in sorted(needed)}
    return out


def kubernetes_schemas() -> dict[Path, str]:
    try:
        import kubernetes_validate
    except ImportError:
        sys.exit("generate.py: kubernetes-validate is not installed (pip install kubernetes-validate==1.37.0); "
                 "use --crds-only to regenerate only the CRD schemas")
    package = Path(kubernetes_validate.__file__).parent
    source = package / "kubernetes-json-schema" / f"v{KUBERNETES_VERSION}-local-strict"
    definitions = json.loads((source / "_definitions.json").read_text())["$defs"]
    return {
        KUBERNETES_DIR / f"{kind}.json": _dump(standalone(json.loads((source / f"{kind}.json").read_text()),
                                                          definitions))
        for kind in KUBERNETES_KINDS
    }


# --- custom resources ------------------------------------------------------------------------------


def _convert(node: Any) -> Any:
    """OpenAPI v3 (structural CRD schema) -> JSON Schema, strict."""
    if isinstance(node, list):
        return [_convert(v) for v in node]
    if not isinstance(node, dict):
        return node
    out = {k: _convert(v) for k, v in node.items()}
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def crd_schemas(object_meta: dict) -> dict[Path, str]:
    files: dict[Path, str] = {}
    for path in sorted(SOURCES.glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group = crd["spec"]["group"]
            kind = crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if not version.get("served", True):
                    continue
                schema = _convert(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
                props = schema.setdefault("properties", {})
                props["apiVersion"] = {**props.get("apiVersion", {}), "enum": [f"{group}/{version['name']}"]}
                props["kind"] = {**props.get("kind", {}), "enum": [kind]}
                props["metadata"] = {"$ref": f"#/$defs/{OBJECT_META}"}
                schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind", "metadata"})
                schema = {"$schema": SCHEMA_DRAFT, **schema, "$defs": dict(object_meta["$defs"])}
                files[CRD_DIR / group / f"{kind.lower()}_{version['name']}.json"] = _dump(schema)
    return files


def _object_meta(kubernetes: dict[Path, str] | None) -> dict:
    """ObjectMeta with the definitions it needs, from the namespace schema (just generated, or on disk)."""
    path = KUBERNETES_DIR / "namespace-v1.json"
    namespace = json.loads(kubernetes[path] if kubernetes else path.read_text())
    defs = namespace["$defs"]
    needed: set[str] = set()
    todo = {OBJECT_META}
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo |= _refs(defs[name]) - needed
    return {"$defs": {name: defs[name] for name in sorted(needed)}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crds-only", action="store_true", help="only the CRD schemas (no kubernetes-validate)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file would change")
    args = parser.parse_args(argv)
    kubernetes = None if args.crds_only else kubernetes_schemas()
    files = {**(kubernetes or {}), **crd_schemas(_object_meta(kubernetes))}
    stale = [p for p, text in files.items() if not p.exists() or p.read_text() != text]
    if args.check:
        for p in stale:
            print(f"{p.relative_to(HERE)} is out of date: run python3 deploy/schemas/generate.py", file=sys.stderr)
        return 1 if stale else 0
    for p in stale:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(files[p])
        print(f"wrote {p.relative_to(HERE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
