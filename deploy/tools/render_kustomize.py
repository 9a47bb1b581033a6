#!/usr/bin/env python3
"""Renders this repository's kustomizations offline, for validation where no kustomize binary exists.

Supports exactly what deploy/k8s uses: `resources` (files or directories with a kustomization),
`configMapGenerator` (files; behavior create/replace) and `patches` (strategic-merge patches: lists of
containers, env entries, volumes and volume mounts merge by name, an entry with `$patch: delete` removes
its namesake, and a whole patch document with `$patch: delete` removes the resource). Prints a
multi-document YAML stream.
"""
import copy
import os
import sys

import yaml


def load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


# Lists kustomize merges by the entries' `name` (their strategic-merge patch key).
NAMED_LISTS = ("containers", "initContainers", "env", "volumes", "volumeMounts")


def merge_named(base, patch):
    by_name = {c["name"]: c for c in base}
    order = [c["name"] for c in base]
    for c in patch:
        if c.get("$patch") == "delete":
            by_name.pop(c["name"], None)
            order = [n for n in order if n != c["name"]]
        elif c["name"] in by_name:
            by_name[c["name"]] = merge(by_name[c["name"]], c)
        else:
            by_name[c["name"]] = c
            order.append(c["name"])
    return [by_name[n] for n in order]


def merge(base, patch):
    if not isinstance(base, dict) or not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(base)
    for k, v in patch.items():
        if k in NAMED_LISTS and isinstance(v, list):
            out[k] = merge_named(out.get(k, []), v)
        elif k in out:
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def render(directory):
    kust = load_docs(os.path.join(directory, "kustomization.yaml"))[0]
    docs = []
    for res in kust.get("resources", []):
        path = os.path.join(directory, res)
        docs.extend(render(path) if os.path.isdir(path) else load_docs(path))
    for gen in kust.get("configMapGenerator", []):
        data = {}
        for f in gen.get("files", []):
            with open(os.path.join(directory, f)) as fh:
                data[os.path.basename(f)] = fh.read()
        cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data}
        if gen.get("behavior") == "replace":
            docs = [d for d in docs if not (d["kind"] == "ConfigMap" and d["metadata"]["name"] == gen["name"])]
        docs.append(cm)
    for p in kust.get("patches", []):
        for patch in load_docs(os.path.join(directory, p["path"])):
            if patch.get("$patch") == "delete":
                docs = [d for d in docs if not (d["kind"] == patch["kind"] and d["metadata"]["name"] == patch["metadata"]["name"])]
                continue
            for i, d in enumerate(docs):
                if d["kind"] == patch["kind"] and d["metadata"]["name"] == patch["metadata"]["name"]:
                    docs[i] = merge(d, patch)
    for label in kust.get("labels", []):
        for d in docs:
            d.setdefault("metadata", {}).setdefault("labels", {}).update(label.get("pairs", {}))
    return docs


if __name__ == "__main__":
    yaml.safe_dump_all(render(sys.argv[1]), sys.stdout, sort_keys=False)
