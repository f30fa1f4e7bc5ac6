"""The llm judge: MT-bench's verdict reading, its prompts, the both-orders rule, the verdict cache
and the clear failure of an endpoint that is down (default suite, no server); then the requests
themselves against a real vLLM server of SmolLM2 (slow: one server for the session)."""

from __future__ import annotations

import json
import logging
import threading
import time

import httpx
import pytest
import servers

from flywheel.config import validate_config
from flywheel.errors import ConfigError, DataError
from flywheel.evaluation.judge import make_judge
from flywheel.evaluation.llm_judge import (
    JudgeEndpointError,
    LLMJudge,
    combine,
    load_templates,
    messages,
    parse_verdict,
    template_name,
    templates_version,
)
from flywheel.evaluation.suites import data_dir
from flywheel.evaluation.verdicts import Pair, Verdict
from flywheel.lake.schemas import content_id
from flywheel.lake.store import Lake

KEY = "sk-test-9b1e77c0"
SINGLE = Pair("What is the capital of France?", "Paris.", "Bananas are {yellow}.")
TWO = Pair(("Write a haiku about rain.", "Now one about snow."),
           ("Rain taps on the roof", "Snow falls without sound"), ("No.", "Still no."))
MATH = Pair("What is 3 * 4?", "12", "7", reference=("3 * 4 = 12",))
MATH_TWO = Pair(("What is 3 * 4?", "And 5 * 5?"), ("12", "25"), ("7", "10"),
                reference=("12", "25"))


@pytest.fixture(scope="module")
def templates():
    return load_templates(data_dir())


def config(tmp_path, **llm):
    return validate_config({"name": "t", "lake": str(tmp_path / "lake"),
                            "evaluation": {"llm_judge": llm}})


@pytest.fixture
def judge_env(monkeypatch):
    """A judge environment pointing at a port nothing listens on."""
    monkeypatch.setenv("FLYWHEEL_JUDGE_URL", f"http://127.0.0.1:{servers.free_port()}/v1")
    monkeypatch.setenv("FLYWHEEL_JUDGE_MODEL", "judge-model")
    monkeypatch.setenv("FLYWHEEL_JUDGE_API_KEY", KEY)


def test_the_verdict_is_read_as_mt_bench_reads_it():
    """The first of [[A]], [[B]], [[C]] found decides, in that order (FastChat's
    run_judge_pair); an answer naming none is unparsed (None)."""
    assert parse_verdict("A is more accurate. [[A]]") == "a"
    assert parse_verdict("Final verdict: [[B]]") == "b"
    assert parse_verdict("Both are equally good: [[C]]") == "tie"
    assert parse_verdict("not [[B]] but [[A]]") == "a"  # [[A]] is looked for first
    assert parse_verdict("Assistant A is better.") is None
    assert parse_verdict("[A]") is None and parse_verdict("") is None


@pytest.mark.parametrize("first, second, winner, flipped, orders", [
    # A shown first wins, and B's answer (now shown first) loses when swapped: A, consistently
    ("[[A]]", "[[B]]", "a", False, ["a", "b"]),
    ("[[B]]", "[[A]]", "b", False, ["b", "a"]),
    # the first position wins both times: the verdict follows the order, so a flipped tie
    ("[[A]]", "[[A]]", "tie", True, ["a", "a"]),
    ("[[B]]", "[[B]]", "tie", True, ["b", "b"]),
    # a tie in one order and a win in the other: a tie, not a flip
    ("[[C]]", "[[B]]", "tie", False, ["tie", "b"]),
    # unparsed counts as a tie in its order, and is recorded as unparsed
    ("A is better", "[[B]]", "tie", False, ["unparsed", "b"]),
    ("", "", "tie", False, ["unparsed", "unparsed"]),
])
def test_both_orders_combine_into_one_verdict(first, second, winner, flipped, orders):
    verdict, readings = combine(first, second)
    assert verdict == Verdict(winner, flipped) and readings == orders


def test_the_template_follows_the_turns_and_the_reference():
    assert [template_name(p) for p in (SINGLE, TWO, MATH, MATH_TWO)] == [
        "pair-v2", "pair-v2-multi-turn", "pair-math-v1", "pair-math-v1-multi-turn"]
    with pytest.raises(DataError, match="one or two user turns; got 3"):
        template_name(Pair(("1", "2", "3"), ("a",) * 3, ("b",) * 3))
    with pytest.raises(ValueError, match="one reference answer per turn"):
        template_name(Pair(("1", "2"), ("a",) * 2, ("b",) * 2, reference=("r",)))


