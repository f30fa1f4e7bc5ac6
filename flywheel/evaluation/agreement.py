"""How far to trust a judge: its verdicts against labelled comparisons.

The labels: Anthropic HH-RLHF (people chose; helpful-* sets are helpfulness comparisons,
harmless-* safety ones), UltraFeedback binarized (GPT-4 rated, not people: reported as such), or
any delivery in the project's Llama 2 protocol (labelled by the annotators it names). The
files are read by the project's importers (flywheel/annotation/importers.py) and, for
deliveries, by ingest itself into a scratch lake, so a row is usable here exactly when it would
be ingested.

The preferred answer is put on side a for half of the pairs and on side b for the other half
(a seeded shuffle), so a judge that favours a position cannot score by it. Reported, overall,
per criterion and per file, each with its 95 % bootstrap interval:

- agreement: the share of pairs where the judge picked the preferred answer, a tie counting half;
- agreement without ties: the same over the pairs the judge decided, with the tie rate beside it;
- flip rate: the share of pairs whose verdict changed with the order of the answers (a judge
  that reads both at once is asked in both orders; a judge that scores each alone never flips);
- side-a rate: the share of decided verdicts for side a (near 0.5 unless the judge favours a
  position, since the preferred answer is on each side half of the time).

Each run is a `judge_agreement` row of the lake, so the iteration report can say how far the
judge that decided is trusted (`latest_agreement`).
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from flywheel.annotation.importers import convert, detect_format
from flywheel.annotation.ingest import ingest_bytes
from flywheel.config import AnnotationConfig
from flywheel.errors import DataError
from flywheel.evaluation.stats import bootstrap_interval
from flywheel.evaluation.verdicts import Pair, Verdict
from flywheel.lake.catalog import connect, query
from flywheel.lake.schemas import content_id
from flywheel.lake.store import Lake
from flywheel.reward.evaluation import load_pairs

FORMATS = ("hh-rlhf", "ultrafeedback", "llama2")
PEOPLE = "people (Anthropic HH-RLHF)"
GPT4 = "GPT-4 (UltraFeedback), not people"
# the three human-labelled HH-RLHF test files of the shared data folder
HH_TEST_FILES = ("hh_rlhf_helpful_base_test.jsonl.gz", "hh_rlhf_helpful_online_test.jsonl.gz",
                 "hh_rlhf_harmless_base_test_dev.jsonl.gz")
CHUNK = 128  # pairs per judge call: the progress bar moves by this much


@dataclass
class Comparisons:
    """One file's usable comparisons, the preferred answer on side a."""

    source: str  # the file name
    labelled_by: str
    pairs: list[Pair]
    skipped: dict[str, int] = field(default_factory=dict)  # rows left out, by reason


def pair_of(messages: list[dict], chosen: str, rejected: str, criterion: str) -> Pair | None:
    """The comparison as a Pair: the user turns, and on each side the earlier assistant turns
    then its answer. None when the turns do not alternate user, assistant, ..., user (a system
    turn, two turns of one role in a row)."""
    users, answers = [], []
    for m in messages:
        if m["role"] == "user" and len(users) == len(answers):
            users.append(m["content"])
        elif m["role"] == "assistant" and len(answers) == len(users) - 1:
            answers.append(m["content"])
        else:
            return None
    if not users or len(answers) != len(users) - 1:
        return None
    return Pair(tuple(users), (*answers, chosen), (*answers, rejected), criterion)


def read_comparisons(path: str, fmt: str | None = None, criterion: str | None = None,
                     limit: int | None = None, max_turns: int | None = None) -> Comparisons:
    """The usable comparisons of a file (the first `limit`; a delivery's in id order). `fmt`:
    one of FORMATS, default what the name says (HH-RLHF, UltraFeedback), else llama2.
    `criterion`: of an HH-RLHF file whose name does not say. `max_turns`: leave out pairs with
    more user turns (a judge's prompts may cover only so many: MT-bench's one or two)."""
    src = Path(path)
    if not src.is_file():
        raise DataError(f"comparison file {path} does not exist")
    if fmt is None:
        try:
            fmt = detect_format(src.name)
        except DataError:
            fmt = "llama2"
    if fmt not in FORMATS:
        raise DataError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    skipped: dict[str, int] = {}
    rows = []  # (messages, chosen, rejected, criterion)
    if fmt == "llama2":
        rows, labelled_by, skipped = _delivery_rows(src)
    else:
        labelled_by = PEOPLE if fmt == "hh-rlhf" else GPT4
        for row in convert(str(src), fmt, criterion):
            if row["reject_reason"]:
                skipped[row["reject_reason"]] = skipped.get(row["reject_reason"], 0) + 1
            else:
                rows.append((json.loads(row["prompt"]), row["response_a"], row["response_b"],
                             row["criterion"]))
    pairs = []
    for messages, chosen, rejected, crit in rows:
        reason = ("empty answer" if not chosen.strip() or not rejected.strip()
                  else "identical answers" if chosen.strip() == rejected.strip() else None)
        pair = None if reason else pair_of(messages, chosen, rejected, crit)
        if pair is not None and max_turns is not None and len(pair.prompt) > max_turns:
            pair, reason = None, f"more than {max_turns} user turns"
        if pair is None:
            reason = reason or "turns that do not alternate"
            skipped[reason] = skipped.get(reason, 0) + 1
        elif limit is None or len(pairs) < limit:
            pairs.append(pair)
    if not pairs:
        raise DataError(f"{path}: no comparison could be used (left out: {skipped}); give "
                        "comparisons with a prompt and two different answers")
    return Comparisons(src.name, labelled_by, pairs, skipped)


