"""Token log-probabilities of given tokens straight from hidden states and the output head, without
the [tokens, vocab] logits: the logits are computed tile by tile (rows x vocabulary, reduced over
the hidden dimension with tl.dot) and folded into an online log-sum-exp, so nothing of size
[tokens, vocab] is ever stored in the forward.

    logits[i, v] = h_i . W_v
    logp[i] = logits[i, t_i] - logsumexp_v(logits[i, v])
    dh_i = g_i * (W_{t_i} - sum_v p_iv W_v)
    dW_v = sum_i g_i * (1[v == t_i] - p_iv) * h_i

Forward: a grid of (row blocks, vocabulary splits); each program streams its share of the
vocabulary blocks, keeps a running max, running sum and the target's logit per row, and writes
them per split ([splits, N] floats); a tiny torch step combines the splits into the row's lse.
The splits keep the GPU busy when there are few row blocks (N = 4096 gives 64 row blocks of 64).

Backward (Liger's fused-linear-cross-entropy idea): over chunks of rows, a Triton kernel
recomputes the logits tile by tile from the saved lse and writes the logits' gradient
g_i * (1[v == t_i] - p_iv) for that chunk, in the input dtype; two matmuls (cuBLAS on a GPU) then
give the chunk's dh and add its share of dW. Memory is O(chunk * V) in the input dtype, the chunk
chosen so that chunk * V is about N * D (the size of the hidden states). dW is accumulated chunk
by chunk in the weight's dtype (each chunk's product is accumulated in float32 by the matmul and
rounded once per chunk, as Liger does).

Block sizes (64 rows, 128 vocabulary entries, 64 hidden) are reasonable defaults for an H100, not
tuned: no GPU was available when this was written (see benchmarks/bench_head_logprobs.py).

Dispatch (`head_logprobs`): the Triton path for CUDA tensors, and for CPU tensors when
TRITON_INTERPRET=1 was set before this module was imported; the torch reference otherwise.
Targets must lie in [0, V): they are not checked (a check would synchronise the GPU), and an
out-of-range target gives a meaningless log-prob instead of an error.
"""

import os

import torch
import triton
import triton.language as tl