def test_the_prompt_shows_each_answer_in_its_place(templates):
    system, user = messages(SINGLE, templates)
    assert system == {"role": "system", "content": templates["pair-v2"].system}
    text = user["content"]
    assert text.startswith("[User Question]\nWhat is the capital of France?\n")
    assert "[The Start of Assistant A's Answer]\nParis.\n[The End of Assistant A's Answer]" in text
    # an answer's braces are text, not template fields
    assert "[The Start of Assistant B's Answer]\nBananas are {yellow}.\n" in text
    swapped = messages(SINGLE.swapped(), templates)[1]["content"]
    assert "Assistant A's Answer]\nBananas are {yellow}.\n" in swapped
    assert "Assistant B's Answer]\nParis.\n" in swapped

    two = messages(TWO, templates)[1]["content"]
    assert two.index("Write a haiku") < two.index("Rain taps") < two.index("Now one about snow") \
        < two.index("Snow falls") < two.index("No.") < two.index("Still no.")
    assert messages(TWO, templates)[0]["content"] == templates["pair-v2-multi-turn"].system

    math = messages(MATH, templates)[1]["content"]
    assert "[The Start of Reference Answer]\n3 * 4 = 12\n[The End of Reference Answer]" in math
    math_two = messages(MATH_TWO, templates)[1]["content"]
    assert "### Reference answer:\n12\n" in math_two and "### Reference answer:\n25\n" in math_two
    assert "{" not in math_two  # every field filled


def test_a_missing_url_names_the_variable(tmp_path, monkeypatch):
    monkeypatch.delenv("FLYWHEEL_JUDGE_URL", raising=False)
    with pytest.raises(ConfigError, match="FLYWHEEL_JUDGE_URL.*vllm serve"):
        make_judge("llm", config(tmp_path))


def test_missing_prompts_name_where_they_were_looked_for(tmp_path, judge_env):
    cfg = validate_config({"name": "t", "evaluation": {"data_dir": str(tmp_path)}})
    with pytest.raises(DataError) as err:
        make_judge("llm", cfg)
    message = str(err.value)
    assert str(tmp_path / "llm_judge_prompts.jsonl.gz") in message
    assert "evaluation.data_dir" in message and "FLYWHEEL_DATA" in message


def test_the_key_is_the_model_and_prompts_not_the_endpoint(tmp_path, judge_env, monkeypatch,
                                                           templates):
    judge = make_judge("llm", config(tmp_path), None)
    assert isinstance(judge, LLMJudge) and judge.name == "llm"
    assert judge.key == f"llm:judge-model@mt-bench-pair.{templates_version(templates, 512)}"
    monkeypatch.setenv("FLYWHEEL_JUDGE_URL", "https://elsewhere.example/v1")
    monkeypatch.setenv("FLYWHEEL_JUDGE_API_KEY", "another-key")
    assert make_judge("llm", config(tmp_path)).key == judge.key
    assert make_judge("llm", config(tmp_path, max_tokens=64)).key != judge.key


def test_an_endpoint_that_is_down_fails_clearly_after_backing_off(tmp_path, judge_env, caplog):
    """max_retries 3 with a first wait of 0.05 s: 4 tries, waits 0.05 + 0.1 + 0.2 = 0.35 s."""
    caplog.set_level(logging.DEBUG)
    judge = LLMJudge.from_env(config(tmp_path, max_retries=3), backoff_s=0.05, progress=False)
    start = time.monotonic()
    with pytest.raises(JudgeEndpointError) as err:
        judge.compare([SINGLE])
    assert 0.35 <= time.monotonic() - start < 10
    message = str(err.value)
    assert judge.url in message and "after 4 tries" in message and "ConnectError" in message
    assert "vllm serve" in message and "FLYWHEEL_JUDGE_URL" in message
    assert KEY not in message and KEY not in caplog.text and KEY not in judge.key


def test_no_model_named_and_none_listed_fails_at_once(tmp_path, judge_env, monkeypatch):
    monkeypatch.delenv("FLYWHEEL_JUDGE_MODEL")
    with pytest.raises(JudgeEndpointError, match="GET /models after 1 try "):
        LLMJudge.from_env(config(tmp_path, max_retries=0))


