"""PPO on top of the rejection-sampled policy (Llama 2, stage 5).

One PPO step:

    rollouts     the current policy answers a batch of prompts (sampled, `temperature`)
    old log-probs, values      one no-grad pass each over the rollouts
    reference log-probs        the frozen reference pi_0 through the scoring engine
    KL_t         log pi(a_t) - log pi_0(a_t) on every response token
    rewards      -beta * KL_t on every response token, plus the sequence's score on its last one
                 (the score: WHITEN(LOGIT(R_c)) from the reward models in the weekly loop, any
                 `score_fn` here)
    advantages   GAE(gamma, lambda) over the response tokens, whitened over the batch
    update       the batch cut into minibatches, one gradient step each: the clipped objective
                 (ratio clipped to 1 +- clip) for the actor, the clipped value loss for the critic

Which kernel computes what:
- the actor's log-probs (old and, with gradients, new): `kernels.token_logprobs` on its logits
  (the logits also give the entropy);
- the reference's log-probs: `ScoringEngine.reference_logprobs` (flywheel/reward/scoring.py) on
  the rollouts' token ids, each distinct prompt run once for all its rollouts, read off the
  hidden states and the output head by `kernels.head_logprobs` (no [tokens, vocab] logits);
- the token rewards: `kernels.reward_combine`. In the weekly loop the score function returns
  both reward models' raw scores (`RewardModelScores`) and one pass of `combine_rewards` turns
  them, the KL and the mask into R_c, the whitened score and the token rewards; a score function
  that returns scores gets the same kernel's token pass (`token_rewards`).
On a CPU each kernel runs its torch reference (or the kernel under TRITON_INTERPRET=1).

The critic is its own model (a backbone with a value per token), so actor and critic can each be
trained through DeepSpeed. Every step logs reward, KL, entropy, clip fraction, value loss and
response length. Held-out prompts are scored before the first step, every `eval_every` steps and
after the last; training stops when their mean reward has not improved for `patience`
evaluations, and the best policy seen is kept (`eval_every` 0: no held-out scoring, the last
step is kept).
"""

from __future__ import annotations

import copy
import math
import random
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
from tqdm.auto import tqdm

from flywheel.config import PPOConfig
from flywheel.distributed.frozen import ShardedFrozen
from flywheel.distributed.ranks import World, all_sum, sum_gradients, world
from flywheel.errors import ConfigError, FlywheelError
from flywheel.kernels.reward_combine import token_rewards
from flywheel.kernels.token_logprobs import token_logprobs
from flywheel.policy.ppo_losses import entropy, gae, policy_loss, value_loss
from flywheel.policy.ppo_ranks import Minibatches, combined_rewards_across, shard, whiten_across
from flywheel.policy.rollouts import NodeRollouts, Rollout, VLLMRollouts, rollout
from flywheel.reward.combined import RewardModelScores
from flywheel.reward.scoring import ScoringEngine
from flywheel.training import deepspeed_config, deepspeed_initialize, report_step


class ValueModel(torch.nn.Module):
    """A backbone with a scalar per position: V(s_t) for the state before token t+1."""

    def __init__(self, backbone: torch.nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = torch.nn.Linear(backbone.config.hidden_size, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    @classmethod
    def from_causal_lm(cls, model: torch.nn.Module) -> ValueModel:
        """A critic on a copy of the policy's trunk (its output head dropped)."""
        trunk = copy.deepcopy(getattr(model, "model", model))
        trunk.config = model.config
        return cls(trunk)

    def forward(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=position_ids).last_hidden_state
        return self.head(hidden.float()).squeeze(-1)


class _Updater:
    """One model's optimizer: AdamW (0.9, 0.95, eps 1e-5, `weight_decay`) at a constant lr, the
    gradient norm clipped to `grad_clip`, one step per minibatch; plain PyTorch, or a DeepSpeed
    engine when `deepspeed` names a config (ZeRO stages 0-2: whole weights stay on each rank,
    which the rollouts, the held-out snapshot and the vLLM weight sync read). `module` is what
    to call forward on; `model` the underlying module."""

    def __init__(self, model: torch.nn.Module, lr: float, s: PPOConfig, w: World):
        self.model = self.module = model
        self.grad_clip = s.grad_clip
        self.world = w
        self.engine = None
        if not s.deepspeed:
            self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95),
                                               eps=1e-5, weight_decay=s.weight_decay)
            return

        config = deepspeed_engine_config(s.deepspeed, lr, s)
        self.engine = self.module = deepspeed_initialize(model, config,
                                                         "policy_update.ppo.deepspeed")
        self.model = self.engine.module

    def update(self, loss: torch.Tensor) -> None:
        if self.engine is not None:
            # DeepSpeed averages the ranks' gradients; each rank's loss is its share of the sum
            self.engine.backward(loss * self.world.size)
            self.engine.step()  # clip, optimizer step, zero the gradients
            return
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        sum_gradients(self.model.parameters(), self.world)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()


