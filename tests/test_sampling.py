"""Both sampling backends on a tiny real model. The vLLM test starts the real engine (its CPU
build here): about a minute, most of it engine start-up."""

import json

import pytest

from flywheel.policy.sampling import HFSampler, VLLMSampler
from flywheel.stages import common, sample_for_annotation

MSGS = [[{"role": "user", "content": "How do I cook rice?"}],
        [{"role": "user", "content": "Suggest things to see in Lisbon."}],
        [{"role": "user", "content": "How do I write an email?"}]]


def _check(out, n, max_new):
    assert len(out) == len(MSGS) and all(len(group) == n for group in out)
    for group in out:
        for g in group:
            assert 1 <= g.token_count <= max_new
            assert g.logprob_sum <= 0.0
            assert isinstance(g.text, str)


def test_transformers_backend_k_samples_and_greedy_is_deterministic(tiny_llama):
    s = HFSampler(tiny_llama, batch_size=2)
    out = s.generate(MSGS, n=3, temperature=1.0, max_new_tokens=6)
    _check(out, 3, 6)
    assert len({g.text for g in out[0]}) > 1  # sampling at T=1 over a random model varies
    g1 = s.generate(MSGS, n=1, temperature=0.0, max_new_tokens=6)
    g2 = s.generate(MSGS, n=1, temperature=0.0, max_new_tokens=6)
    assert [x[0].text for x in g1] == [x[0].text for x in g2]


