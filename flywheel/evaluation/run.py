"""Run the standard suites on a policy: answer every item (greedy, MT-bench's second turn after
the policy's own first answer), label refusals, judge the answers against an opponent's (or,
on AlpacaEval without one, against gpt-3.5-turbo-0301's reference outputs), write one
`evaluations` row per item and summarise each suite (`summary.py`).

Greedy answers are deterministic, so a policy's answer to an item already in `evaluations`
under the same sampling settings is read back instead of drawn again: the weekly loop
evaluates each policy twice, once as the candidate and a week later as the parent.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime, timezone

from tqdm.auto import tqdm

from flywheel.config import FlywheelConfig
from flywheel.config.evaluation import answer_limit
from flywheel.devices import resolve_dtype
from flywheel.errors import DataError
from flywheel.evaluation.judge import make_judge
from flywheel.evaluation.refusal import refusal_labels
from flywheel.evaluation.suites import ALPACA_BASELINE, SUITES, Item, data_dir, load_suite
from flywheel.evaluation.summary import summarise
from flywheel.evaluation.verdicts import Pair, Verdict
from flywheel.lake.catalog import query
from flywheel.lake.schemas import content_id
from flywheel.lake.store import Lake
from flywheel.stages.common import current_policy, lineage_root, policy_path, sampler_for

REFUSAL_ORDER = ("compliance", "partial_refusal", "full_refusal")


def resolve_policy(cfg: FlywheelConfig, lake: Lake, name: str,
                   relative_to: dict | None = None) -> dict:
    """A policy row by id or unique id prefix. `base`: the lineage root of `relative_to`, else
    of the lake's current policy (the configured base model on a lake without iterations)."""
    if name == "base":
        return lineage_root(lake, relative_to or current_policy(cfg, lake))
    rows = lake.rows("policies")
    exact = [p for p in rows if p["id"] == name]
    found = exact or [p for p in rows if p["id"].startswith(name)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise DataError(f"no policy {name!r} in the lake {lake.uri}; give a policy id (or a "
                        "unique prefix) from `flywheel lineage`, or `base`")
    raise DataError(f"{name!r} matches {len(found)} policies ("
                    f"{', '.join(p['id'] for p in found[:5])}); give more of the id")


def sampling_params(cfg: FlywheelConfig) -> dict:
    """What decides a greedy answer besides the policy: kept in each row's metrics, and what an
    earlier answer must match to be reused."""
    s = cfg.sampling
    return {"backend": s.backend, "dtype": resolve_dtype(s.dtype),
            "temperature": cfg.evaluation.temperature,
            "top_p": s.top_p, "max_new_tokens": answer_limit(cfg), "stop": s.stop}


def evaluate_policy(cfg: FlywheelConfig, lake: Lake, policy: dict | str,
                    against: dict | str | None = None, suites=SUITES, limit: int | None = None,
                    judge=None, run_id: str | None = None, iteration: int | None = None,
                    progress: bool = True) -> dict:
    """Answer, judge and record each suite (one `evaluations` write per suite); returns
    {"run_id", "policy", "against", "suites": {suite: {"items", "against", "judge",
    "sampled" (answers drawn now, per side), "metrics" (`summarise`)}}}. `policy` and
    `against`: policy rows, or names for `resolve_policy`; `judge`: a judge object or spec
    (default: the config's evaluation.judge, made only when something is compared)."""
    if isinstance(policy, str) and policy == "base" and isinstance(against, str):
        against = resolve_policy(cfg, lake, against)
    if isinstance(policy, str):
        policy = resolve_policy(cfg, lake, policy, against if isinstance(against, dict) else None)
    if isinstance(against, str):
        against = resolve_policy(cfg, lake, against, policy)
    unknown = [s for s in suites if s not in SUITES]
    if unknown:
        raise DataError(f"unknown suite {', '.join(unknown)}; choose from {', '.join(SUITES)}")
    folder = data_dir(cfg)
    run_id = run_id or content_id("evaluate", policy["id"], against and against["id"],
                                  datetime.now(timezone.utc).isoformat())
    params = sampling_params(cfg)
    say = (lambda msg: tqdm.write(msg, file=sys.stderr)) if progress else (lambda _msg: None)
    out = {}
    for name in suites:
        items = load_suite(name, limit=limit, folder=folder)
        if not items:
            continue
        say(f"evaluate {name}: {len(items)} items, policy {policy['id']}"
            + (f" against {against['id']}" if against else ""))
        earlier = _earlier_answers(lake, name, [policy] + ([against] if against else []),
                                   params)
        answers, fresh = _answers(cfg, lake, policy, items, earlier)
        sampled = {"policy": fresh}
        opponent = None
        if against:
            other, sampled["against"] = _answers(cfg, lake, against, items, earlier)
            opponent = against["id"]
        elif name == "alpaca-eval":
            other, opponent = [(i.baseline,) for i in items], f"{ALPACA_BASELINE} reference"
        verdicts = None
        if opponent:
            if judge is None or isinstance(judge, str):
                judge = make_judge(judge or cfg.evaluation.judge, cfg, lake)
            say(f"evaluate {name}: judging {len(items)} items with {judge.name}")
            verdicts = _judge(judge, items, answers, other)
        key = judge.key if verdicts else None
        rows = _rows(run_id, name, items, policy, against, iteration, answers,
                     other if opponent else None, verdicts, key, params, opponent)
        lake.write("evaluations", rows, {"stage": "evaluate", "run": run_id, "suite": name,
                                         "policy": policy["id"],
                                         "against": against and against["id"]})
        llm = bool(verdicts) and judge.name.startswith("llm")
        out[name] = {"items": len(items), "against": opponent, "judge": key,
                     "sampled": sampled,
                     "metrics": summarise(name, rows, cfg.evaluation.bootstrap, llm)}
    return {"run_id": run_id, "policy": policy["id"], "against": against and against["id"],
            "suites": out}


def _earlier_answers(lake: Lake, suite: str, policies: list[dict],
                     params: dict) -> dict[str, dict[str, list[str]]]:
    """policy id -> item id -> that policy's answers (one per turn) recorded under these
    sampling settings, on either side of an earlier comparison. Only greedy answers count:
    sampled ones are draws."""
    if params["temperature"] != 0:
        return {}
    ids = [p["id"] for p in policies]
    found: dict[str, dict[str, list[str]]] = {i: {} for i in ids}
    rows = query(lake, "SELECT item_id, policy_id, against_id, answer, against_answer, metrics "
                 "FROM evaluations WHERE suite = $suite AND (list_contains($ids, policy_id) OR "
                 "list_contains($ids, against_id)) ORDER BY created_at",
                 {"suite": suite, "ids": ids})
    for r in rows:
        if json.loads(r["metrics"] or "{}").get("sampling") != params:
            continue
        for who, text in ((r["policy_id"], r["answer"]), (r["against_id"], r["against_answer"])):
            if who in found and text:
                found[who].setdefault(r["item_id"], json.loads(text))
    return found


def _answers(cfg: FlywheelConfig, lake: Lake, policy: dict, items: list[Item],
             earlier: dict) -> tuple[list[tuple[str, ...]], int]:
    """The policy's answers to every item, one per turn, and how many items it answered now
    (the rest were read back)."""
    known = dict(earlier.get(policy["id"], {}))
    todo = [i for i in items if len(known.get(i.item_id, ())) != len(i.turns)]
    if todo:
        sampler = sampler_for(cfg, policy_path(lake, policy))
        known.update(zip((i.item_id for i in todo), converse(cfg, sampler, todo)))
    return [tuple(known[i.item_id]) for i in items], len(todo)


def converse(cfg: FlywheelConfig, sampler, items: list[Item]) -> list[list[str]]:
    """Each item's user turns asked in order, each after the policy's own earlier answers (a
    conversation, as MT-bench asks its second turn); one batch per turn."""
    s = cfg.sampling
    history: list[list[dict]] = [[] for _ in items]
    answers: list[list[str]] = [[] for _ in items]
    for turn in range(max(len(i.turns) for i in items)):
        asked = [j for j, item in enumerate(items) if len(item.turns) > turn]
        for j in asked:
            history[j].append({"role": "user", "content": items[j].turns[turn]})
        gens = sampler.generate([history[j] for j in asked], 1, cfg.evaluation.temperature,
                                answer_limit(cfg), s.top_p, s.stop)
        for j, group in zip(asked, gens):
            history[j].append({"role": "assistant", "content": group[0].text})
            answers[j].append(group[0].text)
    return answers


def _pairs(item: Item, a: tuple[str, ...], b: tuple[str, ...]) -> list[Pair]:
    """One pair per turn: turn k is judged on the conversation up to it (MT-bench judges each
    turn apart)."""
    return [Pair(item.turns[: k + 1], a[: k + 1], b[: k + 1], item.criterion,
                 item.reference[: k + 1] if item.reference else None)
            for k in range(len(item.turns))]


def _judge(judge, items: list[Item], answers, other) -> list[list[Verdict]]:
    """Every item's verdicts, one per turn, from one call to the judge."""
    pairs = [_pairs(i, a, b) for i, a, b in zip(items, answers, other)]
    flat = judge.compare([p for group in pairs for p in group])
    out, at = [], 0
    for group in pairs:
        out.append(flat[at: at + len(group)])
        at += len(group)
    return out


def _worst(labels: list[str]) -> str:
    """An answer refuses as much as its most refusing turn."""
    return max(labels, key=REFUSAL_ORDER.index)


def _rows(run_id, suite, items, policy, against, iteration, answers, other, verdicts,
          judge_key, params, opponent) -> list[dict]:
    flat = [t for a in answers for t in a] + [t for a in (other or []) for t in a]
    labels = iter(refusal_labels(flat))
    mine = [[next(labels) for _ in a] for a in answers]
    theirs = [[next(labels) for _ in a] for a in (other or [])]
    rows = []
    for k, item in enumerate(items):
        metrics = {"sampling": params, "criterion": item.criterion, "expect": item.expect,
                   "refusal_turns": mine[k], "length": len(answers[k][-1])}
        row = {"id": content_id(run_id, suite, item.item_id), "run_id": run_id,
               "suite": suite, "item_id": item.item_id, "category": item.category,
               "policy_id": policy["id"], "against_id": against and against["id"],
               "iteration": iteration, "prompt": json.dumps(list(item.turns)),
               "answer": json.dumps(list(answers[k])), "refusal": _worst(mine[k]),
               "against_answer": None, "against_refusal": None, "judge": None,
               "verdict": None, "flipped": None}
        if other:
            metrics.update(against=opponent, against_refusal_turns=theirs[k],
                           against_length=len(other[k][-1]))
            row.update(against_answer=json.dumps(list(other[k])),
                       against_refusal=_worst(theirs[k]))
        if verdicts:
            vs = verdicts[k]
            points = sum(v.points_a for v in vs) / len(vs)
            metrics.update(turn_verdicts=[v.winner for v in vs],
                           turn_flipped=[v.flipped for v in vs],
                           scores=[[v.score_a, v.score_b] for v in vs], points=points)
            row.update(judge=judge_key, flipped=any(v.flipped for v in vs),
                       verdict="a" if points > 0.5 else "b" if points < 0.5 else "tie")
        row["metrics"] = json.dumps(metrics)
        rows.append(row)
    return rows