def deepspeed_engine_config(name: str, lr: float, s: PPOConfig) -> dict:
    """The DeepSpeed config `name` with PPO's optimizer: one micro-batch per step, AdamW
    (0.9, 0.95, eps 1e-5, weight decay), gradient clipping `grad_clip`. ZeRO-3 is refused: it
    partitions the weights that the rollouts and the weight sync read whole."""

    config = deepspeed_config(name, lr, 1)
    stage = (config.get("zero_optimization") or {}).get("stage", 0)
    if stage > 2:
        raise ConfigError(f"policy_update.ppo.deepspeed {name!r} is ZeRO stage {stage}: PPO "
                          "samples from and syncs whole weights, so use stage 2 or lower (e.g. "
                          "zero2-cpu), or clear it to train actor and critic with PyTorch")
    config["optimizer"]["params"].update(eps=1e-5, weight_decay=s.weight_decay)
    config["gradient_clipping"] = s.grad_clip
    return config


def response_logprobs(model, ro: Rollout, rows=slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probs of the response tokens [b, R], their logits [b, R, V]) under `model`."""
    ids, att = ro.input_ids[rows], ro.attention[rows]
    logits = model(input_ids=ids, attention_mask=att, position_ids=ro.positions[rows]).logits
    logits = logits[:, ro.prompt_width - 1: -1]
    targets = ids[:, ro.prompt_width:]
    lp = token_logprobs(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
    return lp.view(targets.shape), logits


def _values(critic, ro: Rollout, rows=slice(None)) -> torch.Tensor:
    v = critic(ro.input_ids[rows], ro.attention[rows], ro.positions[rows])
    return v[:, ro.prompt_width - 1: -1]


def reference_logprobs(engine: ScoringEngine, reference, ro: Rollout,
                       desc: str = "reference log-probs") -> torch.Tensor:
    """[B, R] log-probs of the rollouts' response tokens under the frozen `reference`, computed
    by the scoring engine on the tokens as sampled (rollouts of the same prompt share its
    pass); 0 where `ro.response_mask` is 0."""
    index: dict[tuple, int] = {}
    prompts: list[list[int]] = []
    responses: list[list[list[int]]] = []
    where = []
    for p, r in zip(ro.prompt_ids(), ro.response_ids()):
        g = index.setdefault(tuple(p), len(prompts))
        if g == len(prompts):
            prompts.append(p)
            responses.append([])
        where.append((g, len(responses[g])))
        responses[g].append(r)
    lps = engine.reference_logprobs(reference, prompts, responses, desc=desc)
    out = torch.zeros(ro.response_mask.shape, dtype=torch.float32,
                      device=ro.response_mask.device)
    # each row's response tokens are a run from the left of its mask: row-major order lines up
    out[ro.response_mask.bool()] = torch.cat([lps[g][k] for g, k in where]).to(out.device)
    return out


# (prompts, response texts, response token ids) -> one of: [B] sequence scores; ([B] scores,
# [B] rewards), the scores driving the update and the rewards logged and driving early stopping;
# RewardModelScores (the weekly loop), combined with the KL by kernels.reward_combine, R_c logged
ScoreFn = Callable[[list, list[str], list[list[int]]],
                   torch.Tensor | tuple[torch.Tensor, torch.Tensor] | RewardModelScores]


def _score(score_fn: ScoreFn, prompts, ro: Rollout, tokenizer):
    return score_fn(list(prompts), ro.responses(tokenizer), ro.response_ids())


def _reward(out) -> torch.Tensor:
    """The reward logged and compared for a score function's output. A batch-normalised score
    (the weekly loop's WHITEN(LOGIT(R_c))) has mean 0 whatever the policy does, so it can
    neither be logged as progress nor compare held-out evaluations; the reward it was made from
    (R_c) can."""
    if isinstance(out, RewardModelScores):
        return out.gated()
    return (out[1] if isinstance(out, tuple) else out).float()


def _token_rewards(out, kl: torch.Tensor, mask: torch.Tensor, beta: float,
                   w: World) -> tuple[torch.Tensor, torch.Tensor]:
    """(the reward logged per rollout [B], token rewards [B, R]) for a score function's output,
    from kernels/reward_combine.py: for RewardModelScores one pass from the two reward models'
    scores, the KL and the mask, R_c coming out of the same pass (on several ranks, the score
    whitened over all of them: ppo_ranks.py); for scores, the token pass (a score function that
    normalises per batch normalises each rank's rollouts)."""
    if isinstance(out, RewardModelScores):
        return combined_rewards_across(out, kl, mask, beta, w)
    score = (out[0] if isinstance(out, tuple) else out).float().to(kl.device)
    return _reward(out), token_rewards(score, kl, mask, beta)[1]


def train_ppo(policy, reference: torch.nn.Module | ShardedFrozen, critic: ValueModel, tokenizer,
              prompts: Sequence,
              score_fn: ScoreFn, settings: PPOConfig, heldout: Sequence = (),
              desc: str = "ppo", rollouts: VLLMRollouts | NodeRollouts | None = None,
              engine: ScoringEngine | None = None) -> dict:
    """PPO steps on `policy` (trained in place) against the frozen `reference`. `score_fn`:
    (prompts, response texts, response token ids) -> [B] sequence scores, or (scores, rewards)
    when the scores are normalised per batch (then the rewards are what is logged as "reward"
    and what held-out evaluations compare), or RewardModelScores (the weekly loop: the update
    uses WHITEN(LOGIT(R_c)), R_c is logged and compared). `rollouts`: a vLLM
    engine loaded with the policy's starting weights, synced after every update (None:
    transformers generate on `policy`). `engine`: the scoring engine that computes the
    reference log-probs (None: a default one). Returns {"steps": per-step logs, "heldout":
    evaluations, "best_step"}; the policy ends at its best held-out score.

    Runs on the device `policy` is on (reference and critic are moved there); with
    `settings.deepspeed`, actor and critic train through DeepSpeed engines. `reference` may be
    sharded over the ranks (ShardedFrozen, already on its device): gathered whole for each pass
    of reference log-probs. On several ranks
    (a process group is up) each rank samples and scores its share of every step's prompts
    and the step is the one a single rank would take (flywheel/policy/ppo_ranks.py)."""
    s = settings
    w = world()
    if not prompts:
        raise FlywheelError("PPO needs prompts: the prompt set has no train prompts")
    if s.prompts_per_step < w.size:
        raise ConfigError(f"policy_update.ppo.prompts_per_step ({s.prompts_per_step}) is below "
                          f"the {w.size} ranks: each rank needs prompts; raise it or lower "
                          "policy_update.ppo.resources")
    engine = engine or ScoringEngine(progress=False)
    torch.manual_seed(s.seed)
    rng = random.Random(s.seed)
    device = next(policy.parameters()).device
    sharded_ref = reference if isinstance(reference, ShardedFrozen) else None
    if sharded_ref is None:
        reference.to(device).eval()
        for p in reference.parameters():
            p.requires_grad_(False)
    critic.to(device)
    actor_opt = _Updater(policy, s.learning_rate, s, w)
    critic_opt = _Updater(critic, s.critic_learning_rate, s, w)
    actor, critic_fwd = actor_opt.module, critic_opt.module  # forward through these
    order: list[int] = []
    logs, evals = [], []
    best = (-math.inf, 0, None)
    since_best = 0
    stale = False  # the engine's weights lag the policy's

    def sample(batch) -> Rollout | None:
        nonlocal stale
        if not batch and not getattr(rollouts, "collective", False):
            return None  # nothing to sample (a node's shared engine is asked even so)
        if rollouts is None:
            return rollout(policy, tokenizer, batch, s.max_new_tokens, s.temperature)
        if stale:
            rollouts.sync(policy)
            stale = False
        ro = rollouts(batch, s.max_new_tokens, s.temperature)
        return ro and ro.to(device)

    def evaluate(step: int) -> bool:
        nonlocal best, since_best
        if not heldout or not s.eval_every:
            return False
        _, mine = shard(heldout, w)
        ro = sample(mine)
        # a rank without held-out prompts (fewer than ranks) scores none, but still calls the
        # score function: sharded frozen reward models gather on every rank together
        out = _score(score_fn, mine, ro, tokenizer) if mine else score_fn([], [], [])
        total = _reward(out).sum().item() if mine else 0.0
        total, n = all_sum([total, len(mine)], w)
        score = total / n
        evals.append({"step": step, "heldout_reward": score})
        if score > best[0]:
            best = (score, step, copy.deepcopy(policy.state_dict()))
            since_best = 0
        else:
            since_best += 1
        return since_best >= s.patience

    evaluate(0)
    bar = tqdm(total=s.steps, desc=desc, unit="step")
    for step in range(1, s.steps + 1):
        batch = []
        while len(batch) < s.prompts_per_step:
            if not order:
                order = list(range(len(prompts)))
                rng.shuffle(order)
            batch.append(prompts[order.pop()])
        offset, mine = shard(batch, w)
        ro = sample(mine)
        mask = ro.response_mask.float()
        with torch.no_grad():
            old_logp, _ = response_logprobs(actor, ro)
            with sharded_ref.whole() if sharded_ref else nullcontext(reference) as ref:
                ref_logp = reference_logprobs(engine, ref, ro, f"{desc}: reference log-probs")
            old_values = _values(critic_fwd, ro) * mask
            kl = (old_logp - ref_logp) * mask
            reward, rewards = _token_rewards(_score(score_fn, mine, ro, tokenizer), kl, mask,
                                             s.beta, w)
            adv, returns = gae(rewards, old_values, mask, s.gamma, s.lam)
            adv = whiten_across(adv, mask, w)
        rows = list(range(len(batch)))
        rng.shuffle(rows)
        stats = []
        for local, stand_in, count in Minibatches(rows, s.minibatch, offset, mask, w):
            idx = torch.tensor(local, device=device)
            mm = mask[idx] * (0.0 if stand_in else 1.0)  # a stand-in adds no token
            logp, logits = response_logprobs(actor, ro, idx)
            loss, st = policy_loss(logp, old_logp[idx], adv[idx], mm, s.clip, count)
            if not torch.isfinite(loss):
                raise FlywheelError(f"PPO policy loss became {loss.item()} at step {step}; "
                                    f"lower the learning rate (now {s.learning_rate})")
            actor_opt.update(loss)
            stale = True
            values = _values(critic_fwd, ro, idx)
            vloss = value_loss(values, old_values[idx], returns[idx], mm, s.value_clip, count)
            critic_opt.update(vloss)
            with torch.no_grad():
                st["entropy"] = entropy(logits, mm, count).item()
            st["value_loss"] = vloss.item()
            st["policy_loss"] = loss.item()
            stats.append(dict(zip(st, all_sum(list(st.values()), w))))  # shares -> means
        n, r_sum, kl_sum, length = all_sum([len(mine), reward.sum().item(),
                                            kl.sum().item(), mask.sum().item()], w)
        log = {"step": step, "reward": r_sum / n, "kl": kl_sum / n, "response_length": length / n}
        for key in stats[0]:
            log[key] = sum(st[key] for st in stats) / len(stats)
        logs.append(log)
        bar.update(1)
        bar.set_postfix(reward=f"{log['reward']:.3f}", kl=f"{log['kl']:.3f}")
        report_step(desc, step, s.steps)
        if s.eval_every and step % s.eval_every == 0 and evaluate(step):
            break
    bar.close()
    if evals and evals[-1]["step"] != len(logs):
        evaluate(len(logs))  # the last step too, so the policy kept is one that was evaluated
    if best[2] is not None and evals and evals[-1]["step"] != best[1]:
        policy.load_state_dict(best[2])
    out = {"steps": logs, "heldout": evals, "best_step": best[1] if evals else len(logs),
           "settings": s.model_dump()}
    if rollouts is not None:
        out["rollouts"] = {"engine": "vllm", "reloads": len(rollouts.reload_seconds),
                           "reload_seconds": rollouts.reload_seconds,
                           "generate_seconds": rollouts.generate_seconds}
    return out
