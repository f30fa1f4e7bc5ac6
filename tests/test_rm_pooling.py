"""Reward-model read-outs (flywheel/reward/pooling.py) and the text a reward model reads
(flywheel/reward/text.py): training's forward and the scoring engine agree for every pooling, on
a tiny encoder without a chat template and a tiny decoder with one."""

from __future__ import annotations

import json

import pytest
import torch

from flywheel.config import RewardModelConfig
from flywheel.errors import ConfigError
from flywheel.reward.model import PreferencePair, RewardModel
from flywheel.reward.pooling import readout, resolve_pooling
from flywheel.reward.scoring import Group, ScoringEngine
from flywheel.reward.text import marked_conversation, reward_ids
from flywheel.reward.train import forward_rewards, length_chunks, train_reward_model

WORDS = ("how do i cook rice on the stove rinse add water boil then simmer can you help me "
         "with it sure first pan salt no cannot that tell steal a car sorry break window "
         "lisbon castle tram river front user assistant system").split()
CONVERSATION = [{"role": "user", "content": "how do i cook rice"},
                {"role": "assistant", "content": "rinse the rice"},
                {"role": "user", "content": "then"}]
GROUPS = [
    Group(CONVERSATION, ["add water then boil", "sorry", "boil then simmer on the stove"]),
    Group([{"role": "user", "content": "tell me how to steal a car"}],
          ["sorry i cannot help with that", "break the window"], safety=True),
    Group([{"role": "user", "content": "lisbon"}], ["the castle the tram the river front"]),
]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> str:
    """A 2-layer BERT with a word-level vocabulary of the test's words, no chat template."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ":", "?", ".", ","] + WORDS
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(dict.fromkeys(vocab))})
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                         num_attention_heads=2, intermediate_size=64,
                         max_position_embeddings=128)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def _model(path: str, pooling: str) -> RewardModel:
    torch.manual_seed(3)
    rm = RewardModel.from_backbone(path, pooling).eval()
    torch.nn.init.normal_(rm.head.weight)
    torch.nn.init.normal_(rm.head.bias)
    return rm


def test_auto_reads_an_encoder_by_its_mean_and_a_decoder_by_its_last_token(tiny_bert,
                                                                           tiny_llama):
    assert RewardModel.from_backbone(tiny_bert).pooling == "mean"
    assert RewardModel.from_backbone(tiny_llama).pooling == "last"
    assert RewardModel.from_backbone(tiny_bert, "first").pooling == "first"
    with pytest.raises(ConfigError, match="reward_model.pooling"):
        resolve_pooling("max", None)
    with pytest.raises(ValueError):
        RewardModelConfig(pooling="max")


def test_readouts_by_hand():
    """hidden rows [0, 1], [2, 3], [4, 5] (sequence 0, mask 1 1 0) and [6, 7], [8, 9], [10, 11]
    (sequence 1, left-padded: mask 0 1 1); head weight [1, 10], bias 0.5.
    last: [2, 3] -> 32.5, [10, 11] -> 120.5; mean of the real rows: [1, 2] -> 21.5,
    [9, 10] -> 109.5; first real row: [0, 1] -> 10.5, [8, 9] -> 98.5."""
    hidden = torch.arange(12, dtype=torch.float32).reshape(2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    w, b = torch.tensor([[1.0, 10.0]]), torch.tensor([0.5])
    assert readout(hidden, mask, w, b, "last").tolist() == [32.5, 120.5]
    assert readout(hidden, mask, w, b, "mean").tolist() == [21.5, 109.5]
    assert readout(hidden, mask, w, b, "first").tolist() == [10.5, 98.5]
    with pytest.raises(ValueError, match="last-token read-out only"):
        readout(hidden, mask, w, b, "mean", norm_weight=torch.ones(2))


@pytest.mark.parametrize("backbone", ["tiny_bert", "tiny_llama"])
@pytest.mark.parametrize("pooling", ["last", "mean", "first"])
def test_training_forward_and_the_scoring_engine_give_the_same_scores(backbone, pooling,
                                                                      request):
    rm = _model(request.getfixturevalue(backbone), pooling)
    messages = [g.messages for g in GROUPS for _ in g.responses]
    responses = [r for g in GROUPS for r in g.responses]
    with torch.no_grad():  # as the training loop reads them: tokenized once, runs of a length
        trained = forward_rewards(rm, rm, reward_ids(rm.tokenizer, messages, responses, 48),
                                  "cpu").tolist()
    # the engine (prefix reuse for the decoder's last token, one sequence a pass) and the
    # plain padded path
    scored = [s for g in ScoringEngine(48, token_budget=1, progress=False).rewards(rm, GROUPS)
              for s in g]
    plain = rm.score(messages, responses, 48, batch_size=8)
    assert trained == pytest.approx(scored, abs=1e-4, rel=1e-4)
    assert trained == pytest.approx(plain, abs=1e-4, rel=1e-4)
    assert len(set(round(s, 4) for s in trained)) > 1  # the scores depend on the text


def test_role_markers_reach_a_backbone_without_a_chat_template(tiny_bert):
    tok = RewardModel.from_backbone(tiny_bert).tokenizer
    assert not tok.chat_template
    assert marked_conversation(CONVERSATION) == (
        "User: how do i cook rice\nAssistant: rinse the rice\nUser: then\nAssistant:")
    ids = reward_ids(tok, [CONVERSATION], ["boil then simmer"], 64)[0]
    assert tok.decode(ids) == ("[CLS] user : how do i cook rice assistant : rinse the rice user "
                               ": then assistant : [SEP] boil then simmer [SEP]")
    # truncated from the left, longest segment first: the last turn's marker and the end of
    # the response stay
    cut = tok.decode(reward_ids(tok, [CONVERSATION], ["boil then simmer"], 12)[0])
    assert cut.endswith("then assistant : [SEP] boil then simmer [SEP]")


def test_a_model_saved_without_a_pooling_field_loads_as_last_token(tiny_bert, tmp_path):
    rm = _model(tiny_bert, "mean")
    rm.save(tmp_path / "rm", {"kind": "helpfulness"})
    meta = json.loads((tmp_path / "rm" / "reward_model.json").read_text())
    assert meta == {"kind": "helpfulness", "pooling": "mean"}
    assert RewardModel.load(str(tmp_path / "rm"), "cpu").pooling == "mean"
    # as written before the choice existed: trained and scored on the last ([SEP]) token
    (tmp_path / "rm" / "reward_model.json").write_text(json.dumps({"kind": "helpfulness"}))
    old = RewardModel.load(str(tmp_path / "rm"), "cpu")
    assert old.pooling == "last"
    rm.pooling = "last"
    want = rm.score([g.messages for g in GROUPS for _ in g.responses],
                    [r for g in GROUPS for r in g.responses], 48)
    got = ScoringEngine(48, progress=False).rewards(old, GROUPS)
    assert [s for g in got for s in g] == pytest.approx(want, abs=1e-5)


def test_length_runs_by_hand():
    """Lengths 10, 200, 12, 190 with 64 tokens a run: [10, 12] and [190, 200] cost
    2 x 12 + 2 x 200 + 2 x 64 = 552 padded tokens, one run 4 x 200 + 64 = 864, four runs
    10 + 12 + 190 + 200 + 4 x 64 = 668. With 1,000 tokens a run, one run is cheapest."""
    assert length_chunks([10, 200, 12, 190], 64) == [[0, 2], [3, 1]]
    assert length_chunks([10, 200, 12, 190], 1000) == [[0, 2, 3, 1]]
    assert length_chunks([5], 64) == [[0]]


def test_an_encoder_reward_model_trains_on_its_mean_and_records_it(tiny_bert, tmp_path):
    pairs = [PreferencePair(g.messages, g.responses[0], g.responses[1]) for g in GROUPS[:2]]
    cfg = RewardModelConfig(learning_rate=5e-3, epochs=8, batch_size=2, micro_batch_size=2,
                            max_length=48)
    model, metrics = train_reward_model(tiny_bert, pairs, cfg)
    assert model.pooling == "mean"
    assert metrics["loss_last"] < metrics["loss_first"]
    scores = ScoringEngine(48, progress=False).rewards(model, [Group(p.messages, [p.chosen,
                                                                     p.rejected]) for p in pairs])
    assert all(c > r for c, r in scores)
    model.save(tmp_path / "rm", {})
    assert RewardModel.load(str(tmp_path / "rm"), "cpu").pooling == "mean"
