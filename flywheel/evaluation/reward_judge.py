"""The reward-model judge: each answer scored alone by a trained reward model, the higher score
wins (`verdicts.by_score`), so the order of the two answers cannot matter.

By default the lake's reward models in use judge, as the loop itself ranks samples: the
helpfulness model the helpfulness pairs, the safety model the safety pairs. Named (a lake id or
a checkpoint folder), one model judges every pair. The conversation a side is scored in is the
pair's user turns with that side's own earlier answers, so both sides of a single-turn pair
share their prompt and it runs once for both (the scoring engine's prefix reuse).
"""

from __future__ import annotations

import json
from pathlib import Path

from flywheel.config import FlywheelConfig
from flywheel.errors import DataError
from flywheel.evaluation.verdicts import Pair, Verdict, by_score
from flywheel.reward.evaluation import resolve_model
from flywheel.reward.model import RewardModel
from flywheel.reward.retrain import KINDS, current_models
from flywheel.reward.scoring import Group, ScoringEngine


def conversation(prompt: tuple[str, ...], answers: tuple[str, ...]) -> list[dict]:
    """Chat messages up to the last user turn: every user turn, each followed by this side's
    answer to it but the last."""
    messages = []
    for i, text in enumerate(prompt):
        messages.append({"role": "user", "content": text})
        if i < len(prompt) - 1:
            messages.append({"role": "assistant", "content": answers[i]})
    return messages


def _max_length(folder: str, default: int) -> int:
    """The length the model was trained at (its reward_model.json), else `default`."""
    meta = Path(folder) / "reward_model.json"
    saved = json.loads(meta.read_text() or "{}") if meta.is_file() else {}
    return int(saved.get("max_length") or default)


class RewardModelJudge:
    name = "reward-model"

    def __init__(self, folders: dict[str, str], key: str, cfg: FlywheelConfig,
                 progress: bool = True):
        """`folders`: a checkpoint folder per criterion; the key "*" judges every criterion."""
        self.folders = folders
        self.key = key
        self.cfg = cfg
        self.progress = progress
        self._models: dict[str, RewardModel] = {}

    @classmethod
    def from_spec(cls, arg: str, cfg: FlywheelConfig, lake=None) -> RewardModelJudge:
        """`arg` empty: the lake's promoted helpfulness and safety models; else a reward model
        id in `lake` (a unique prefix) or a checkpoint folder, judging every pair."""
        if arg:
            folder, row = resolve_model(arg, lake)
            return cls({"*": folder}, f"reward-model:{row.get('id') or Path(folder).name}", cfg)
        if lake is None:
            raise DataError("the reward-model judge uses the lake's promoted reward models; name "
                            "the lake (--lake or --config), or one model: reward-model:FOLDER")
        rows = current_models(lake)
        missing = [k for k in KINDS if k not in rows]
        if missing:
            raise DataError(f"{lake.uri} has no promoted {' or '.join(missing)} reward model "
                            "yet; train them (flywheel run), or name one model for every pair: "
                            "reward-model:ID or reward-model:FOLDER")
        folders = {k: lake.artifact_path("reward_models", rows[k]["id"]) for k in KINDS}
        key = f"reward-model:{rows['helpfulness']['id']}+{rows['safety']['id']}"
        return cls(folders, key, cfg)

    def _model_for(self, criterion: str) -> tuple[str, RewardModel]:
        which = "*" if "*" in self.folders else criterion
        if which not in self.folders:
            raise DataError(f"no reward model judges {criterion!r} pairs here (models for "
                            f"{', '.join(self.folders)}); name one model: reward-model:ID")
        if which not in self._models:
            self._models[which] = RewardModel.load(self.folders[which])
        return which, self._models[which]

    def scores(self, pairs: list[Pair]) -> list[tuple[float, float]]:
        """(score of a, score of b) per pair, each criterion's pairs scored in one engine call.
        Two sides in the same conversation form one group; an answer given on both sides is
        scored once."""
        out: list[tuple[float, float] | None] = [None] * len(pairs)
        by_model: dict[str, list[int]] = {}
        for i, p in enumerate(pairs):
            by_model.setdefault(self._model_for(p.criterion)[0], []).append(i)
        for which, idx in by_model.items():
            model = self._models[which]
            length = _max_length(self.folders[which], self.cfg.reward_model.max_length)
            engine = ScoringEngine.from_config(self.cfg.scoring, length)
            engine.progress = self.progress
            groups, where = [], []
            for i in idx:
                p = pairs[i]
                ma, mb = conversation(p.prompt, p.a), conversation(p.prompt, p.b)
                safety = p.criterion == "safety"
                if ma == mb:
                    same = p.a[-1] == p.b[-1]
                    groups.append(Group(ma, [p.a[-1]] if same else [p.a[-1], p.b[-1]], safety))
                    where.append(((len(groups) - 1, 0), (len(groups) - 1, 0 if same else 1)))
                else:
                    groups += [Group(ma, [p.a[-1]], safety), Group(mb, [p.b[-1]], safety)]
                    where.append(((len(groups) - 2, 0), (len(groups) - 1, 0)))
            raw = engine.rewards(model, groups, desc=f"judging with the {which} reward model"
                                 if which != "*" else "judging with the reward model")
            for i, ((ga, ka), (gb, kb)) in zip(idx, where):
                out[i] = (raw[ga][ka], raw[gb][kb])
        return out

    def compare(self, pairs: list[Pair]) -> list[Verdict]:
        return [by_score(a, b) for a, b in self.scores(pairs)]
