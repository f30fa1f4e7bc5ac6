"""kernels/reward_combine.py: hand-derived values, and the kernel under Triton's interpreter
against its torch reference."""

import pytest
import torch

T_SAFE = 0.15  # Llama 2's threshold (flywheel/reward/combined.py); the kernel takes it

@pytest.fixture(scope="module")
def rc(interpreted):
    return interpreted("flywheel.kernels.reward_combine")


def test_hand_derived_values(rc):
    """help = [0, 2], safety = [3, -3], no safety tags.
    Row 0: s_safe = sigmoid(3) = 0.953 >= 0.15, so R_c = sigmoid(0) = 0.5, logit 0.
    Row 1: s_safe = sigmoid(-3) = 0.047 < 0.15: the safety gate picks it, logit -3.
    Whitened: mean -1.5, std 1.5 -> scores [1, -1].
    KL = [[0.1, 0.2], [0.3, 0.0]], beta 0.5 -> sequence rewards [1 - 0.15, -1 - 0.15];
    token rewards [[-0.05, -0.1 + 1], [-0.15, 0 - 1]]; R_c [0.5, sigmoid(-3) = 0.0474259].
    With threshold 0.01 instead, row 1 takes sigmoid(2): logits [0, 2] -> scores [-1, 1]."""
    help_, safe = torch.tensor([0.0, 2.0]), torch.tensor([3.0, -3.0])
    tag = torch.tensor([False, False])
    kl, mask = torch.tensor([[0.1, 0.2], [0.3, 0.0]]), torch.ones(2, 2, dtype=torch.long)
    for fn in (rc.combine_rewards_reference, rc.combine_rewards_triton):
        score, seq, tok, r_c = fn(help_, safe, tag, kl, mask, 0.5, T_SAFE)
        torch.testing.assert_close(r_c, torch.tensor([0.5, 0.0474259]), atol=1e-6, rtol=0)
        torch.testing.assert_close(score, torch.tensor([1.0, -1.0]), atol=1e-5, rtol=0)
        torch.testing.assert_close(seq, torch.tensor([0.85, -1.15]), atol=1e-5, rtol=0)
        torch.testing.assert_close(tok, torch.tensor([[-0.05, 0.9], [-0.15, -1.0]]),
                                   atol=1e-5, rtol=0)
        low, _, _, _ = fn(help_, safe, tag, kl, mask, 0.5, 0.01)
        torch.testing.assert_close(low, torch.tensor([-1.0, 1.0]), atol=1e-5, rtol=0)


def test_safety_tag_forces_the_safety_score(rc):
    """Row 0 tagged safety: R_c = sigmoid(1) (safety) although s_safe = 0.73 > 0.15; row 1
    untagged with s_safe = 0.5: R_c = sigmoid(2) (helpfulness). Logits [1, 2] -> whitened
    [-1, 1]; ignoring the tag would give logits [5, 2] -> [1, -1]."""
    score, _, _, _ = rc.combine_rewards_triton(
        torch.tensor([5.0, 2.0]), torch.tensor([1.0, 0.0]), torch.tensor([True, False]),
        torch.zeros(2, 1), torch.ones(2, 1), 0.01, T_SAFE)
    torch.testing.assert_close(score, torch.tensor([-1.0, 1.0]), atol=1e-4, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("B,T,bb,bt", [(1, 1, None, None), (5, 7, 2, 4), (33, 19, 8, 8),
                                       (64, 130, None, None)])
def test_matches_reference(rc, B, T, bb, bt, dtype):
    torch.manual_seed(B * 100 + T)
    help_, safe = (torch.randn(B) * 3).to(dtype), (torch.randn(B) * 3).to(dtype)
    tag = torch.rand(B) < 0.3
    kl = (torch.randn(B, T) * 0.1).to(dtype)
    lengths = torch.randint(1, T + 1, (B,))
    mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    ref = rc.combine_rewards_reference(help_, safe, tag, kl, mask, 0.01, T_SAFE)
    out = rc.combine_rewards_triton(help_, safe, tag, kl, mask, 0.01, T_SAFE, block_b=bb,
                                    block_t=bt)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)
    # the score sits on the last response token: one token later would be caught
    if T > 1:
        last = lengths - 1
        rows = torch.arange(B)
        expected = ref[0] - 0.01 * (kl.float() * mask)[rows, last]
        torch.testing.assert_close(out[2][rows, last], expected, atol=2e-5, rtol=1e-5)


def test_left_padding_and_an_empty_row(rc):
    # the last response token is the last set mask column wherever the padding sits; a row
    # without response tokens gets its sequence reward and no token reward
    torch.manual_seed(3)
    B, T = 6, 9
    help_, safe, tag = torch.randn(B) * 2, torch.randn(B) * 2, torch.rand(B) < 0.5
    kl = torch.randn(B, T) * 0.1
    mask = torch.zeros(B, T, dtype=torch.long)
    mask[0, 3:] = 1  # left padded
    mask[1, :4] = 1  # right padded
    mask[2, 2:5] = 1  # both
    mask[4, :] = 1
    mask[5, 8] = 1  # a single token at the very end
    ref = rc.combine_rewards_reference(help_, safe, tag, kl, mask, 0.05, T_SAFE)
    out = rc.combine_rewards_triton(help_, safe, tag, kl, mask, 0.05, T_SAFE, block_b=4,
                                    block_t=4)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=1e-5)
    assert out[2][3].abs().sum() == 0  # row 3: no response token
    torch.testing.assert_close(out[1][3], out[0][3])
    assert out[2][2, 4].item() == pytest.approx(out[0][2].item() - 0.05 * kl[2, 4].item(),
                                                abs=1e-5)


def test_the_token_pass_alone_takes_a_given_score(rc):
    """score [2, -1], KL [[0.1, 0.2, 0.4], [0.3, 0.5, 9]], mask [[1, 1, 1], [1, 1, 0]], beta 0.5:
    token rewards [[-0.05, -0.1, -0.2 + 2], [-0.15, -0.25 - 1, 0]] (row 1's 9 is masked out),
    sequence rewards [2 - 0.35, -1 - 0.4] = [1.65, -1.4]; the same as combine_rewards' second
    pass given that score."""
    score = torch.tensor([2.0, -1.0])
    kl = torch.tensor([[0.1, 0.2, 0.4], [0.3, 0.5, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    for fn in (rc.token_rewards_reference, rc.token_rewards_triton):
        seq, tok = fn(score, kl, mask, 0.5)
        torch.testing.assert_close(seq, torch.tensor([1.65, -1.4]), atol=1e-6, rtol=0)
        torch.testing.assert_close(tok, torch.tensor([[-0.05, -0.1, 1.8], [-0.15, -1.25, 0.0]]),
                                   atol=1e-6, rtol=0)


def test_gate_reference_keeps_the_dtype(rc):
    """float64 in, float64 out: sigmoid(1) = 0.7310585786300049 exactly as Python computes it;
    sigmoid(-2) = 0.11920292202211755 < 0.15 gates row 1 to the safety score."""
    out = rc.gate_reference(torch.tensor([1.0, 3.0], dtype=torch.float64),
                            torch.tensor([0.0, -2.0], dtype=torch.float64),
                            torch.tensor([False, False]), T_SAFE)
    assert out.dtype == torch.float64
    assert out.tolist() == pytest.approx([0.7310585786300049, 0.11920292202211755], abs=1e-15)