def test_transformers_backend_stop_strings(tiny_llama):
    """A stop string taken from the middle of one sampled answer ends every answer where it
    first appears: the text before it, fewer tokens, a log-probability no lower; the others
    are unchanged. (The sampler reseeds each call, so both calls draw the same answers.)"""
    s = HFSampler(tiny_llama, batch_size=2)
    full = [g[0] for g in s.generate(MSGS, n=1, temperature=1.0, max_new_tokens=16)]
    text = full[0].text
    stop = next(text[i:i + 3] for i in range(len(text) // 2, len(text) - 2)
                if text[i:i + 3].strip())
    got = [g[0] for g in s.generate(MSGS, n=1, temperature=1.0, max_new_tokens=16,
                                    stop=[stop])]
    assert got[0].text == text[: text.find(stop)]
    assert got[0].token_count < full[0].token_count
    assert got[0].logprob_sum >= full[0].logprob_sum
    for g, whole in zip(got, full):
        if stop not in whole.text:
            assert g == whole
    never = s.generate(MSGS, n=1, temperature=1.0, max_new_tokens=16, stop=["\u2603\u2603"])
    assert [g[0] for g in never] == full


def test_vllm_backend_k_samples(tiny_llama):
    pytest.importorskip("vllm")
    s = VLLMSampler(tiny_llama, dtype="float32", max_model_len=256)
    try:
        out = s.generate(MSGS, n=2, temperature=1.0, max_new_tokens=6)
        # the tiny model's greedy answers are newlines: a newline stop ends them at the first
        greedy = s.generate(MSGS, n=1, temperature=0.0, max_new_tokens=8)
        stopped = s.generate(MSGS, n=1, temperature=0.0, max_new_tokens=8, stop=["\n"])
    finally:
        s.close()
    _check(out, 2, 6)
    assert all(g[0].text.startswith("\n") and g[0].token_count == 8 for g in greedy)
    assert all(g[0].text == "" and g[0].token_count == 1 for g in stopped)


def test_shared_samplers_are_reused_and_the_oldest_is_closed(tiny_llama, tmp_path):
    import shutil

    from flywheel.policy.sampling import _OPEN, close_samplers, shared_sampler

    other = tmp_path / "copy"
    shutil.copytree(tiny_llama, other)
    close_samplers()
    a = shared_sampler("transformers", tiny_llama, "float32", 256, 0, keep=1)
    assert shared_sampler("transformers", tiny_llama, "float32", 256, 0, keep=1) is a
    b = shared_sampler("transformers", str(other), "float32", 256, 0, keep=1)
    assert b is not a and not hasattr(a, "model")  # evicted: closed, its model released
    assert list(_OPEN) == [("transformers", str(other), "float32", 256, 0, 1)]
    close_samplers()
    assert not _OPEN


def _annotation_pairs(tiny_config, **sampling):
    """Iteration 1's annotation pairs with 2 responses per policy at T 0.7 / 1.0; the lake."""
    from flywheel.policy.sampling import close_samplers

    cfg = tiny_config.model_copy(update={"sampling": tiny_config.sampling.model_copy(
        update={"responses_per_policy": 2, "temperatures": [0.7, 1.0], **sampling})})
    lake = common.open_lake(cfg)
    try:
        return sample_for_annotation.sample_for_annotation(cfg, lake, 1), lake
    finally:
        close_samplers()


def test_annotation_pairs_every_latest_response_with_every_previous_one(tiny_config):
    pairs, lake = _annotation_pairs(tiny_config)
    samples = {s["id"]: s for s in lake.rows("samples")}
    train = [p["id"] for p in lake.rows("prompts") if p["split"] == "train"]
    assert len(samples) == len(train) * 2 * 2  # 2 from each policy per train prompt
    assert len(pairs) == len({tuple(p) for p in pairs}) == len(train) * 2 * 2  # 2 x 2 each
    by_prompt: dict[str, list] = {}
    for a, b in pairs:
        sa, sb = samples[a], samples[b]
        assert sa["prompt_id"] == sb["prompt_id"]
        assert (json.loads(sa["params"])["temperature"],
                json.loads(sb["params"])["temperature"]) == (0.7, 1.0)  # latest, previous
        by_prompt.setdefault(sa["prompt_id"], []).append((a, b))
    for got in by_prompt.values():
        latest, previous = {a for a, _ in got}, {b for _, b in got}
        assert len(latest) == len(previous) == 2
        assert set(got) == {(a, b) for a in latest for b in previous}


def test_week_prompts_take_the_next_prompts_of_each_criterion_each_week():
    """10 helpful and 3 harmful prompts, 4 a criterion a week: every week 4 helpful (weeks 1
    and 2 disjoint, weeks 1-3 cover all 10: 12 slots, the ring wraps after 10) and all 3
    harmful (fewer than 4); the file's order is kept; None takes every prompt."""
    from flywheel.stages.sample_for_annotation import week_prompts

    prompts = ([{"id": f"h{i}", "criterion": "helpfulness"} for i in range(10)]
               + [{"id": f"s{i}", "criterion": "safety"} for i in range(3)])
    weeks = [week_prompts(prompts, w, 4) for w in (1, 2, 3)]
    helpful = [{p["id"] for p in week if p["criterion"] == "helpfulness"} for week in weeks]
    assert [len(h) for h in helpful] == [4, 4, 4]
    assert not helpful[0] & helpful[1]
    assert set().union(*helpful) == {f"h{i}" for i in range(10)}
    assert all({p["id"] for p in w if p["criterion"] == "safety"} == {"s0", "s1", "s2"}
               for w in weeks)
    assert all(w == sorted(w, key=prompts.index) for w in weeks)  # the given order
    assert weeks[0] != [p for p in prompts if p["id"] in {"h0", "h1", "h2", "h3"}
                        or p["criterion"] == "safety"]  # shuffled, not the file's first four
    assert week_prompts(prompts, 1, None) == prompts


def test_annotation_draws_only_the_weeks_prompts(tiny_config):
    """One prompt a criterion a week: week 1's samples cover one helpful and one harmful train
    prompt of the two each (the tiny set has two of each)."""
    from flywheel.stages.sample_for_annotation import week_prompts

    pairs, lake = _annotation_pairs(tiny_config, prompts_per_criterion=1)
    samples = {s["id"]: s for s in lake.rows("samples")}
    prompts = {p["id"]: p for p in lake.rows("prompts")}
    drawn = {s["prompt_id"] for s in samples.values()}
    train = [p for p in prompts.values() if p["split"] == "train"]
    assert drawn == {p["id"] for p in week_prompts(train, 1, 1)}
    assert sorted(prompts[i]["criterion"] for i in drawn) == ["helpfulness", "safety"]
    assert len(pairs) == 2 * 2 * 2  # 2 prompts, 2 x 2 pairs each


def test_annotation_draws_the_previous_side_with_the_safety_preprompt_on_safety_prompts(
        tiny_config, monkeypatch):
    from flywheel.annotation.prompts import messages_of

    seen = []  # every conversation the engines were asked to continue
    real = sample_for_annotation.sampler_for

    class Recording:
        def __init__(self, inner):
            self.inner, self.backend = inner, inner.backend

        def generate(self, messages, n, temperature, *args):
            seen.extend((m, temperature) for m in messages)
            return self.inner.generate(messages, n, temperature, *args)

    monkeypatch.setattr(sample_for_annotation, "sampler_for",
                        lambda cfg, path: Recording(real(cfg, path)))
    pre = "Refuse harmful requests."
    pairs, lake = _annotation_pairs(tiny_config, safety_preprompt=pre)
    samples = {s["id"]: s for s in lake.rows("samples")}
    prompts = {p["id"]: p for p in lake.rows("prompts")}
    train = [p for p in prompts.values() if p["split"] == "train"]
    assert {p["criterion"] for p in train} == {"helpfulness", "safety"}
    assert len(pairs) == len(train) * 2 * 2
    for a, b in pairs:
        sa, sb = samples[a], samples[b]
        assert sa["prompt_id"] == sb["prompt_id"]  # pairs still within one prompt
        safety = prompts[sa["prompt_id"]]["criterion"] == "safety"
        assert "preprompt" not in json.loads(sa["params"])  # the latest side: never
        assert json.loads(sb["params"]).get("preprompt") == (pre if safety else None)
        assert json.loads(sb["params"])["temperature"] == 1.0
    # the engine saw the preprompt as the system prompt of the previous side's safety prompts
    # alone, followed by the prompt's own messages
    with_pre = [(m, t) for m, t in seen if m[0] == {"role": "system", "content": pre}]
    safety_msgs = [messages_of(p) for p in train if p["criterion"] == "safety"]
    assert len(with_pre) == len(safety_msgs)
    assert all(t == 1.0 and m[1:] in safety_msgs for m, t in with_pre)


def test_annotation_draws_helpful_prompts_with_the_preprompt_on_both_sides(tiny_config):
    """sampling.preprompt: both policies answer the helpful prompts with it (as rejection
    sampling draws them); the harmful prompts keep theirs: none on the latest side, the safety
    preprompt on the previous one. Every pair stays within one prompt and one preprompt."""
    concise, safe = "Answer in one sentence.", "Refuse harmful requests."
    pairs, lake = _annotation_pairs(tiny_config, preprompt=concise, safety_preprompt=safe)
    samples = {s["id"]: s for s in lake.rows("samples")}
    prompts = {p["id"]: p for p in lake.rows("prompts")}
    criteria = {prompts[samples[a]["prompt_id"]]["criterion"] for a, _ in pairs}
    assert criteria == {"helpfulness", "safety"}
    for a, b in pairs:
        assert samples[a]["prompt_id"] == samples[b]["prompt_id"]
        pre_a, pre_b = (json.loads(samples[x]["params"]).get("preprompt") for x in (a, b))
        if prompts[samples[a]["prompt_id"]]["criterion"] == "safety":
            assert (pre_a, pre_b) == (None, safe)
        else:
            assert (pre_a, pre_b) == (concise, concise)


def test_annotation_samples_end_at_the_configured_stop_strings(tiny_config, tmp_path):
    """sampling.stop reaches the engine for every draw and is recorded with each sample: with
    the character the tiny model writes most often as a stop, no sample holds it."""
    from collections import Counter

    plain, plain_lake = _annotation_pairs(tiny_config)
    stop = Counter("".join(s["text"] for s in plain_lake.rows("samples"))).most_common(1)[0][0]
    other = tiny_config.model_copy(update={"lake": str(tmp_path / "lake-with-stop")})
    pairs, lake = _annotation_pairs(other, stop=[stop])
    samples = lake.rows("samples")
    assert len(pairs) == len(plain) and len(samples) == len(plain_lake.rows("samples"))
    assert all(json.loads(s["params"])["stop"] == [stop] for s in samples)
    assert not any(stop in s["text"] for s in samples)
    assert any(s["text"] for s in samples)  # cut where the stop appears, not emptied
