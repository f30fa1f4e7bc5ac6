"""Lineage: what a policy or reward model came from, read from the lake alone (its tables;
no orchestrator needed).

    policy -> parent policies (back to the base model), the helpfulness and safety reward
              models it was trained with
    reward model -> its data mix (counts, seed, the file of its exact ids, the table versions
                    it was read at), its promotion decision, and batches -> their deliveries
                    (file, checksum, where the delivered file is kept, accepted / rejected
                    counts)

Locations are stored relative to the lake and shown as full URIs of the lake they are read
from, so a copied or moved lake names its own files.
"""

from __future__ import annotations

import json

from flywheel.errors import DataError
from flywheel.lake.store import Lake

# policies whose `uri` names a model (a hub id or a folder), not a location in the lake
NAMED_MODELS = ("base", "teacher")


def _load(value) -> dict | list:
    return json.loads(value) if isinstance(value, str) and value else (value or {})


def location(lake: Lake, relpath: str | None) -> str | None:
    """A location stored in a row (relative to the lake), as people read it: a full URI."""
    return lake.url(relpath) if relpath else relpath


def policy_location(lake: Lake, policy: dict) -> str | None:
    """Where a policy's weights are: a full URI in the lake, or the name of the model."""
    if policy.get("method") in NAMED_MODELS:
        return policy.get("uri")
    return location(lake, policy.get("uri"))


def reward_model_lineage(lake: Lake, rm: dict) -> dict:
    mix = _load(rm["data_mix"])
    names = mix.get("batches") or _load(rm["parents"]) or []
    deliveries = [
        {**{k: b[k] for k in ("id", "batch_id", "filename", "checksum", "delivered",
                              "accepted", "new", "rejected", "heldout", "source")},
         "raw_uri": location(lake, b["raw_uri"])}
        for b in sorted(lake.rows("batches"), key=lambda b: b["created_at"])
        if b["batch_id"] in names
    ]
    uri = location(lake, rm["uri"])
    return {"id": rm["id"], "kind": "reward_model", "iteration": rm["iteration"],
            "criterion": rm["criterion"], "backbone": rm["backbone"], "uri": uri,
            "data_mix": {"counts": mix.get("counts"), "seed": mix.get("seed"),
                         "comparisons": (mix.get("counts") or {}).get(
                             "total", len(mix.get("comparison_ids", []))),
                         "ids_sha256": mix.get("ids_sha256"),
                         "ids_file": f"{uri}/{mix['ids_file']}" if mix.get("ids_file")
                         else None,
                         "table_versions": mix.get("table_versions"),
                         "left_out_annotators": mix.get("left_out_annotators") or {}},
            "promoted": rm.get("promoted"), "decision": rm.get("decision"),
            "batches": names, "deliveries": deliveries}


def lineage(lake: Lake, some_id: str) -> dict:
    """The lineage of a policy or reward model id (a unique prefix is enough)."""
    policies = {p["id"]: p for p in lake.rows("policies")}
    rms = {r["id"]: r for r in lake.rows("reward_models")}
    hits = [i for i in (*policies, *rms) if i.startswith(some_id)]
    if len(hits) != 1:
        known = ", ".join(sorted(policies)[:5] + sorted(rms)[:5]) or "none yet"
        what = "matches several ids" if hits else "is not a policy or reward model id"
        raise DataError(f"{some_id!r} {what} in lake {lake.uri}; ids: {known} "
                        "(see `flywheel status`)")
    (found,) = hits
    if found in rms:
        return reward_model_lineage(lake, rms[found])
    chain, node = [], policies[found]
    while node is not None:
        used = [rms[i] for i in (node["reward_model_id"], node.get("safety_reward_model_id"))
                if i and i in rms]
        chain.append({"id": node["id"], "iteration": node["iteration"], "method": node["method"],
                      "uri": policy_location(lake, node), "parent_id": node["parent_id"],
                      "reward_models": [reward_model_lineage(lake, rm) for rm in used]})
        node = policies.get(node["parent_id"] or "")
    return {"id": found, "kind": "policy", "ancestry": chain}


def _versions(versions: dict | None) -> str:
    """The table versions a model read, as `Lake.read(table, version=...)` takes them."""
    read = {t: v for t, v in (versions or {}).items() if v is not None}
    return (", read at table versions " + ", ".join(f"{t} {v}" for t, v in read.items())
            if read else "")


def format_lineage(info: dict) -> str:
    def rm_lines(rm: dict, indent: str) -> list[str]:
        out = [f"{indent}reward model {rm['id']} (iteration {rm['iteration']}, {rm['criterion']}"
               f" on {rm['backbone']}): mix {rm['data_mix']['counts']}, seed "
               f"{rm['data_mix']['seed']}" + _versions(rm["data_mix"].get("table_versions"))
               + (f"; {rm['decision']}" if rm.get("decision") else "")]
        for who, why in rm["data_mix"].get("left_out_annotators", {}).items():
            out.append(f"{indent}  left out annotator {who}: {why}")
        for d in rm["deliveries"]:
            out.append(f"{indent}  batch {d['batch_id']}: {d['filename']} sha256 "
                       f"{d['checksum'][:12]}, {d['accepted']} accepted / {d['rejected']} "
                       f"rejected of {d['delivered']}; kept at {d['raw_uri']}")
        return out

    if info["kind"] == "reward_model":
        return "\n".join(rm_lines(info, ""))
    lines = []
    for depth, p in enumerate(info["ancestry"]):
        pad = "  " * depth
        lines.append(f"{pad}policy {p['id']} (iteration {p['iteration']}, {p['method']}) "
                     f"{p['uri']}")
        for rm in p["reward_models"]:
            lines += rm_lines(rm, pad + "  ")
    return "\n".join(lines)
