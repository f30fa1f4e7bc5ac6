"""Last-token read-out: each sequence's last real hidden state (by attention mask), optionally
through the backbone's final RMSNorm, then the scalar head, on those rows only. A
sequence-classification head normalises and projects every position and then gathers; this
gathers first, so norm and head touch one row per sequence.

Works for left or right padding: the last real position is the last 1 in the mask.

Dispatch (`last_token_readout`): the Triton kernel for CUDA tensors, and for CPU tensors when
TRITON_INTERPRET=1 was set before this module was imported; the torch reference otherwise. The
backward runs in torch on the gathered [batch, d] rows and scatters into the hidden gradient.
"""

import os

import torch
import triton
import triton.language as tl


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """[batch, seq] 0/1 mask -> [batch] index of the last 1 in each row."""
    seq = attention_mask.shape[1]
    return seq - 1 - attention_mask.flip(1).to(torch.int64).argmax(dim=1)


def _head(rows, weight, bias, norm_weight, eps):
    """rows [batch, d] (float32) -> [batch]: optional RMSNorm, then the scalar head."""
    if norm_weight is not None:
        rows = rows * torch.rsqrt(rows.pow(2).mean(-1, keepdim=True) + eps) * norm_weight.float()
    return (rows @ weight.float().t() + bias.float()).squeeze(-1)


def last_token_reference(hidden, attention_mask, weight, bias, norm_weight=None, eps=1e-6):
    """hidden [batch, seq, d], weight [1, d], bias [1] -> rewards [batch] (float32)."""
    idx = last_token_index(attention_mask)
    rows = hidden[torch.arange(hidden.shape[0], device=hidden.device), idx].float()
    return _head(rows, weight, bias, norm_weight, eps)


@triton.jit
def _readout_fwd(hidden_ptr, idx_ptr, w_ptr, b_ptr, nw_ptr, out_ptr, D, stride_b, stride_s,
                 eps, HAS_NORM: tl.constexpr, BLOCK_D: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    pos = tl.load(idx_ptr + b)
    offs = tl.arange(0, BLOCK_D)
    mask = offs < D
    h = tl.load(hidden_ptr + b * stride_b + pos * stride_s + offs, mask=mask, other=0.0)
    h = h.to(tl.float32)
    if HAS_NORM:
        rstd = 1.0 / tl.sqrt(tl.sum(h * h, 0) / D + eps)
        h = h * rstd * tl.load(nw_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    w = tl.load(w_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + b, tl.sum(h * w, 0) + tl.load(b_ptr).to(tl.float32))


class _Readout(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, idx, weight, bias, norm_weight, eps):
        B, _, D = hidden.shape
        if hidden.stride(-1) != 1:
            hidden = hidden.contiguous()
        out = torch.empty(B, dtype=torch.float32, device=hidden.device)
        w = weight.reshape(-1).contiguous()
        nw = norm_weight.contiguous() if norm_weight is not None else w  # unused if no norm
        if B:
            _readout_fwd[(B,)](hidden, idx, w, bias, nw, out, D, hidden.stride(0),
                               hidden.stride(1), eps, HAS_NORM=norm_weight is not None,
                               BLOCK_D=triton.next_power_of_2(D))
        # a reference to hidden, not a copy of its rows: inference moves no extra bytes, and the
        # backward gathers the B rows it needs
        ctx.save_for_backward(hidden, idx, weight, bias,
                              norm_weight if norm_weight is not None else torch.empty(0))
        ctx.has_norm, ctx.eps, ctx.hidden_shape = norm_weight is not None, eps, hidden.shape
        ctx.hidden_dtype = hidden.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, idx, weight, bias, nw = ctx.saved_tensors
        rows = hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]
        leaves = [rows.detach().float().requires_grad_(), weight.detach().requires_grad_(),
                  bias.detach().requires_grad_()]
        if ctx.has_norm:
            leaves.append(nw.detach().requires_grad_())
        with torch.enable_grad():
            out = _head(leaves[0], leaves[1], leaves[2], leaves[3] if ctx.has_norm else None,
                        ctx.eps)
            grads = torch.autograd.grad(out, leaves, grad_out)
        grad_hidden = torch.zeros(ctx.hidden_shape, dtype=ctx.hidden_dtype, device=rows.device)
        grad_hidden[torch.arange(rows.shape[0], device=rows.device), idx] = grads[0].to(
            ctx.hidden_dtype)
        g_nw = grads[3] if ctx.has_norm else None
        return grad_hidden, None, grads[1], grads[2], g_nw, None


def last_token_triton(hidden, attention_mask, weight, bias, norm_weight=None, eps=1e-6):
    idx = last_token_index(attention_mask).contiguous()
    return _Readout.apply(hidden, idx, weight, bias, norm_weight, eps)


_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def last_token_readout(hidden, attention_mask, weight, bias, norm_weight=None, eps=1e-6):
    if hidden.is_cuda or _INTERPRET:
        return last_token_triton(hidden, attention_mask, weight, bias, norm_weight, eps)
    return last_token_reference(hidden, attention_mask, weight, bias, norm_weight, eps)
