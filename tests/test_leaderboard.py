"""The leaderboard over a real lake's `evaluations` rows, its chart, the `flywheel
leaderboard` command and its Prefect artifact."""

import json
import math
import xml.etree.ElementTree as ET
from datetime import UTC, datetime

import pytest

from flywheel.evaluation.leaderboard import leaderboard, leaderboard_markdown, leaderboard_svg
from flywheel.flows.cli import main
from flywheel.lake.schemas import content_id
from flywheel.lake.store import Lake

ELO_2 = 400 * math.log10(2)  # 120.41


def _row(run, n, policy, against, verdict, judge="proxy:1", suite="heldout", at=None):
    item = f"item-{n}"
    return {"id": content_id(run, suite, item), "run_id": run, "suite": suite, "item_id": item,
            "category": None, "policy_id": policy, "against_id": against, "iteration": None,
            "prompt": json.dumps([f"question {n}"]), "answer": json.dumps(["an answer"]),
            "against_answer": json.dumps(["another"]) if against else None, "judge": judge,
            "verdict": verdict, "flipped": False, "refusal": "compliance",
            "against_refusal": None, "metrics": "{}", "created_at": at or datetime.now(UTC)}


@pytest.fixture
def lake(tmp_path):
    """A beats B 2 of 3, B beats C 2 of 3 (one of them by a tie and a loss made up by two
    wins), A beats C 4 of 5; plus rows the leaderboard must not count: one without an
    opponent, one not judged; and two other judges' and suites' rows where C always wins."""
    rows = []
    for run, policy, against, verdicts in (("r1", "A", "B", "aab"), ("r2", "B", "C", "aab"),
                                           ("r3", "C", "A", "abbbb")):
        rows += [_row(run, i, policy, against, v) for i, v in enumerate(verdicts)]
    rows += [_row("r4", 0, "A", None, None, judge=None), _row("r4", 1, "A", "B", None)]
    rows += [_row("r5", i, "C", "A", "a", judge="llm:x:1") for i in range(6)]
    rows += [_row("r6", i, "C", "A", "a", suite="mt-bench") for i in range(6)]
    opened = Lake.open(str(tmp_path / "lake"))
    opened.write("evaluations", rows)
    opened.write("policies", [{"id": "A", "iteration": 2, "uri": "a", "method": "base",
                               "created_at": datetime.now(UTC)}])
    return opened


def test_ratings_follow_the_hand_derived_strengths(lake):
    """The test_stats three-player case: strengths 4 : 2 : 1 meet every score equation, so
    without a prior A, B, C are rated 1000 + 120.41, 1000, 1000 - 120.41."""
    rows = leaderboard(lake, judge="proxy:1", suite="heldout", n=200, prior=0)
    assert [r["policy"] for r in rows] == ["A", "B", "C"]
    assert [r["rank"] for r in rows] == [1, 2, 3]
    assert [r["rating"] for r in rows] == pytest.approx([1000 + ELO_2, 1000, 1000 - ELO_2])
    a, b, c = rows
    assert (a["games"], a["wins"], a["ties"], a["losses"]) == (8, 6, 0, 2)
    assert (c["games"], c["wins"], c["losses"]) == (8, 2, 6) and c["win_rate"] == 0.25
    assert a["iteration"] == 2 and b["iteration"] is None  # only A is in the policies table
    for r in rows:
        assert r["lo"] < r["rating"] < r["hi"]


def test_the_prior_pulls_ratings_in_and_filters_choose_the_games(lake):
    """One virtual tied game per policy pulls the ratings toward each other, keeping the
    order. Unfiltered, the 12 games C won against A in the other judge's and suite's rows
    put C first."""
    rows = leaderboard(lake, judge="proxy:1", suite="heldout", n=200)
    assert [r["policy"] for r in rows] == ["A", "B", "C"]
    assert 0 < rows[0]["rating"] - rows[2]["rating"] < 2 * ELO_2
    everything = leaderboard(lake, n=200)
    assert everything[0]["policy"] == "C" and everything[0]["games"] == 20
    assert leaderboard(lake, judge="nobody") == []
    assert leaderboard(lake, n=200, seed=1) == leaderboard(lake, n=200, seed=1)


