"""The scoring engine: reward-model scores and reference log-probs for (prompt, K responses)
groups. Its callers in the loop: `rewards` scores samples for rejection sampling and RRHF
(flywheel/stages/scores.py), held-out answers for evaluation, the test pairs of reward-model
evaluation and retraining's gate, and PPO's rollouts (flywheel/stages/ppo.py);
`reference_logprobs` gives PPO its frozen reference's log-probs of each rollout
(flywheel/policy/ppo.py).

What it does that a sequence-classification model over padded batches does not:
- **Prefix reuse.** For a causal decoder (probed: a prompt's hidden states must not change when
  tokens follow; the policy backbone Llama 2 uses for its reward models is one), each group's
  prompt runs once; its keys and values are copied to the group's K rows and only the response
  tokens run after them. The work per group falls from K x (P + R) tokens to P + K x R.
- **Length buckets.** Rows are sorted by length and cut into forward passes of about
  `token_budget` padded tokens, so little compute goes to padding.
- **Read-out on the last token only.** For a last-token model the backbone's final RMSNorm is
  deferred and applied by the last-token kernel (kernels/last_token.py) together with the scalar
  head, on one row per sequence; mean and first-token models read out through the same
  `pooling.readout` as in training. Reference log-probs come from hidden states and the output
  head through kernels/head_logprobs.py, without a [tokens, vocab] float32 temporary.

For reward models, the token sequences are exactly those of `RewardModel.encode` (both come from
flywheel/reward/text.py): each full conversation is tokenized as a whole, and a row reuses its
group's prompt only if the model reads out on the last token, the prompt's tokens are a prefix
of its own (a tokenizer could merge across the boundary) and it was not truncated. Every other
row, and every row of an encoder backbone (bidirectional attention: the prompt's states depend on
the response), is scored as a whole sequence in the length buckets. The scores therefore match
the plain path up to floating-point summation order. Reference
log-probs take token ids, as sampled, and always reuse the prompt (the LM is a causal decoder).
"""

from __future__ import annotations

import copy
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from flywheel.devices import model_device
from flywheel.errors import FlywheelError
from flywheel.kernels.head_logprobs import head_logprobs
from flywheel.reward.pooling import is_causal, readout, takes_cache
from flywheel.reward.text import chat_text, pad_id_of, pad_ids, reward_ids


@dataclass(frozen=True)
class Group:
    """One prompt (chat messages, without the answer) and the responses to score for it."""

    messages: list[dict]
    responses: list[str]
    safety: bool = False  # the prompt is tagged safety (Llama 2's reward gate)


@dataclass
class ScoringStats:
    sequences: int = 0
    tokens: int = 0  # tokens of the full sequences scored (prompt + response, each row)
    computed_tokens: int = 0  # tokens the backbone ran, padding included
    reused_groups: int = 0  # groups whose prompt ran once for all its rows
    whole_rows: int = 0  # rows scored as whole sequences
    seconds: float = 0.0


@dataclass
class _Row:
    group: int
    index: int  # position in its group
    ids: list[int]  # the whole sequence
    prefix: int = 0  # tokens shared with the group's prompt (0: scored whole)


@dataclass
class _Plan:
    prompts: dict[int, list[int]] = field(default_factory=dict)  # group -> prompt ids (reused)
    reused: list[_Row] = field(default_factory=list)
    whole: list[_Row] = field(default_factory=list)


def supports_prefix_reuse(backbone) -> bool:
    """Whether a prompt's hidden states do not depend on what follows it (a causal decoder,
    probed: `pooling.is_causal`) and the backbone takes a key/value cache."""
    return takes_cache(backbone) and is_causal(backbone)


@contextmanager
def _deferred_norm(backbone, enabled: bool):
    """Run the backbone without its final RMSNorm, yielding (weight, eps) for the read-out to
    apply on the gathered rows; (None, 0) when the backbone has no such norm (or not enabled)."""
    norm = getattr(backbone, "norm", None)
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    if not enabled or norm is None or not type(norm).__name__.endswith("RMSNorm") or eps is None:
        yield None, 0.0
        return
    backbone.norm = torch.nn.Identity()
    try:
        yield norm.weight, float(eps)
    finally:
        backbone.norm = norm