@triton.jit
def _logits_tile(h_ptr, w_ptr, rows, row_mask, cols, col_mask, D, stride_h, stride_w,
                 BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_D: tl.constexpr,
                 UPCAST: tl.constexpr, IEEE: tl.constexpr):
    """[BLOCK_N, BLOCK_V] float32 tile of h @ W.T for the given rows and vocabulary columns."""
    acc = tl.zeros([BLOCK_N, BLOCK_V], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        d_mask = offs_d < D
        h = tl.load(h_ptr + rows[:, None] * stride_h + offs_d[None, :],
                    mask=row_mask[:, None] & d_mask[None, :], other=0.0)
        w = tl.load(w_ptr + cols[None, :] * stride_w + offs_d[:, None],  # [BLOCK_D, BLOCK_V]
                    mask=d_mask[:, None] & col_mask[None, :], other=0.0)
        if UPCAST:  # the interpreter computes bf16 as NaN: products of bf16/fp16 are exact in fp32
            h = h.to(tl.float32)
            w = w.to(tl.float32)
        if IEEE:
            acc = tl.dot(h, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(h, w, acc)
    return acc


@triton.jit
def _head_lse_fwd(h_ptr, w_ptr, t_ptr, m_ptr, s_ptr, xt_ptr, N, V, D, stride_h, stride_w,
                  blocks_per_split, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
                  BLOCK_D: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr):
    split = tl.program_id(1)
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    rows = rows.to(tl.int64)
    t = tl.load(t_ptr + rows, mask=row_mask, other=-1)
    m = tl.zeros([BLOCK_N], dtype=tl.float32) - float("inf")  # running max per row
    s = tl.zeros([BLOCK_N], dtype=tl.float32)  # running sum of exp(logit - m) per row
    x_t = tl.zeros([BLOCK_N], dtype=tl.float32)  # the target's logit, if in this split
    v_begin = split * blocks_per_split * BLOCK_V
    v_end = tl.minimum(V, v_begin + blocks_per_split * BLOCK_V)
    for v0 in range(v_begin, v_end, BLOCK_V):
        cols = (v0 + tl.arange(0, BLOCK_V)).to(tl.int64)
        col_mask = cols < v_end
        x = _logits_tile(h_ptr, w_ptr, rows, row_mask, cols, col_mask, D, stride_h, stride_w,
                         BLOCK_N, BLOCK_V, BLOCK_D, UPCAST, IEEE)
        x = tl.where(col_mask[None, :], x, float("-inf"))
        x_t += tl.sum(tl.where(cols[None, :] == t[:, None], x, 0.0), 1)
        # every block holds at least one real column, so m_new is finite from the first block on
        m_new = tl.maximum(m, tl.max(x, 1))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(x - m_new[:, None]), 1)
        m = m_new
    out = split * N + rows
    tl.store(m_ptr + out, m, mask=row_mask)
    tl.store(s_ptr + out, s, mask=row_mask)
    tl.store(xt_ptr + out, x_t, mask=row_mask)


@triton.jit
def _head_grad_logits(h_ptr, w_ptr, t_ptr, lse_ptr, g_ptr, out_ptr, N, V, D, stride_h, stride_w,
                      stride_out, BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr,
                      BLOCK_D: tl.constexpr, UPCAST: tl.constexpr, IEEE: tl.constexpr):
    """out[i, v] = g_i * (1[v == t_i] - exp(logits[i, v] - lse_i)) for one tile of a row chunk."""
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_mask = rows < N
    rows = rows.to(tl.int64)
    cols = (tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)).to(tl.int64)
    col_mask = cols < V
    x = _logits_tile(h_ptr, w_ptr, rows, row_mask, cols, col_mask, D, stride_h, stride_w,
                     BLOCK_N, BLOCK_V, BLOCK_D, UPCAST, IEEE)
    t = tl.load(t_ptr + rows, mask=row_mask, other=-1)
    lse = tl.load(lse_ptr + rows, mask=row_mask, other=0.0)
    g = tl.load(g_ptr + rows, mask=row_mask, other=0.0).to(tl.float32)
    onehot = tl.where(cols[None, :] == t[:, None], 1.0, 0.0)
    grad = g[:, None] * (onehot - tl.exp(x - lse[:, None]))
    tl.store(out_ptr + rows[:, None] * stride_out + cols[None, :],
             grad.to(out_ptr.dtype.element_ty), mask=row_mask[:, None] & col_mask[None, :])


def _pow2_block(n: int, cap: int) -> int:
    return min(max(triton.next_power_of_2(n), 16), cap)  # tl.dot needs >= 16 per dimension


class _Blocks:
    def __init__(self, n, V, D, block_v):
        if block_v is not None and (block_v < 16 or block_v & (block_v - 1)):
            raise ValueError(f"block_v must be a power of two >= 16 (tl.dot); got {block_v}")
        self.n = _pow2_block(n, 64)
        self.v = block_v or _pow2_block(V, 128)
        self.d = _pow2_block(D, 64)


def _flags(x):
    # on a GPU, bf16/fp16 tiles go to the tensor cores as they are; float32 stays exact (no tf32)
    return {"UPCAST": not x.is_cuda, "IEEE": x.is_cuda and x.dtype == torch.float32}


def _num_splits(row_blocks, v_blocks, device):
    if device.type != "cuda":
        return min(v_blocks, 2)  # exercises the split combine under the interpreter
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(v_blocks, triton.cdiv(4 * sms, row_blocks)))


def _check(hidden, weight, targets):
    errors = []
    if weight.dim() != 2 or hidden.shape[-1:] != weight.shape[1:]:
        errors.append(f"weight must be [V, D] with D = hidden.shape[-1] = {hidden.shape[-1]}; "
                      f"got {tuple(weight.shape)}")
    if hidden.dtype != weight.dtype:
        errors.append(f"hidden and weight must share a dtype (cast one); got {hidden.dtype} and "
                      f"{weight.dtype}")
    if targets.shape != hidden.shape[:-1]:
        errors.append(f"targets must have shape hidden.shape[:-1] = {tuple(hidden.shape[:-1])}; "
                      f"got {tuple(targets.shape)}")
    if targets.is_floating_point():
        errors.append(f"targets must be integer token ids; got {targets.dtype}")
    if errors:
        raise ValueError("head_logprobs: " + "; ".join(errors))