def test_a_rerun_evaluation_counts_each_game_once(lake):
    """A then B re-evaluated on the same three prompts twice more (a rerun of the same pair,
    then the pair the other way round), each run later than the one before: only the latest
    run's verdicts count, where B won all three, so A and B have 3 games between them, not 9.
    Other judges' and suites' rows with the same prompts stay separate games."""
    later = datetime(2100, 1, 1, tzinfo=UTC)
    latest = datetime(2100, 1, 2, tzinfo=UTC)
    lake.write("evaluations", [_row("r7", i, "A", "B", "a", at=later) for i in range(3)]
               + [_row("r8", i, "B", "A", "a", at=latest) for i in range(3)]
               + [_row("r9", i, "A", "B", "a", judge="llm:x:1", at=later) for i in range(3)])
    rows = {r["policy"]: r for r in leaderboard(lake, judge="proxy:1", suite="heldout", n=50)}
    a, b = rows["A"], rows["B"]
    # A: 4 of 5 against C, 0 of 3 against B (r8); B: 3 against A, 2 of 3 against C
    assert (a["games"], a["wins"], a["losses"]) == (8, 4, 4)
    assert (b["games"], b["wins"], b["ties"], b["losses"]) == (6, 5, 0, 1)
    llm = {r["policy"]: r for r in leaderboard(lake, judge="llm:x:1", n=50)}
    assert llm["A"]["games"] == 9 and llm["A"]["wins"] == 3  # 6 losses to C, 3 wins over B


def test_markdown_and_chart(lake):
    rows = leaderboard(lake, judge="proxy:1", suite="heldout", n=200)
    table = leaderboard_markdown(rows)
    assert table.splitlines()[0].startswith("| rank | policy |")
    assert "| 1 | A | 2 |" in table and "| 6 / 0 / 2 |" in table and len(table.splitlines()) == 5
    assert "No judged pairs" in leaderboard_markdown([])
    svg = ET.fromstring(leaderboard_svg(rows))
    ns = "{http://www.w3.org/2000/svg}"
    points = svg.findall(f".//{ns}circle")
    assert [p.find(f"{ns}title").text.split(":")[0] for p in points] == ["it2 A", "B", "C"]
    assert len(svg.findall(f".//{ns}line[@class='interval']")) == 3
    ys = [float(p.get("cy")) for p in points]
    assert ys == sorted(ys)  # best first: the highest point (smallest y) on the left


def test_command_prints_the_table_and_json(lake, capsys):
    uri = lake.uri
    assert main(["leaderboard", "--lake", uri, "--judge", "proxy:1", "--suite", "heldout"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("| rank | policy |") and "| 3 | C |" in out
    assert main(["leaderboard", "--lake", uri, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["policy"] for r in rows][0] == "C" and {"lo", "hi", "win_rate"} <= set(rows[0])


def test_command_on_a_missing_lake(tmp_path, capsys):
    assert main(["leaderboard", "--lake", str(tmp_path / "none")]) == 2
    assert "run `flywheel demo` first" in capsys.readouterr().err


def test_published_as_a_table_artifact(lake, prefect_server):
    """Published from a flow (as the evaluate stage does): the judge's games of both suites,
    where C's 6 wins over A in mt-bench put it first and A last."""
    from prefect import flow
    from prefect.artifacts import Artifact
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flywheel.tasks.evaluation import publish_leaderboard

    @flow
    def publish():
        return publish_leaderboard(leaderboard(lake, judge="proxy:1", n=200), judge="proxy:1")

    with temporary_settings({PREFECT_API_URL: prefect_server}):
        rows = publish()
        table = json.loads(Artifact.get("leaderboard").data)
    assert [r["policy"] for r in table] == [r["policy"] for r in rows] == ["C", "B", "A"]
    assert table[0]["rating"] == round(rows[0]["rating"], 1) and table[0]["games"] == 14
