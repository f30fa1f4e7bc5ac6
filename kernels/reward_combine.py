"""Llama 2's PPO reward from the two reward models, in one pass over the [B, T] token data:

    s = sigmoid(raw reward-model output)
    R_c = s_safety  if the prompt is tagged safety or s_safety < threshold,  else s_helpfulness
    score = WHITEN(LOGIT(R_c))            (mean 0, variance 1 over the batch)
    sequence reward = score - beta * sum_t KL_t
    token rewards   = -beta * KL_t on every response token, plus the score on the last one

KL_t is the per-token estimate log pi(a_t) - log pi_0(a_t) over response tokens (`mask`). The
gate's threshold is an argument (Llama 2's 0.15 is flywheel/reward/combined.py's
SAFETY_THRESHOLD, the one place it is written). R_c is returned as well, and clamped to
[1e-6, 1 - 1e-6] only for the logit. Rewards are not differentiated: forward only. A row whose
mask is empty (no response token) gets its sequence reward but no token reward.

Two launches: one program computes the gated logits' mean and variance and writes the [B] R_c
and scores (B floats: no need to spread it); a grid over row blocks then reads the KL and mask
once, writes the token rewards, finds each row's last response token on the way and adds its
score. The second launch is also `token_rewards`, for a score that is not R_c's (PPO's trainer
with any other score function).

Dispatch (`combine_rewards`, `token_rewards`): the Triton kernel for CUDA tensors, and for CPU
tensors when TRITON_INTERPRET=1 was set before this module was imported; the torch reference
otherwise. `gate_reference` is R_c alone in torch, in the inputs' dtype (float64 for the
stages' Python floats).
"""

import os

import torch
import triton
import triton.language as tl

from flywheel.kernels.last_token import last_token_index

CLAMP = 1e-6


@triton.jit
def _gate(help_ptr, safe_ptr, tag_ptr, offs, mask, threshold):
    s_h = tl.sigmoid(tl.load(help_ptr + offs, mask=mask, other=0.0).to(tl.float32))
    s_s = tl.sigmoid(tl.load(safe_ptr + offs, mask=mask, other=0.0).to(tl.float32))
    tag = tl.load(tag_ptr + offs, mask=mask, other=0)
    return tl.where((tag != 0) | (s_s < threshold), s_s, s_h)


@triton.jit
def _logit(rc, clamp):
    rc = tl.minimum(tl.maximum(rc, clamp), 1.0 - clamp)
    return tl.log(rc) - tl.log(1.0 - rc)


@triton.jit
def _scores(help_ptr, safe_ptr, tag_ptr, rc_ptr, score_ptr, B, threshold, clamp, eps,
            BLOCK_B: tl.constexpr):
    # one program: the whitening needs the whole batch's mean and variance ([B] floats only)
    total = tl.zeros([BLOCK_B], dtype=tl.float32)
    for start in range(0, B, BLOCK_B):
        offs = start + tl.arange(0, BLOCK_B)
        m = offs < B
        x = _logit(_gate(help_ptr, safe_ptr, tag_ptr, offs, m, threshold), clamp)
        total += tl.where(m, x, 0.0)
    mean = tl.sum(total, 0) / B
    sq = tl.zeros([BLOCK_B], dtype=tl.float32)
    for start in range(0, B, BLOCK_B):
        offs = start + tl.arange(0, BLOCK_B)
        m = offs < B
        x = _logit(_gate(help_ptr, safe_ptr, tag_ptr, offs, m, threshold), clamp)
        sq += tl.where(m, (x - mean) * (x - mean), 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(sq, 0) / B + eps)
    for start in range(0, B, BLOCK_B):
        offs = start + tl.arange(0, BLOCK_B)
        m = offs < B
        rc = _gate(help_ptr, safe_ptr, tag_ptr, offs, m, threshold)
        tl.store(rc_ptr + offs, rc, mask=m)
        tl.store(score_ptr + offs, (_logit(rc, clamp) - mean) * rstd, mask=m)


@triton.jit
def _token_rewards(score_ptr, kl_ptr, mask_ptr, seq_ptr, tok_ptr, B, T, stride_kl,
                   stride_mask, stride_tok, beta, BLOCK_B: tl.constexpr,
                   BLOCK_T: tl.constexpr):
    # a grid over row blocks: the [B, T] part, where the bytes are, spreads over the GPU
    rows = tl.program_id(0) * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    score = tl.load(score_ptr + rows, mask=rmask, other=0.0)
    kl_sum = tl.zeros([BLOCK_B], dtype=tl.float32)
    last = tl.zeros([BLOCK_B], dtype=tl.int32) - 1
    r64 = rows[:, None].to(tl.int64)
    for t0 in range(0, T, BLOCK_T):
        cols = t0 + tl.arange(0, BLOCK_T)
        m2 = rmask[:, None] & (cols[None, :] < T)
        kl = tl.load(kl_ptr + r64 * stride_kl + cols[None, :], mask=m2, other=0.0)
        keep = tl.load(mask_ptr + r64 * stride_mask + cols[None, :], mask=m2, other=0)
        kl = kl.to(tl.float32) * keep.to(tl.float32)
        kl_sum += tl.sum(kl, 1)
        # the last response token: the highest column whose mask is set
        last = tl.maximum(last, tl.max(tl.where(keep != 0, cols[None, :], -1), 1))
        tl.store(tok_ptr + r64 * stride_tok + cols[None, :], -beta * kl, mask=m2)
    # the score joins the last token's reward; rows with an empty mask get none
    has = rmask & (last >= 0)
    at = tok_ptr + rows.to(tl.int64) * stride_tok + tl.maximum(last, 0)
    prev = tl.load(at, mask=has, other=0.0)
    tl.store(at, prev + score, mask=has)
    tl.store(seq_ptr + rows, score - beta * kl_sum, mask=rmask)