class _HeadLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, block_v, splits, chunk_rows):
        shape = targets.shape
        h = hidden.reshape(-1, hidden.shape[-1])
        h = h if h.stride(-1) == 1 else h.contiguous()
        w = weight if weight.stride(-1) == 1 else weight.contiguous()
        t = targets.reshape(-1).to(torch.int64).contiguous()
        (n, D), V = h.shape, w.shape[0]
        blocks = _Blocks(n, V, D, block_v)
        row_blocks, v_blocks = triton.cdiv(n, blocks.n), triton.cdiv(V, blocks.v)
        splits = min(splits or _num_splits(row_blocks, v_blocks, h.device), v_blocks)
        per_split = triton.cdiv(v_blocks, splits)
        splits = triton.cdiv(v_blocks, per_split)  # no empty split
        m, s, x_t = (torch.empty(splits, n, dtype=torch.float32, device=h.device)
                     for _ in range(3))
        if n:
            _head_lse_fwd[(row_blocks, splits)](
                h, w, t, m, s, x_t, n, V, D, h.stride(0), w.stride(0), per_split,
                BLOCK_N=blocks.n, BLOCK_V=blocks.v, BLOCK_D=blocks.d, **_flags(h))
        lse = torch.logsumexp(m + torch.log(s), dim=0)
        ctx.save_for_backward(h, w, t, lse)
        ctx.blocks, ctx.chunk_rows, ctx.hidden_shape = blocks, chunk_rows, hidden.shape
        return (x_t.sum(0) - lse).reshape(shape)

    @staticmethod
    def backward(ctx, grad_out):
        h, w, t, lse = ctx.saved_tensors
        (n, D), V, blocks = h.shape, w.shape[0], ctx.blocks
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        g = grad_out.reshape(-1).contiguous()
        # chunk * V ~ n * D: the logits' gradient of one chunk is about the size of the hidden
        chunk = ctx.chunk_rows or triton.next_power_of_2(triton.cdiv(n, triton.cdiv(V, D)))
        chunk = max(min(chunk, n), 1)
        dh = torch.empty_like(h) if need_h else None
        dw = torch.zeros_like(w) if need_w else None
        grad_logits = torch.empty(chunk, V, dtype=h.dtype, device=h.device)
        for start in range(0, n, chunk):
            end = min(start + chunk, n)
            gl = grad_logits[: end - start]
            grid = (triton.cdiv(end - start, blocks.n), triton.cdiv(V, blocks.v))
            _head_grad_logits[grid](
                h[start:end], w, t[start:end], lse[start:end], g[start:end], gl, end - start,
                V, D, h.stride(0), w.stride(0), gl.stride(0), BLOCK_N=blocks.n,
                BLOCK_V=blocks.v, BLOCK_D=blocks.d, **_flags(h))
            if need_h:
                torch.mm(gl, w, out=dh[start:end])
            if need_w:
                dw.addmm_(gl.t(), h[start:end])
        if dh is not None:
            dh = dh.reshape(ctx.hidden_shape)
        return dh, dw, None, None, None, None


def head_logprobs_triton(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         block_v: int | None = None, splits: int | None = None,
                         chunk_rows: int | None = None) -> torch.Tensor:
    """hidden [..., D], weight [V, D], targets [...] -> [...] float32 log-probs (Triton, with
    backward). `block_v` (a power of two >= 16), `splits` (vocabulary splits of the forward) and
    `chunk_rows` (rows per backward chunk) override the defaults, for tests."""
    _check(hidden, weight, targets)
    return _HeadLogprobs.apply(hidden, weight, targets, block_v, splits, chunk_rows)


def head_logprobs_reference(hidden: torch.Tensor, weight: torch.Tensor,
                            targets: torch.Tensor) -> torch.Tensor:
    """The eager path in float32: full [tokens, V] logits, log-softmax, gather."""
    logits = hidden.float() @ weight.float().t()
    logp = torch.log_softmax(logits, dim=-1)
    return logp.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)


_INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def head_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                  block_v: int | None = None) -> torch.Tensor:
    if hidden.is_cuda or _INTERPRET:
        return head_logprobs_triton(hidden, weight, targets, block_v)
    return head_logprobs_reference(hidden, weight, targets)
