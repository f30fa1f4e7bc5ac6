"""Token log-probabilities of given tokens from logits, without a [tokens, vocab] float32
log-softmax: one program per row streams the vocabulary in blocks with an online log-sum-exp,
keeps the row's log-sum-exp for the backward, and the backward writes the gradient block by block
in the logits' dtype.

    logp[i] = logits[i, t_i] - logsumexp_v(logits[i, v])
    d logits[i, v] = g[i] * (1[v == t_i] - softmax(logits[i])_v)

Dispatch (`token_logprobs`): the Triton kernel for CUDA tensors, and for CPU tensors when
TRITON_INTERPRET=1 was set before this module was imported; the torch reference otherwise.
"""

import os

import torch
import triton
import triton.language as tl


@triton.jit
def _logprobs_fwd(logits_ptr, targets_ptr, out_ptr, lse_ptr, V, stride_row,
                  BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride_row
    m = tl.zeros([BLOCK_V], dtype=tl.float32) - float("inf")  # running max per lane
    s = tl.zeros([BLOCK_V], dtype=tl.float32)  # running sum of exp(x - m) per lane
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        x = tl.load(base + offs, mask=offs < V, other=float("-inf")).to(tl.float32)
        m_new = tl.maximum(m, x)
        # a lane still at -inf (past the vocabulary) keeps s = 0: shift by 0 there, not -inf
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - shift) + tl.exp(x - shift)
        m = m_new
    m_row = tl.max(m, 0)
    s_row = tl.sum(tl.where(m == float("-inf"), 0.0, s * tl.exp(m - m_row)), 0)
    lse = m_row + tl.log(s_row)
    target = tl.load(targets_ptr + row)
    x_t = tl.load(base + target).to(tl.float32)
    tl.store(out_ptr + row, x_t - lse)
    tl.store(lse_ptr + row, lse)


@triton.jit
def _logprobs_bwd(logits_ptr, targets_ptr, lse_ptr, grad_out_ptr, grad_ptr, V, stride_row,
                  stride_grad_row, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride_row
    gbase = grad_ptr + row * stride_grad_row
    g = tl.load(grad_out_ptr + row).to(tl.float32)
    lse = tl.load(lse_ptr + row)
    target = tl.load(targets_ptr + row)
    for start in range(0, V, BLOCK_V):
        offs = start + tl.arange(0, BLOCK_V)
        mask = offs < V
        x = tl.load(base + offs, mask=mask, other=0.0).to(tl.float32)
        onehot = tl.where(offs == target, 1.0, 0.0)
        grad = g * (onehot - tl.exp(x - lse))
        tl.store(gbase + offs, grad.to(grad_ptr.dtype.element_ty), mask=mask)


def _block(V: int) -> int:
    return min(triton.next_power_of_2(V), 4096)


class _TokenLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, block_v):
        shape = targets.shape
        x = logits.reshape(-1, logits.shape[-1])
        if x.stride(-1) != 1:
            x = x.contiguous()
        t = targets.reshape(-1).to(torch.int64).contiguous()
        n, V = x.shape
        out = torch.empty(n, dtype=torch.float32, device=x.device)
        lse = torch.empty(n, dtype=torch.float32, device=x.device)
        if n:
            _logprobs_fwd[(n,)](x, t, out, lse, V, x.stride(0), BLOCK_V=block_v or _block(V))
        ctx.save_for_backward(x, t, lse)
        ctx.logits_shape, ctx.block_v = logits.shape, block_v
        return out.reshape(shape)

    @staticmethod
    def backward(ctx, grad_out):
        x, t, lse = ctx.saved_tensors
        n, V = x.shape
        grad = torch.empty_like(x)
        g = grad_out.reshape(-1).contiguous()
        if n:
            _logprobs_bwd[(n,)](x, t, lse, g, grad, V, x.stride(0), grad.stride(0),
                                BLOCK_V=ctx.block_v or _block(V))
        return grad.reshape(ctx.logits_shape), None, None


def token_logprobs_triton(logits: torch.Tensor, targets: torch.Tensor,
                          block_v: int | None = None) -> torch.Tensor:
    """[..., V] logits, [...] token ids -> [...] float32 log-probs (Triton, with backward).
    `block_v` (a power of two) overrides the vocabulary block, for tests."""
    return _TokenLogprobs.apply(logits, targets, block_v)


def token_logprobs_reference(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The eager path: a full float32 log-softmax, then a gather."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)


_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if logits.is_cuda or _INTERPRET:
        return token_logprobs_triton(logits, targets)
    return token_logprobs_reference(logits, targets)