def gate_reference(r_help, r_safe, safety_tag, threshold):
    """R_c [B] from raw reward-model outputs [B] and safety tags [B], in the outputs' dtype."""
    s_h, s_s = torch.sigmoid(r_help), torch.sigmoid(r_safe)
    return torch.where(safety_tag.bool() | (s_s < threshold), s_s, s_h)


def token_rewards_reference(score, kl, mask, beta):
    """-> (sequence reward [B], token rewards [B, T]), float32."""
    kl_m = kl.float() * mask.float()
    tok = -beta * kl_m
    has = mask.bool().any(-1)  # rows with at least one response token
    rows = torch.arange(tok.shape[0], device=tok.device)[has]
    tok[rows, last_token_index(mask)[has]] += score.float()[has]
    return score.float() - beta * kl_m.sum(-1), tok


def combine_rewards_reference(r_help, r_safe, safety_tag, kl, mask, beta, threshold, eps=1e-8):
    """-> (score [B], sequence reward [B], token rewards [B, T], R_c [B]), all float32."""
    rc = gate_reference(r_help.float(), r_safe.float(), safety_tag, threshold)
    clamped = rc.clamp(CLAMP, 1 - CLAMP)
    x = torch.log(clamped) - torch.log1p(-clamped)
    mean = x.mean()
    score = (x - mean) / torch.sqrt(((x - mean) ** 2).mean() + eps)
    return (score, *token_rewards_reference(score, kl, mask, beta), rc)


def token_rewards_triton(score, kl, mask, beta, block_b=None, block_t=None):
    B, T = kl.shape
    dev = kl.device
    kl = kl if kl.stride(-1) == 1 else kl.contiguous()
    mask = (mask if mask.stride(-1) == 1 else mask.contiguous()).to(torch.int32)
    score = score.to(device=dev, dtype=torch.float32).contiguous()
    seq = torch.empty(B, dtype=torch.float32, device=dev)
    tok = torch.empty(B, T, dtype=torch.float32, device=dev)
    if B:
        bb = block_b or min(triton.next_power_of_2(B), 16)
        bt = block_t or min(triton.next_power_of_2(T), 128)
        _token_rewards[(triton.cdiv(B, bb),)](score, kl, mask, seq, tok, B, T, kl.stride(0),
                                              mask.stride(0), tok.stride(0), float(beta),
                                              BLOCK_B=bb, BLOCK_T=bt)
    return seq, tok


def combine_rewards_triton(r_help, r_safe, safety_tag, kl, mask, beta, threshold, eps=1e-8,
                           block_b=None, block_t=None):
    B = kl.shape[0]
    dev = kl.device
    rc = torch.empty(B, dtype=torch.float32, device=dev)
    score = torch.empty(B, dtype=torch.float32, device=dev)
    if B:
        _scores[(1,)](r_help.contiguous(), r_safe.contiguous(),
                      safety_tag.to(torch.int32).contiguous(), rc, score, B, float(threshold),
                      CLAMP, float(eps), BLOCK_B=min(triton.next_power_of_2(B), 1024))
    return (score, *token_rewards_triton(score, kl, mask, beta, block_b, block_t), rc)


_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def combine_rewards(r_help, r_safe, safety_tag, kl, mask, beta, threshold):
    """Raw helpfulness and safety outputs [B], safety tags [B], KL [B, T], mask [B, T], beta,
    the gate's threshold -> (score, sequence reward, token rewards, R_c), float32."""
    if kl.is_cuda or _INTERPRET:
        return combine_rewards_triton(r_help, r_safe, safety_tag, kl, mask, beta, threshold)
    return combine_rewards_reference(r_help, r_safe, safety_tag, kl, mask, beta, threshold)


def token_rewards(score, kl, mask, beta):
    """The second pass alone, for a given score [B]: -> (sequence reward, token rewards)."""
    if kl.is_cuda or _INTERPRET:
        return token_rewards_triton(score, kl, mask, beta)
    return token_rewards_reference(score, kl, mask, beta)