_pad = pad_ids  # right-padded ids and their 0/1 mask


def _chunks(items: list, cost, budget: int):
    """Consecutive runs of `items` (already sorted by size) whose padded cost stays within the
    budget; a single item over it runs alone."""
    run: list = []
    for it in items:
        if run and cost(run + [it]) > budget:
            yield run
            run = []
        run.append(it)
    if run:
        yield run


class ScoringEngine:
    def __init__(self, max_length: int = 512, token_budget: int = 4096,
                 reuse_prefix: bool = True, fuse_norm: bool = True, progress: bool = True):
        if max_length < 2:
            raise FlywheelError(f"scoring max_length must be at least 2 (got {max_length})")
        self.max_length = max_length
        self.token_budget = token_budget
        self.reuse_prefix = reuse_prefix
        self.fuse_norm = fuse_norm
        self.progress = progress
        self.stats = ScoringStats()

    @classmethod
    def from_config(cls, scoring, max_length: int) -> ScoringEngine:
        """An engine for a `ScoringConfig` section and the max_length of what it scores."""
        return cls(max_length=max_length, token_budget=scoring.token_budget,
                   reuse_prefix=scoring.reuse_prefix)

    # tokenization --------------------------------------------------------------------------
    def _plan(self, tokenizer, groups: list[Group], reuse: bool) -> _Plan:
        plan = _Plan()
        owners = [(g, k) for g, grp in enumerate(groups) for k in range(len(grp.responses))]
        messages = [groups[g].messages for g, _ in owners]
        responses = [groups[g].responses[k] for g, k in owners]
        if not owners:
            return plan
        if not reuse:  # every row whole, as RewardModel.encode tokenizes it
            ids = reward_ids(tokenizer, messages, responses, self.max_length)
            plan.whole = [_Row(g, k, i) for (g, k), i in zip(owners, ids)]
            return plan
        # untruncated, to find the prompt's tokens in each row (cut from the left below)
        full = reward_ids(tokenizer, messages, responses, None)
        ptexts = [chat_text(tokenizer, grp.messages) for grp in groups]
        prompts = dict(enumerate(tokenizer(ptexts, add_special_tokens=False)["input_ids"]))
        for (g, k), ids in zip(owners, full):
            p = prompts.get(g)
            if (p is not None and len(p) < len(ids) <= self.max_length
                    and ids[: len(p)] == p):
                plan.reused.append(_Row(g, k, ids, len(p)))
                plan.prompts[g] = p
            else:
                plan.whole.append(_Row(g, k, ids[-self.max_length:]))  # left truncation
        return plan

    # forward passes ------------------------------------------------------------------------
    def _prefix_forward(self, backbone, pad_id: int, prompts: list[list[int]],
                        rows: list[_Row], owner: list[int]):
        """The prompts once (right-padded), then the rows' response tokens after a copy of
        their prompt's keys and values, in sub-batches of similar response length (a group's K
        responses vary widely). Yields (row positions, prompt hidden [G, P, d], response hidden
        [n, R, d], response mask [n, R]) per sub-batch. Every tensor is on the backbone's
        device."""
        device = model_device(backbone)
        p_ids, p_mask = _pad(prompts, pad_id, device)
        out = backbone(input_ids=p_ids, attention_mask=p_mask, use_cache=True)
        cache = out.past_key_values
        self.stats.computed_tokens += p_ids.numel()
        layers = getattr(cache, "layers", None)
        plain = layers is not None and all(type(x).__name__ == "DynamicLayer" for x in layers)
        base = [(x.keys, x.values) for x in layers] if plain else None
        order = sorted(range(len(rows)), key=lambda i: len(rows[i].ids) - rows[i].prefix)
        width = lambda sub: len(sub) * max(len(rows[i].ids) - rows[i].prefix for i in sub)  # noqa: E731
        for sub in _chunks(order, width, self.token_budget):
            index = torch.tensor([owner[i] for i in sub], dtype=torch.long, device=device)
            if plain:  # each row a copy of its prompt's keys and values; the base stays intact
                for x, (k, v) in zip(layers, base):
                    x.keys, x.values = k.index_select(0, index), v.index_select(0, index)
                sub_cache = cache
            else:
                sub_cache = copy.deepcopy(cache)
                sub_cache.reorder_cache(index)
            r_ids, r_mask = _pad([rows[i].ids[rows[i].prefix:] for i in sub], pad_id, device)
            lengths = torch.tensor([rows[i].prefix for i in sub], dtype=torch.long, device=device)
            positions = lengths[:, None] + torch.arange(r_ids.shape[1], device=device)[None, :]
            mask = torch.cat([p_mask[index], r_mask], dim=1)
            res = backbone(input_ids=r_ids, attention_mask=mask, position_ids=positions,
                           past_key_values=sub_cache, use_cache=True)
            self.stats.computed_tokens += r_ids.numel()
            yield sub, out.last_hidden_state, res.last_hidden_state, r_mask

    def _buckets(self, plan: _Plan):
        """Forward-pass units in length order: ("reused", rows, group ids) for groups whose
        prompt runs once, ("whole", rows, None) for rows scored as whole sequences."""
        by_group: dict[int, list[_Row]] = {}
        for r in plan.reused:
            by_group.setdefault(r.group, []).append(r)

        def group_cost(gs):  # the prompt pass, padded, and the response tokens
            width = max(len(plan.prompts[g]) for g in gs)
            return len(gs) * width + sum(len(r.ids) - r.prefix for g in gs for r in by_group[g])

        order = sorted(by_group, key=lambda g: (len(plan.prompts[g]),
                                                max(len(r.ids) for r in by_group[g])))
        units = [("reused", [r for g in gs for r in by_group[g]], gs)
                 for gs in _chunks(order, group_cost, self.token_budget)]
        whole = sorted(plan.whole, key=lambda r: len(r.ids))
        units += [("whole", rs, None) for rs in _chunks(
            whole, lambda rs: len(rs) * max(len(r.ids) for r in rs), self.token_budget)]
        return units

    # reward models -------------------------------------------------------------------------
    @torch.no_grad()
    def rewards(self, model, groups: list[Group], desc: str = "scoring") -> list[list[float]]:
        """Raw scores of `model` (a RewardModel) for every response of every group, computed
        on the device the model is on."""
        start = time.perf_counter()
        model.eval()
        tok, backbone = model.tokenizer, model.backbone
        device = model_device(model)
        # prefix reuse and the deferred norm serve the last-token read-out: the others read
        # the prompt's states and every position's normed state
        last = model.pooling == "last"
        reuse = (last and self.reuse_prefix and bool(tok.chat_template)
                 and supports_prefix_reuse(backbone))
        plan = self._plan(tok, groups, reuse)
        out = [[0.0] * len(g.responses) for g in groups]
        pad_id = pad_id_of(tok)
        units = self._buckets(plan)
        bar = tqdm(total=sum(len(g.responses) for g in groups), desc=desc, unit="seq",
                   disable=not self.progress)
        with _deferred_norm(backbone, self.fuse_norm and last) as (norm_w, eps):
            for kind, rows, gs in units:
                if kind == "reused":
                    owner_pos = {g: i for i, g in enumerate(gs)}
                    passes = ((sub, hidden, mask) for sub, _, hidden, mask in self._prefix_forward(
                        backbone, pad_id, [plan.prompts[g] for g in gs], rows,
                        [owner_pos[r.group] for r in rows]))
                    self.stats.reused_groups += len(gs)
                else:
                    ids, mask = _pad([r.ids for r in rows], pad_id, device)
                    hidden = backbone(input_ids=ids, attention_mask=mask).last_hidden_state
                    self.stats.computed_tokens += ids.numel()
                    self.stats.whole_rows += len(rows)
                    passes = [(range(len(rows)), hidden, mask)]
                for sub, hidden, mask in passes:
                    scores = readout(hidden, mask, model.head.weight, model.head.bias,
                                     model.pooling, norm_w, eps if norm_w is not None else 1e-6)
                    for i, s in zip(sub, scores.tolist()):
                        out[rows[i].group][rows[i].index] = s
                    bar.update(len(sub))
        bar.close()
        self._account(plan, start)
        return out

    def _account(self, plan: _Plan, start: float) -> None:
        rows = plan.reused + plan.whole
        self.stats.sequences += len(rows)
        self.stats.tokens += sum(len(r.ids) for r in rows)
        self.stats.seconds += time.perf_counter() - start

    # reference policy ----------------------------------------------------------------------
    @torch.no_grad()
    def reference_logprobs(self, lm, prompts: list[list[int]], responses: list[list[list[int]]],
                           desc: str = "reference log-probs") -> list[list[torch.Tensor]]:
        """Log-probabilities under the causal LM `lm` of given response tokens after their
        prompt: `prompts[g]` is group g's prompt token ids, `responses[g]` its responses' token
        ids. One float32 tensor per response, on `lm`'s device, token for token (nothing is
        re-tokenized or truncated; an empty response gets an empty tensor). PPO's frozen
        reference log-probs of its rollouts: each group's prompt runs once for all its
        responses, and the log-probs come from the last hidden states and the output head
        (kernels/head_logprobs.py), without [tokens, vocab] logits."""
        if len(prompts) != len(responses):
            raise ValueError(f"reference_logprobs needs one prompt per group of responses; got "
                             f"{len(prompts)} prompts and {len(responses)} groups")
        start = time.perf_counter()
        lm.eval()
        backbone, head = lm.get_decoder(), lm.get_output_embeddings()
        if getattr(head, "bias", None) is not None:
            raise ValueError("reference_logprobs reads log-probs off the output head's weight "
                             "and this LM's head has a bias; use an LM whose head has none")
        device = model_device(lm)
        plan = _Plan()
        out: list[list[torch.Tensor]] = [[None] * len(rs) for rs in responses]
        for g, (p, rs) in enumerate(zip(prompts, responses)):
            for k, r in enumerate(rs):
                if not r:
                    out[g][k] = torch.zeros(0, device=device)
                    continue
                if not p:
                    raise ValueError(f"group {g} has an empty prompt: its first response token "
                                     "has nothing to be predicted from; give each group at "
                                     "least one prompt token")
                plan.prompts[g] = list(p)
                plan.reused.append(_Row(g, k, list(p) + list(r), len(p)))
        bar = tqdm(total=len(plan.reused), desc=desc, unit="seq", disable=not self.progress)
        for _, rows, gs in self._buckets(plan):
            owner_pos = {g: i for i, g in enumerate(gs)}
            owner = [owner_pos[r.group] for r in rows]
            p_last = torch.tensor([len(plan.prompts[g]) - 1 for g in gs], device=device)
            for sub, p_hidden, r_hidden, r_mask in self._prefix_forward(
                    backbone, 0, [plan.prompts[g] for g in gs], rows, owner):
                # the prompt's last state predicts response token 0, response state j token j+1
                owners = torch.tensor([owner[i] for i in sub], device=device)
                first = p_hidden[owners, p_last[owners]]
                hidden = torch.cat([first[:, None], r_hidden[:, :-1]], dim=1)
                targets = _pad([rows[i].ids[rows[i].prefix:] for i in sub], 0, device)[0]
                keep = r_mask.bool()
                logp = head_logprobs(hidden[keep], head.weight, targets[keep])
                for i, lp in zip(sub, logp.split(r_mask.sum(1).tolist())):
                    out[rows[i].group][rows[i].index] = lp
                bar.update(len(sub))
            self.stats.reused_groups += len(gs)
        bar.close()
        self._account(plan, start)
        return out
