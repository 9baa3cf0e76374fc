"""Regenerate a CRD schema file here from the CRD's YAML in its upstream repository.

    python tests/data/crds/update.py CRD.yaml OUT.json REPO TAG COMMIT PATH [VERSION]

e.g. for LeaderWorkerSet v0.10.0:
    git -C lws show v0.10.0:config/crd/bases/leaderworkerset.x-k8s.io_leaderworkersets.yaml > lws.yaml
    python tests/data/crds/update.py lws.yaml tests/data/crds/leaderworkerset.x-k8s.io_v1.json \\
        kubernetes-sigs/lws v0.10.0 2161f38ff333f9e24d3c44adef7cd5d9787cac00 \\
        config/crd/bases/leaderworkerset.x-k8s.io_leaderworkersets.yaml

Only the served version's openAPIV3Schema is kept, without `description` fields (they are
most of the bytes and change nothing in validation), with where it came from.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import yaml


def strip(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def main(argv: list[str]) -> int:
    src, out, repo, tag, commit, path, *rest = argv
    version = rest[0] if rest else "v1"
    with open(src) as fh:
        crd = yaml.safe_load(fh)
    served = next(v for v in crd["spec"]["versions"] if v["name"] == version)
    data = {
        "source": f"https://github.com/{repo}/blob/{tag}/{path}",
        "repository": repo,
        "tag": tag,
        "commit": commit,
        "path": path,
        "note": "openAPIV3Schema of this served version, every `description` removed; made by tests/data/crds/update.py",
        "group": crd["spec"]["group"],
        "kind": crd["spec"]["names"]["kind"],
        "version": version,
        "openAPIV3Schema": strip(served["schema"]["openAPIV3Schema"]),
    }
    with open(out, "w") as fh:
        json.dump(data, fh, separators=(",", ":"))
        fh.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
