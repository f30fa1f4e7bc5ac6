"""kernels/token_logprobs.py under Triton's interpreter against its torch reference."""

import pytest
import torch

# (rows, vocab, block): single row, vocab below one block, vocab not a multiple of the block,
# many blocks (the online log-sum-exp across blocks), block larger than the vocabulary
SHAPES = [(1, 1, None), (1, 7, None), (3, 123, 16), (6, 431, 64), (5, 50, 128), (2, 1000, 256)]
# per input dtype: forward tolerance (both sides compute in float32 from the same values) and
# gradient tolerance (the gradient is stored in the input dtype)
TOL = {torch.float32: (1e-5, 1e-6), torch.bfloat16: (1e-5, 8e-3), torch.float16: (1e-5, 1e-3)}


@pytest.fixture(scope="module")
def tl_mod(interpreted):
    return interpreted("flywheel.kernels.token_logprobs")


@pytest.mark.parametrize("dtype", list(TOL), ids=str)
@pytest.mark.parametrize("rows,vocab,block", SHAPES)
def test_forward_and_backward_match_reference(tl_mod, rows, vocab, block, dtype):
    torch.manual_seed(rows * 1000 + vocab)
    logits = (torch.randn(rows, vocab) * 3).to(dtype)
    targets = torch.randint(0, vocab, (rows,))
    grad_out = torch.randn(rows)
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    out = tl_mod.token_logprobs_triton(a, targets, block_v=block)
    ref = tl_mod.token_logprobs_reference(b, targets)
    f_tol, g_tol = TOL[dtype]
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=f_tol, rtol=1e-5)
    out.backward(grad_out)
    ref.backward(grad_out)
    assert a.grad.dtype == dtype
    torch.testing.assert_close(a.grad.float(), b.grad.float(), atol=g_tol, rtol=1e-2)


def test_leading_dims_and_a_target_off_by_one_is_caught(tl_mod):
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 37)
    targets = torch.randint(1, 36, (2, 3))
    out = tl_mod.token_logprobs_triton(logits, targets, block_v=8)
    assert out.shape == (2, 3)
    torch.testing.assert_close(out, tl_mod.token_logprobs_reference(logits, targets),
                               atol=1e-5, rtol=1e-5)
    shifted = tl_mod.token_logprobs_reference(logits, targets + 1)
    assert (out - shifted).abs().max() > 1e-2  # the tolerance above would see an off-by-one


def test_dispatch_uses_the_kernel_under_the_interpreter(tl_mod):
    assert tl_mod._INTERPRET
    logits, targets = torch.randn(2, 5, requires_grad=True), torch.tensor([1, 4])
    out = tl_mod.token_logprobs(logits, targets)
    assert out.grad_fn is not None and "TokenLogprobs" in type(out.grad_fn).__name__
