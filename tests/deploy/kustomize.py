"""A minimal, offline kustomize: the subset deploy/k8s uses, so the tests need no binary.

Supported kustomization fields: ``resources`` (files and directories), ``namespace``,
``images`` (name → newName/newTag/digest) and ``patches`` (strategic merge, from ``path``,
with an optional ``target`` of kind/name/labelSelector ``k=v,...``). Anything else raises, so
the overlays cannot drift past what this renders. Where ``kubectl`` or ``kustomize`` is
installed, the tests also render with it and require the same objects.

Strategic merge as Kubernetes defines it for the fields used here: maps merge recursively,
``null`` deletes a key, lists of named things merge by their key (``MERGE_KEYS``), and every
other list is replaced. ``$patch`` directives are not supported.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

Resource = dict[str, Any]

SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",  # container ports; Service ports merge by "port" (below)
}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PersistentVolume"}


def build(directory: Path) -> list[Resource]:
    """Render the kustomization in ``directory``, as ``kustomize build`` would."""
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    unknown = set(kust) - SUPPORTED
    if unknown:
        raise ValueError(f"{directory}: kustomization fields outside the supported subset: {sorted(unknown)}")
    resources: list[Resource] = []
    for entry in kust.get("resources", []):
        path = (directory / entry).resolve()
        resources += build(path) if path.is_dir() else load_yaml(path)
    for patch in kust.get("patches", []):
        apply_patch(resources, directory / patch["path"], patch.get("target"))
    if "namespace" in kust:
        for res in resources:
            if res["kind"] not in CLUSTER_SCOPED:
                res["metadata"]["namespace"] = kust["namespace"]
    for image in kust.get("images", []):
        for container in containers(resources):
            container["image"] = retag(container["image"], image)
    return resources


def load_yaml(path: Path) -> list[Resource]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def apply_patch(resources: list[Resource], path: Path, target: dict[str, str] | None) -> None:
    (patch,) = load_yaml(path)
    selector = target or {"kind": patch["kind"], "name": patch["metadata"]["name"]}
    matched = [r for r in resources if selects(selector, r)]
    if not matched:
        raise ValueError(f"patch {path} matches no resource ({selector})")
    for res in matched:
        # With a target, the patch's own name is a placeholder: it keeps each resource's name.
        body = {**patch, "metadata": {**patch["metadata"], "name": res["metadata"]["name"]}}
        merged = merge(res, body)
        res.clear()
        res.update(merged)


def selects(target: dict[str, str], res: Resource) -> bool:
    unknown = set(target) - {"kind", "name", "labelSelector"}
    if unknown:
        raise ValueError(f"patch target fields outside the supported subset: {sorted(unknown)}")
    labels = res["metadata"].get("labels", {})
    wanted = dict(pair.split("=", 1) for pair in target.get("labelSelector", "").split(",") if pair)
    return (
        target.get("kind", res["kind"]) == res["kind"]
        and target.get("name", res["metadata"]["name"]) == res["metadata"]["name"]
        and all(labels.get(k) == v for k, v in wanted.items())
    )


def merge(base: Any, patch: Any, field: str = "") -> Any:
    """Strategic merge of ``patch`` onto ``base`` (both left unchanged)."""
    if isinstance(patch, dict):
        return _merge_map(base if isinstance(base, dict) else {}, patch, field)
    if isinstance(patch, list) and isinstance(base, list) and field in MERGE_KEYS:
        return _merge_list(base, patch, field)
    return copy.deepcopy(patch)


def _merge_map(base: dict[str, Any], patch: dict[str, Any], field: str) -> dict[str, Any]:
    if any(k.startswith("$") for k in patch):
        raise ValueError(f"{field}: $-directives are outside the supported subset")
    out = dict(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(base.get(key), value, key)
    return out


def _merge_list(base: list[Any], patch: list[Any], field: str) -> list[Any]:
    key = MERGE_KEYS[field]
    if field == "ports" and patch and "containerPort" not in patch[0]:
        key = "port"
    out = list(base)
    for item in patch:
        index = next((i for i, old in enumerate(out) if old.get(key) == item[key]), None)
        if index is None:
            out.append(merge({}, item))
        else:
            out[index] = merge(out[index], item)
    return out


def containers(resources: list[Resource]) -> list[dict[str, Any]]:
    """Every container and init container of every pod template."""
    out = []
    for res in resources:
        pod = res.get("spec", {}).get("template", {}).get("spec", {})
        out += pod.get("containers", []) + pod.get("initContainers", [])
    return out


def retag(ref: str, image: dict[str, str]) -> str:
    name, digest = ref.split("@", 1) if "@" in ref else (ref, "")
    tag = ""
    if ":" in name.rsplit("/", 1)[-1]:
        name, tag = name.rsplit(":", 1)
    if name != image["name"]:
        return ref
    name = image.get("newName", name)
    if "digest" in image:
        return f"{name}@{image['digest']}"
    tag = image.get("newTag", tag)
    suffix = f"@{digest}" if digest and "newTag" not in image else ""
    return f"{name}:{tag}{suffix}" if tag else f"{name}{suffix}"