def test_cached_verdicts_are_not_asked_again(tmp_path, judge_env):
    """Verdicts already in the lake under the judge's key come back with no request (the
    endpoint is down, so a request would fail); a pair not there is asked."""
    lake = Lake.open(str(tmp_path / "lake"))
    judge = LLMJudge.from_env(config(tmp_path, max_retries=0), lake=lake, progress=False)
    detail = {"template": "pair-v2", "orders": ["a", "unparsed"], "judgments": ["[[A]]", "?"]}
    lake.write("verdicts", [
        {"id": content_id(judge.key, p.prompt, p.reference, p.a, p.b), "judge": judge.key,
         "verdict": w, "flipped": f, "detail": json.dumps(detail)}
        for p, w, f in ((SINGLE, "tie", True), (MATH, "b", False))])
    assert judge.compare([MATH, SINGLE, MATH]) == [Verdict("b"), Verdict("tie", True),
                                                   Verdict("b")]
    assert judge.last_stats == {"pairs": 3, "cached": 3, "requests": 0, "flips": 1,
                                "flip_rate": 1 / 3, "unparsed": 3}
    with pytest.raises(JudgeEndpointError):
        judge.compare([SINGLE, TWO])


class Watch(httpx.HTTPTransport):
    """httpx's transport, counting requests in flight and keeping each request's JSON body."""

    def __init__(self):
        super().__init__()
        self.lock = threading.Lock()
        self.now = self.peak = 0
        self.bodies: list[dict] = []

    def handle_request(self, request):
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
            if request.method == "POST":
                self.bodies.append(json.loads(request.content))
        try:
            return super().handle_request(request)
        finally:
            with self.lock:
                self.now -= 1


@pytest.mark.slow
def test_the_judge_on_a_vllm_server(vllm_judge_server, tmp_path, monkeypatch, caplog, capsys,
                                    templates):
    """Three pairs, two requests each, at most two in flight; then the same pairs from the
    cache, and a wrong API key refused without being shown."""
    caplog.set_level(logging.DEBUG)
    for var, value in vllm_judge_server.judge_env().items():
        monkeypatch.setenv(var, value)
    monkeypatch.delenv("FLYWHEEL_JUDGE_MODEL")  # the endpoint's model, from GET /models
    cfg = config(tmp_path, concurrency=2, max_tokens=16, max_retries=1)
    lake = Lake.open(str(tmp_path / "lake"))
    pairs = [SINGLE, TWO, MATH]
    watch = Watch()
    judge = LLMJudge.from_env(cfg, lake=lake, transport=watch)
    assert judge.model == "smollm2-135m-instruct"
    verdicts = judge.compare(pairs)

    assert len(watch.bodies) == judge.last_stats["requests"] == 6
    assert watch.peak == 2  # the bound, reached
    assert all(b["temperature"] == 0 and b["max_tokens"] == 16
               and b["model"] == "smollm2-135m-instruct" for b in watch.bodies)
    asked = [b["messages"] for b in watch.bodies]
    for p in pairs:  # each pair once in each order
        assert asked.count(messages(p, templates)) == asked.count(
            messages(p.swapped(), templates)) == 1
    rows = {r["id"]: r for r in lake.rows("verdicts")}
    assert len(rows) == 3 and {r["judge"] for r in rows.values()} == {judge.key}
    for p, v in zip(pairs, verdicts):
        row = rows[content_id(judge.key, p.prompt, p.reference, p.a, p.b)]
        detail = json.loads(row["detail"])
        assert detail["template"] == template_name(p)
        assert combine(*detail["judgments"]) == (v, detail["orders"])
        assert (row["verdict"], row["flipped"]) == (v.winner, v.flipped)
    stats = judge.last_stats
    assert stats["flips"] == sum(v.flipped for v in verdicts)
    assert stats["unparsed"] == sum(json.loads(r["detail"])["orders"].count("unparsed")
                                    for r in rows.values())

    again = Watch()
    cached = LLMJudge.from_env(cfg, lake=lake, transport=again)
    assert cached.compare(pairs) == verdicts and again.bodies == []
    assert cached.last_stats["cached"] == 3 and cached.last_stats["requests"] == 0

    monkeypatch.setenv("FLYWHEEL_JUDGE_API_KEY", "wrong-key-51d0")
    with pytest.raises(JudgeEndpointError, match="HTTP 401.*FLYWHEEL_JUDGE_API_KEY") as err:
        LLMJudge.from_env(cfg)
    seen = caplog.text + "".join(capsys.readouterr()) + str(err.value) + json.dumps(
        lake.rows("verdicts"), default=str)
    assert vllm_judge_server.api_key not in seen and "wrong-key-51d0" not in seen
