"""kernels/last_token.py under Triton's interpreter against its torch reference."""

import pytest
import torch

TOL = {torch.float32: (1e-5, 1e-5), torch.bfloat16: (2e-2, 2e-2), torch.float16: (2e-3, 2e-3)}


@pytest.fixture(scope="module")
def lt(interpreted):
    return interpreted("flywheel.kernels.last_token")


def _mask(lengths, seq, left):
    m = torch.zeros(len(lengths), seq, dtype=torch.long)
    for i, n in enumerate(lengths):
        if left:
            m[i, seq - n :] = 1
        else:
            m[i, :n] = 1
    return m


CASES = [  # (lengths, seq, d): batch of one, single-token sequences, d not a power of two
    ([1], 1, 8),
    ([3, 1, 5], 5, 37),
    ([9, 2, 7, 9], 9, 64),
]


@pytest.mark.parametrize("dtype", list(TOL), ids=str)
@pytest.mark.parametrize("left", [False, True], ids=["right-pad", "left-pad"])
@pytest.mark.parametrize("norm", [False, True], ids=["head", "norm+head"])
@pytest.mark.parametrize("lengths,seq,d", CASES)
def test_readout_forward_and_backward(lt, lengths, seq, d, norm, left, dtype):
    torch.manual_seed(len(lengths) * 100 + d)
    mask = _mask(lengths, seq, left)
    hidden = torch.randn(len(lengths), seq, d).to(dtype)
    weight, bias = torch.randn(1, d), torch.randn(1)
    nw = torch.rand(d) + 0.5 if norm else None
    leaves = []
    outs = []
    for fn in (lt.last_token_triton, lt.last_token_reference):
        h = hidden.clone().requires_grad_()
        w, b = weight.clone().requires_grad_(), bias.clone().requires_grad_()
        n = nw.clone().requires_grad_() if norm else None
        outs.append(fn(h, mask, w, b, n))
        leaves.append([x for x in (h, w, b, n) if x is not None])
    f_tol, g_tol = TOL[dtype]
    torch.testing.assert_close(outs[0], outs[1], atol=f_tol, rtol=f_tol)
    g = torch.randn(len(lengths))
    for out in outs:
        out.backward(g)
    for mine, ref in zip(*leaves):
        assert mine.grad.dtype == ref.grad.dtype
        torch.testing.assert_close(mine.grad.float(), ref.grad.float(), atol=g_tol, rtol=g_tol)


def test_an_off_by_one_position_would_be_caught(lt):
    torch.manual_seed(1)
    mask = _mask([4, 2], 6, left=False)
    hidden, w, b = torch.randn(2, 6, 16), torch.randn(1, 16), torch.zeros(1)
    out = lt.last_token_triton(hidden, mask, w, b)
    wrong = (hidden[torch.arange(2), torch.tensor([2, 0])] @ w.t()).squeeze(-1)
    right = (hidden[torch.arange(2), torch.tensor([3, 1])] @ w.t()).squeeze(-1)
    torch.testing.assert_close(out, right, atol=1e-5, rtol=1e-5)
    assert (out - wrong).abs().max() > 1e-2
