"""The iteration report's evaluation section: who judged and how far people agree with it, the
promotion gate's conditions with their numbers and verdicts, the standard suites with their
intervals, and the leaderboard of every policy judged so far."""

from __future__ import annotations

from flywheel.evaluation.leaderboard import leaderboard_markdown


def _num(v, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def _ci(ci) -> str:
    return f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""


def judge_markdown(metrics: dict) -> list[str]:
    key = metrics.get("judge")
    if not key:
        return []
    agreement = metrics.get("judge_agreement")
    if not agreement:
        kind = key.split(":")[0].split("@")[0]
        return [f"**Judge:** `{key}`. Its agreement with people is not measured yet: run "
                f"`flywheel judge-agreement --judge {kind} --lake LAKE`.", ""]
    ci = agreement.get("agreement_ci")
    by = "; ".join(f"{c} {_num(v)}" for c, v in (agreement.get("by_criterion") or {}).items())
    return [f"**Judge:** `{key}`, which agrees with people on {_num(agreement['agreement'])} "
            f"{_ci(ci)} of {agreement['pairs']} labelled pairs ({agreement['source']}; ties "
            f"count half), {_num(agreement.get('agreement_no_ties'))} on the pairs it did not "
            f"tie; its verdict flipped with the order on {_num(agreement.get('flip_rate'))}"
            + (f". By criterion: {by}." if by else "."), ""]


def gate_conditions_markdown(metrics: dict) -> list[str]:
    gate = metrics.get("gate")
    if not gate:
        return []
    lines = [f"### The promotion gate ({gate['mode']})", "",
             "| condition | measured on | candidate | incumbent | rule | verdict |",
             "|---|---|---|---|---|---|"]
    for c in gate["conditions"]:
        if "value" in c:
            cand, inc = f"{_num(c['value'])} {_ci(c.get('ci95'))}", ""
        else:
            cand, inc = _num(c.get("new")), _num(c.get("old"))
        verdict = "pass" if c["passed"] else "**fail**"
        lines.append(f"| {c['name']} | {c['source']} | {cand} | {inc} | {c['rule']} | "
                     f"{verdict} |")
    return lines + [""]


def suites_markdown(metrics: dict) -> list[str]:
    suites = metrics.get("suites") or {}
    if not suites:
        return []
    lines = ["### Standard suites", "",
             "Candidate against the policy its iteration started from; `against.` rows are "
             "the incumbent's own numbers.", "",
             "| suite | metric | value | 95 % interval | n |", "|---|---|---|---|---|"]
    for suite, s in suites.items():
        for name, m in s["metrics"].items():
            if "[" in name:  # per category / type: in the lake's evaluations table
                continue
            lines.append(f"| {suite} | {name} | {_num(m['value'])} | {_ci(m['ci95'])} | "
                         f"{m['n']} |")
    return lines + ["", "Per category and per XSTest type: `flywheel evaluate` or the "
                    "`evaluations` table.", ""]


def evaluation_markdown(metrics: dict) -> list[str]:
    board = metrics.get("leaderboard") or []
    return ["## Evaluation", "", *judge_markdown(metrics), *gate_conditions_markdown(metrics),
            *suites_markdown(metrics),
            *(["### Leaderboard", "",
               "Bradley-Terry ratings (Elo scale) of every policy from all pairs this judge "
               "decided so far, with 95 % bootstrap intervals:", "",
               leaderboard_markdown(board), ""] if board else [])]