def _delivery_rows(src: Path) -> tuple[list[tuple], str, dict[str, int]]:
    """A Llama 2 protocol delivery, ingested into a scratch lake (nothing held out, no size
    cap) and read back: its rows, who labelled them, the rows ingest rejected by reason."""
    with tempfile.TemporaryDirectory() as tmp:
        lake = Lake.open(f"{tmp}/lake")
        result = ingest_bytes(lake, src.read_bytes(), src.name, "agreement",
                              AnnotationConfig(heldout_fraction=0, max_text_chars=10**9))
        con = connect(lake)
        try:
            meta = con.sql("SELECT id, criterion, annotator FROM comparisons "
                           "ORDER BY id").fetchall()
            pairs = load_pairs(con, [i for i, _, _ in meta])
        finally:
            con.close()
    rows = [(pairs[i].messages, pairs[i].chosen, pairs[i].rejected, c) for i, c, _ in meta]
    annotators = sorted({a for _, _, a in meta if a}) or ["unnamed annotators"]
    return rows, f"the delivery's annotators ({', '.join(annotators)})", dict(result.reasons)


def preferred_sides(n: int, seed: int = 0) -> list[str]:
    """Where the preferred answer goes, pair by pair: "a" for half (one more when n is odd),
    "b" for the rest, in a seeded order."""
    sides = ["a"] * (n - n // 2) + ["b"] * (n // 2)
    random.Random(seed).shuffle(sides)
    return sides


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarise(verdicts: list[Verdict], preferred: list[str], bootstrap: int = 1000,
              seed: int = 0) -> dict:
    """The agreement figures of verdicts against the side each pair's preferred answer was
    on; `*_ci` are 95 % bootstrap intervals ([lo, hi], None with too few pairs)."""
    points = [1.0 if v.winner == p else 0.5 if v.winner == "tie" else 0.0
              for v, p in zip(verdicts, preferred)]
    decided = [(v.winner == p) * 1.0 for v, p in zip(verdicts, preferred) if v.winner != "tie"]
    values = {
        "agreement": points,
        "agreement_no_ties": decided,
        "tie_rate": [(v.winner == "tie") * 1.0 for v in verdicts],
        "flip_rate": [v.flipped * 1.0 for v in verdicts],
        "side_a_rate": [(v.winner == "a") * 1.0 for v in verdicts if v.winner != "tie"],
    }
    out: dict = {"pairs": len(verdicts), "decided": len(decided)}
    for name, xs in values.items():
        interval = bootstrap_interval(xs, n=bootstrap, seed=seed) if xs else None
        out[name] = _mean(xs)
        out[f"{name}_ci"] = list(interval) if interval else None
    return out


def measure(judge, files: list[Comparisons], seed: int = 0, bootstrap: int = 1000,
            progress: bool = True) -> dict:
    """Judge every pair of `files` (the preferred answer on side a or b by `preferred_sides`)
    and summarise overall, per criterion and per file."""
    pairs = [p for f in files for p in f.pairs]
    if not pairs:
        raise DataError("no comparisons to judge; give at least one file with usable pairs")
    where = [f.source for f in files for _ in f.pairs]
    preferred = preferred_sides(len(pairs), seed)
    shown = [p if side == "a" else p.swapped() for p, side in zip(pairs, preferred)]
    verdicts: list[Verdict] = []
    with tqdm(total=len(shown), desc=f"judging with {judge.key}", unit="pair",
              disable=not progress) as bar:
        for i in range(0, len(shown), CHUNK):
            verdicts += judge.compare(shown[i : i + CHUNK])
            bar.update(len(shown[i : i + CHUNK]))

    def part(keep) -> dict:
        idx = [i for i in range(len(pairs)) if keep(i)]
        return summarise([verdicts[i] for i in idx], [preferred[i] for i in idx], bootstrap,
                         seed)

    criteria = sorted({p.criterion for p in pairs})
    return {
        "judge": judge.key,
        "source": ", ".join(f.source for f in files),
        "labelled_by": sorted({f.labelled_by for f in files}),
        "seed": seed,
        **part(lambda i: True),
        "by_criterion": {c: part(lambda i, c=c: pairs[i].criterion == c) for c in criteria},
        "by_file": {f.source: {"labelled_by": f.labelled_by, "skipped": f.skipped,
                               **part(lambda i, s=f.source: where[i] == s)} for f in files},
    }


def record(lake: Lake, result: dict) -> dict:
    """The run as a `judge_agreement` row (every run its own row); returns the row."""
    row = {"id": content_id("judge_agreement", result["judge"], result["source"],
                            result["pairs"], time.time_ns()),
           "judge": result["judge"], "source": result["source"], "pairs": result["pairs"],
           "agreement": result["agreement"], "agreement_no_ties": result["agreement_no_ties"],
           "flip_rate": result["flip_rate"], "metrics": json.dumps(result)}
    lake.write("judge_agreement", [row], {"judge": result["judge"]})
    return row


def latest_agreement(lake: Lake, judge_key: str) -> dict | None:
    """The newest agreement measured for this exact judge (its key), the row with its
    `metrics` read; None when it was never measured."""
    rows = query(lake, "SELECT * FROM judge_agreement WHERE judge = $judge "
                 "ORDER BY created_at DESC, id LIMIT 1", {"judge": judge_key})
    if not rows:
        return None
    return {**rows[0], "metrics": json.loads(rows[0]["metrics"] or "{}")}
