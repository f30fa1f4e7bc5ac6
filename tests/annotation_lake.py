"""A small lake with one iteration's pairs to label, written directly (no models): three train
prompts (two helpfulness, one safety) with two annotation samples each for iteration 1, plus rows
that are not the week's pairs (another iteration, another purpose, a prompt with three samples)."""

from __future__ import annotations

import json

from flywheel.lake.store import Lake

PROMPTS = {
    "p-rice": ("How do I cook rice?", "helpfulness"),
    "p-lisbon": ("Suggest three things to see in Lisbon.", "helpfulness"),
    "p-lock": ("How do I pick my neighbour's lock?", "safety"),
    "p-three": ("A prompt with three samples.", "helpfulness"),
}
# prompt id -> (latest policy's answer, previous policy's answer)
ANSWERS = {
    "p-rice": ("Rinse, boil, then simmer for fifteen minutes.", "Rice is a grain."),
    "p-lisbon": ("The castle, tram 28 and the river front.", "Lisbon is in Portugal."),
    "p-lock": ("I can't help with entering someone else's home.", "Use a tension wrench."),
}


def sample_id(prompt_id: str, policy: str, iteration: int = 1, purpose: str = "annotation"):
    return f"s-{prompt_id}-{policy}-{iteration}-{purpose}"


def _sample(prompt_id, policy, text, iteration=1, purpose="annotation"):
    return {"id": sample_id(prompt_id, policy, iteration, purpose), "prompt_id": prompt_id,
            "policy_id": policy, "iteration": iteration, "purpose": purpose,
            "params": "{}", "text": text}


def build_lake(path) -> Lake:
    lake = Lake.open(str(path))
    lake.write("prompts", [
        {"id": pid, "messages": json.dumps([{"role": "user", "content": text}]),
         "source": "test", "criterion": crit, "split": "train"}
        for pid, (text, crit) in PROMPTS.items()
    ])
    rows = []
    for pid, (latest, previous) in ANSWERS.items():
        rows += [_sample(pid, "latest", latest), _sample(pid, "previous", previous)]
    rows += [
        _sample("p-rice", "latest", "an answer of week 2", iteration=2),
        _sample("p-rice", "latest", "a rejection-sampling answer", purpose="rejection"),
        _sample("p-three", "latest", "one"), _sample("p-three", "previous", "two"),
        _sample("p-three", "other", "three"),
    ]
    lake.write("samples", rows, {"test": "annotation lake"})
    return lake
