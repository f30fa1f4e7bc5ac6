"""kernels/head_logprobs.py under Triton's interpreter against its torch reference."""

import math

import pytest
import torch

# (rows, vocab, hidden, block_v): single token, vocabulary and hidden not multiples of the blocks
# (the masks), many vocabulary blocks (the online log-sum-exp across blocks and splits)
SHAPES = [(1, 50, 16, None), (7, 131, 40, 32), (37, 257, 40, 64), (37, 50, 16, 16),
          (7, 257, 16, None)]
# per input dtype: (forward atol, gradient atol, gradient rtol). The forward is float32 on both
# sides from the same values; gradients are stored in the input dtype, so about one ulp of it at
# the gradients' magnitude (up to ~8 here: bf16 ulp 0.03, fp16 ulp 0.004)
TOL = {torch.float32: (1e-5, 1e-5, 1e-5), torch.bfloat16: (1e-5, 1e-2, 1.6e-2),
       torch.float16: (1e-5, 2e-3, 2e-3)}


@pytest.fixture(scope="module")
def hl(interpreted):
    return interpreted("flywheel.kernels.head_logprobs")


def _inputs(rows, vocab, hidden, dtype, seed=0):
    torch.manual_seed(seed * 7919 + rows * 1000 + vocab + hidden)
    h = torch.randn(rows, hidden).to(dtype)
    w = (torch.randn(vocab, hidden) * 0.5).to(dtype)  # logits of std ~3, as a real head gives
    return h, w, torch.randint(0, vocab, (rows,)), torch.randn(rows)


def _run(fn, h, w, t, g, **kw):
    a, b = h.clone().requires_grad_(), w.clone().requires_grad_()
    out = fn(a, b, t, **kw)
    out.backward(g)
    return out, a.grad, b.grad


def _assert_match(hl, h, w, t, g, dtype, **kw):
    out, dh, dw = _run(hl.head_logprobs_triton, h, w, t, g, **kw)
    ref, rdh, rdw = _run(hl.head_logprobs_reference, h, w, t, g)
    f_tol, g_atol, g_rtol = TOL[dtype]
    assert out.dtype == torch.float32 and dh.dtype == dtype and dw.dtype == dtype
    torch.testing.assert_close(out, ref, atol=f_tol, rtol=1e-5)
    torch.testing.assert_close(dh.float(), rdh.float(), atol=g_atol, rtol=g_rtol)
    torch.testing.assert_close(dw.float(), rdw.float(), atol=g_atol, rtol=g_rtol)


@pytest.mark.parametrize("rows,vocab,hidden,block_v", SHAPES)
def test_float32_forward_and_gradients_match_reference(hl, rows, vocab, hidden, block_v):
    _assert_match(hl, *_inputs(rows, vocab, hidden, torch.float32), torch.float32,
                  block_v=block_v)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("rows,vocab,hidden,block_v", [SHAPES[0], SHAPES[2]])
def test_half_precision_forward_and_gradients_match_reference(hl, rows, vocab, hidden, block_v,
                                                              dtype):
    _assert_match(hl, *_inputs(rows, vocab, hidden, dtype), dtype, block_v=block_v)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_many_backward_chunks_and_one_split(hl, dtype):
    """chunk_rows=5 over 37 rows: 8 chunks, the last one partial, dW added up across them."""
    _assert_match(hl, *_inputs(37, 131, 16, dtype), dtype, block_v=32, splits=1, chunk_rows=5)


def test_hand_derived_values(hl):
    """W = 0 except W[2] = 3 e_0, h_i = e_0, targets (2, 0), V = 5: logits are 3 at v = 2 and 0
    elsewhere, so lse = log(e^3 + 4) = 3.0878, logp = (3 - lse, 0 - lse) = (-0.0878, -3.0878).
    With g = 1: dh_i = W_t - sum_v p_v W_v, p_2 = e^3 / (e^3 + 4) = 0.8339, so dh_0 = 3 e_0 (1 -
    0.8339) = 0.4982 e_0 and dh_1 = -3 e_0 * 0.8339 = -2.5018 e_0."""
    w = torch.zeros(5, 16)
    w[2, 0] = 3.0
    h = torch.zeros(2, 16)
    h[:, 0] = 1.0
    out, dh, _ = _run(hl.head_logprobs_triton, h, w, torch.tensor([2, 0]), torch.ones(2))
    lse = math.log(math.exp(3) + 4)
    torch.testing.assert_close(out, torch.tensor([3 - lse, -lse]), atol=1e-6, rtol=1e-6)
    p2 = math.exp(3) / (math.exp(3) + 4)
    expected = torch.zeros(2, 16)
    expected[:, 0] = torch.tensor([3 * (1 - p2), -3 * p2])
    torch.testing.assert_close(dh, expected, atol=1e-6, rtol=1e-6)


def test_result_does_not_depend_on_the_vocabulary_block(hl):
    h, w, t, g = _inputs(7, 257, 40, torch.float32, seed=1)
    a = _run(hl.head_logprobs_triton, h, w, t, g, block_v=16)
    b = _run(hl.head_logprobs_triton, h, w, t, g, block_v=128, splits=1)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


def test_leading_dims_batch_of_one_and_a_target_off_by_one_is_caught(hl):
    torch.manual_seed(0)
    h = torch.randn(1, 6, 16)  # a batch of one sequence of 6 tokens
    w = torch.randn(50, 16) * 0.5
    t = torch.randint(1, 49, (1, 6))
    out = hl.head_logprobs_triton(h, w, t, block_v=16)
    assert out.shape == (1, 6)
    torch.testing.assert_close(out, hl.head_logprobs_reference(h, w, t), atol=1e-5, rtol=1e-5)
    for shift in (1, -1):
        shifted = hl.head_logprobs_reference(h, w, t + shift)
        assert (out - shifted).abs().max() > 1e-2  # far beyond the 1e-5 tolerance above


def test_tied_weight_gets_both_gradients(hl):
    """The head shares its weight with the embedding: autograd adds the two contributions."""
    torch.manual_seed(0)
    emb = torch.randn(50, 16, requires_grad=True)
    tokens = torch.tensor([3, 17, 42])
    out = hl.head_logprobs_triton(emb[tokens], emb, torch.tensor([17, 42, 0]))
    (grad,) = torch.autograd.grad(out.sum(), emb)
    ref = hl.head_logprobs_reference(emb[tokens], emb, torch.tensor([17, 42, 0]))
    (ref_grad,) = torch.autograd.grad(ref.sum(), emb)
    torch.testing.assert_close(grad, ref_grad, atol=1e-5, rtol=1e-5)


def test_bad_inputs_are_reported_together(hl):
    h, w = torch.randn(3, 16), torch.randn(50, 8, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="D = hidden.shape") as err:
        hl.head_logprobs_triton(h, w, torch.zeros(4, dtype=torch.long))
    assert "share a dtype" in str(err.value) and "targets must have shape" in str(err.value)
    with pytest.raises(ValueError, match="power of two"):
        hl.head_logprobs_triton(h, torch.randn(50, 16), torch.zeros(3, dtype=torch.long),
                                block_v=24)


def test_dispatch_uses_the_kernel_under_the_interpreter(hl):
    assert hl._INTERPRET
    h = torch.randn(2, 16, requires_grad=True)
    out = hl.head_logprobs(h, torch.randn(20, 16), torch.tensor([1, 19]))
    assert out.grad_fn is not None and "HeadLogprobs" in type(out.grad_fn).__name__
