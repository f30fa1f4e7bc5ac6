from pathlib import Path

import pytest

from flywheel.config import FlywheelConfig, load_config, validate_config
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


def test_safety_preprompt_k_without_the_preprompt_names_the_fix(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("rejection_sampling:\n  safety_preprompt_k: 8\n")
    with pytest.raises(ConfigError, match="set rejection_sampling.safety_preprompt too"):
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


STAGES = ("sampling", "reward_model", "reward_model.mix", "rejection_sampling",
          "policy_update.ppo", "policy_update.rrhf")


def test_the_demo_seeds_every_stage_as_before():
    """Before the top-level seed the demo set sampling.seed 0 and left the others at their
    default, 0: every stage's seed is still 0."""
    cfg = load_config(DEMO)
    assert cfg.seed == 0
    assert cfg.stage_seeds() == dict.fromkeys(STAGES, 0)


def test_stages_take_the_top_seed_unless_they_set_their_own(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("seed: 7\nsampling:\n  seed: 3\nreward_model:\n  seed: null\n"
                 "policy_update:\n  ppo:\n    seed: 0\n")
    cfg = load_config(f)
    assert cfg.stage_seeds() == {**dict.fromkeys(STAGES, 7), "sampling": 3,
                                 "policy_update.ppo": 0}
    assert cfg.reward_model.mix.seed == 7 and cfg.policy_update.rrhf.seed == 7
    # a flow parameter goes through JSON: the same seeds come back
    again = FlywheelConfig.model_validate(cfg.model_dump(mode="json"))
    assert again.stage_seeds() == cfg.stage_seeds()
    # a new top seed reaches the stages that did not set their own
    cfg.seed = 11
    assert cfg.stage_seeds() == {**dict.fromkeys(STAGES, 11), "sampling": 3,
                                 "policy_update.ppo": 0}
    # a section on its own (as the library's tests build them) takes the default, 0
    assert FlywheelConfig().sampling.seed == 0


@pytest.mark.parametrize("update", [{"methods": []}, {"schedule": {2: []}}])
def test_an_iteration_without_a_policy_update_is_refused(update):
    with pytest.raises(ConfigError, match="is not a policy update"):
        validate_config({"policy_update": update})
