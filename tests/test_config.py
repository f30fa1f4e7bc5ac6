from pathlib import Path

import pytest

from flywheel.config import FlywheelConfig, load_config
from flywheel.errors import ConfigError

DEMO = Path(__file__).resolve().parents[1] / "deployments" / "demo.yaml"


def test_demo_config_loads_and_differs_from_defaults_where_it_says():
    cfg = load_config(DEMO)
    assert cfg.sampling.backend == "vllm"
    assert cfg.sampling.max_new_tokens == 64
    assert cfg.annotation.heldout_fraction == 0.25


def test_overrides_apply_dotted_keys():
    cfg = load_config(DEMO, {"lake": "/tmp/x", "sampling.backend": "transformers"})
    assert cfg.lake == "/tmp/x" and cfg.sampling.backend == "transformers"


def test_every_error_is_reported_together_with_field_and_fix(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "sampling:\n  backend: vlm\n  max_new_tokens: -3\n"
        "reward_model:\n  margn: small\n"
        "annotation:\n  strength_thresholds: [0.1, 0.3, 0.6]\n"
    )
    with pytest.raises(ConfigError) as exc:
        load_config(bad)
    msg = str(exc.value)
    assert "4 problem(s)" in msg
    assert "sampling.backend" in msg and "'vllm' or 'transformers'" in msg and "'vlm'" in msg
    assert "sampling.max_new_tokens" in msg and "fit the bound" in msg
    assert "reward_model.margn" in msg and "fix its spelling" in msg
    assert "strictly descending" in msg


def test_an_empty_stop_string_is_refused(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text('sampling:\n  stop: ["\\nUser:", ""]\n')
    with pytest.raises(ConfigError, match="stop strings must not be empty"):
        load_config(bad)


def test_missing_file_names_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="pass --config"):
        load_config(tmp_path / "nope.yaml")


def test_non_mapping_yaml(tmp_path):
    f = tmp_path / "list.yaml"
    f.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(f)


def test_defaults_are_valid():
    cfg = FlywheelConfig()
    assert cfg.reward_model.margin == "small" and cfg.rejection_sampling.k == 4
