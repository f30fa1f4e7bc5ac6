import json

import pytest

from flywheel import models
from flywheel.annotation.prompts import load_prompts
from flywheel.errors import DataError, ModelNotFoundError


def test_shipped_prompts_counts_by_criterion_and_split():
    """224 helpful (24 of them borderline, 8 "Where ..." questions) and 32 harmful to train on
    (deployments/demo.yaml annotates 64 helpful of them a week; rejection sampling draws on
    every one), 200 helpful and 28 harmful held out (a helpful win rate near 0.5 then carries a
    95 % interval of about +/- 0.07)."""
    rows = load_prompts()
    count = {}
    for r in rows:
        count[r["criterion"], r["split"]] = count.get((r["criterion"], r["split"]), 0) + 1
    assert count == {("helpfulness", "train"): 224, ("helpfulness", "heldout"): 200,
                     ("safety", "train"): 32, ("safety", "heldout"): 28}
    assert len({r["id"] for r in rows}) == 484


def test_bad_prompt_lines_are_reported_together(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text("\n".join([
        json.dumps({"text": "ok", "criterion": "helpfulness", "split": "train"}),
        "{not json",
        json.dumps({"text": "", "criterion": "helpfulness"}),
        json.dumps({"text": "x", "criterion": "fun"}),
    ]))
    with pytest.raises(DataError) as exc:
        load_prompts(str(f))
    msg = str(exc.value)
    assert "3 bad line(s)" in msg and "line 2" in msg and "line 3" in msg and "line 4" in msg


def test_limit_keeps_both_splits():
    rows = load_prompts(limit=3)
    assert [r["split"] for r in rows].count("train") == 3
    assert [r["split"] for r in rows].count("heldout") == 3


def test_unconverted_builtin_names_the_bootstrap_command(tmp_path, monkeypatch):
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="run `flywheel bootstrap`"):
        models.resolve("builtin:smollm2-135m-instruct")


def test_missing_local_folder_and_unknown_builtin(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        models.resolve(str(tmp_path / "nowhere"))
    with pytest.raises(ModelNotFoundError, match="unknown builtin"):
        models.resolve("builtin:gpt-5")


def test_packaged_encoder_and_local_folders_resolve(tiny_llama):
    assert models.resolve("builtin:all-minilm-l6-v2").endswith("model")
    assert models.resolve(tiny_llama) == tiny_llama
    assert models.resolve("org/some-hub-model") == "org/some-hub-model"
