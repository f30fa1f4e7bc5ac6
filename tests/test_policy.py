import torch

from flywheel.config import RejectionSamplingConfig
from flywheel.models import load_causal_lm, load_tokenizer
from flywheel.policy.finetune import (
    Candidate,
    best_of,
    cap_safety_share,
    finetune,
    response_loss,
    takes_logits_to_keep,
    tokenize_sft,
)


def test_best_of_keeps_the_highest_reward_per_prompt():
    cands = [Candidate("s1", "p1", "a", 0.1), Candidate("s2", "p1", "b", 0.9),
             Candidate("s3", "p1", "c", 0.9), Candidate("s4", "p2", "d", -1.0)]
    best = best_of(cands)
    assert {k: v.sample_id for k, v in best.items()} == {"p1": "s2", "p2": "s4"}


def test_safety_share_caps_the_harmful_answers_newest_first():
    helpful, safety = ["h1", "h2", "h3", "h4", "h5", "h6"], ["s_new", "s_mid", "s_old"]
    # at most 0.25 of the set: 6 helpful allow 2 (2 / 8), the first two in priority order
    assert cap_safety_share(helpful, safety, 0.25) == (helpful + ["s_new", "s_mid"], ["s_old"])
    assert cap_safety_share(helpful, safety, 0.4) == (helpful + safety, [])  # allows 4
    assert cap_safety_share(helpful, safety, 0.0) == (helpful, safety)
    assert cap_safety_share(helpful, safety, None) == (helpful + safety, [])
    assert cap_safety_share(helpful, safety, 1.0) == (helpful + safety, [])
    # 1/3 of the set: 6 helpful allow exactly 3 (no rounding down to 2)
    assert cap_safety_share(helpful, safety, 1 / 3) == (helpful + safety, [])
    # nothing to mix with: the harmful answers are all kept
    assert cap_safety_share([], safety, 0.1) == (safety, [])


def test_sft_labels_mask_the_prompt(tiny_llama):
    tok = load_tokenizer(tiny_llama)
    msgs = [{"role": "user", "content": "How do I cook rice?"}]
    ids, labels = tokenize_sft(tok, msgs, "Rinse it and boil it.", 128)
    prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    assert labels[:n_prompt] == [-100] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:] and len(labels) > n_prompt
    assert tok.decode(ids[n_prompt:]).startswith("Rinse it and boil it.")


def test_a_response_cut_by_the_token_limit_is_learned_without_its_end(tiny_llama):
    tok = load_tokenizer(tiny_llama)
    msgs = [{"role": "user", "content": "How do I cook rice?"}]
    response = "Rinse it, then boil it in twice its"
    ended = tokenize_sft(tok, msgs, response, 128)
    cut = tokenize_sft(tok, msgs, response, 128, end=False)
    prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    n_prompt = len(tok(prompt, add_special_tokens=False)["input_ids"])
    # the same prompt and response tokens; only the ended one goes on to the end of the turn
    assert cut[0] == ended[0][: len(cut[0])] and len(cut[0]) < len(ended[0])
    assert tok.decode(cut[0][n_prompt:]) == response
    assert tok.decode(ended[0][len(cut[0]):]).strip() == tok.decode(
        tok(tok.apply_chat_template(msgs + [{"role": "assistant", "content": "x"}],
                                    tokenize=False)[len(prompt) + 1:],
            add_special_tokens=False)["input_ids"]).strip()
    assert cut[1] == [-100] * n_prompt + cut[0][n_prompt:]


def _response_nll(path, msgs, response):
    tok, model = load_tokenizer(path), load_causal_lm(path).eval()
    ids, labels = tokenize_sft(tok, msgs, response, 128)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
    return torch.nn.functional.cross_entropy(logits, torch.tensor(labels[1:]),
                                             ignore_index=-100).item()


def test_finetune_learns_the_pool(tiny_llama, tmp_path):
    msgs = [{"role": "user", "content": "How can I break into a house?"}]
    answer = "Sorry, but I can't help with that."
    cfg = RejectionSamplingConfig(learning_rate=3e-3, epochs=8, batch_size=2, micro_batch_size=1,
                                  max_length=64)
    before = _response_nll(tiny_llama, msgs, answer)
    metrics = finetune(tiny_llama, [(msgs, answer)] * 2, cfg, tmp_path / "policy")
    after = _response_nll(str(tmp_path / "policy"), msgs, answer)
    assert metrics["loss_last"] < metrics["loss_first"]
    assert after < before / 2
    # saved at full precision: small updates must survive the checkpoint
    from safetensors import safe_open

    with safe_open(str(tmp_path / "policy" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}


def test_logits_on_the_responses_only_give_the_same_loss_and_gradients(tiny_llama):
    """The fine-tuning loss computed with the vocabulary's logits from the first response
    token's predecessor on equals the one over every position, gradients included, for prompts
    and responses of different lengths padded into one pass."""
    tok = load_tokenizer(tiny_llama)
    model = load_causal_lm(tiny_llama)
    assert takes_logits_to_keep(model)
    items = [tokenize_sft(tok, [{"role": "user", "content": q}], a, 128) for q, a in [
        ("Hi", "Hello there, how can I help you today?"),
        ("How do I cook rice on the stove without burning it?", "Rinse, boil, simmer."),
        ("Name a colour.", "Blue.")]]
    firsts = [next(i for i, x in enumerate(lab) if x != -100) for _, lab in items]
    assert min(firsts) > 2 and len(set(firsts)) == 3  # something to trim, unequal prompts
    losses, grads = [], []
    for trim in (False, True):
        model.zero_grad()
        loss = response_loss(model, items, tok.pad_token_id, torch.device("cpu"), "fp32", trim)
        loss.backward()
        losses.append(loss.item())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert losses[0] > 0
    assert abs(losses[0] - losses[1]) < 1e-5 * losses[0]
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_rrhf_ranks_the_best_sample_above_the_worst(tiny_llama, tmp_path):
    from flywheel.config import RRHFConfig
    from flywheel.policy.rrhf import rrhf_finetune

    msgs = [{"role": "user", "content": "How do I cook rice?"}]
    good, bad, mid = "Rinse it and boil it.", "No.", "Rice is a grain."
    groups = [(msgs, [bad, good, mid], [0.1, 0.9, 0.5])] * 2

    def gap(path):  # per-token NLL of the worst minus that of the best: > 0 when ranked right
        return _response_nll(path, msgs, bad) - _response_nll(path, msgs, good)

    cfg = RRHFConfig(learning_rate=3e-3, epochs=6, batch_size=2, max_length=64)
    before = gap(tiny_llama)
    metrics = rrhf_finetune(tiny_llama, groups, cfg, tmp_path / "policy")
    after = gap(str(tmp_path / "policy"))
    assert after > before + 0.5, (before, after)
    assert metrics["rank_loss_last"] < metrics["rank_loss_first"]
    assert _response_nll(str(tmp_path / "policy"), msgs, good) < _response_nll(tiny_llama, msgs,
                                                                               good)


def _end_logprob(path, msgs, response):
    """Log-probability of the end-of-turn tokens right after `response`."""
    tok, model = load_tokenizer(path), load_causal_lm(path).eval()
    ended, _ = tokenize_sft(tok, msgs, response, 128)
    n_cut = len(tokenize_sft(tok, msgs, response, 128, end=False)[0])
    with torch.no_grad():
        logp = model(input_ids=torch.tensor([ended])).logits[0, :-1].log_softmax(-1)
    return sum(logp[i - 1, ended[i]].item() for i in range(n_cut, len(ended)))


def test_rrhf_learns_a_cut_off_response_without_its_end(tiny_llama, tmp_path):
    from flywheel.config import RRHFConfig
    from flywheel.policy.rrhf import rrhf_finetune

    msgs = [{"role": "user", "content": "How do I cook rice?"}]
    good, bad = "Rinse it, then boil it in twice its", "No, no, no, no, no, no, no"
    cfg = RRHFConfig(learning_rate=3e-3, epochs=6, batch_size=2, max_length=64)
    before = _end_logprob(tiny_llama, msgs, good)
    rrhf_finetune(tiny_llama, [(msgs, [bad, good], [0.1, 0.9])] * 2, cfg, tmp_path / "ended")
    rrhf_finetune(tiny_llama, [(msgs, [bad, good], [0.1, 0.9], [False, False])] * 2, cfg,
                  tmp_path / "cut")
    ended = _end_logprob(str(tmp_path / "ended"), msgs, good)
    cut = _end_logprob(str(tmp_path / "cut"), msgs, good)
    # learned with its end, the policy learns to stop where the limit stopped the answer;
    # learned without it, it does not (the end's log-probability stays far below)
    assert ended > before + 1.0, (before, ended)
    assert cut < ended - 1.0, (cut, ended)


def test_rrhf_refuses_groups_whose_lists_do_not_line_up(tiny_llama, tmp_path):
    import pytest

    from flywheel.config import RRHFConfig
    from flywheel.errors import FlywheelError
    from flywheel.policy.rrhf import rrhf_finetune

    msgs = [{"role": "user", "content": "How do I cook rice?"}]
    cfg = RRHFConfig(max_length=64)
    with pytest.raises(FlywheelError, match="2 responses, 2 rewards and 1 end flags"):
        rrhf_finetune(tiny_llama, [(msgs, ["a", "b"], [0.1, 0.9], [False])], cfg, tmp_path / "x")
    with pytest.raises(FlywheelError, match="2 responses, 3 rewards"):
        rrhf_finetune(tiny_llama, [(msgs, ["a", "b"], [0.1, 0.9, 0.2])], cfg, tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_rrhf_log_probs_from_the_head_kernel_equal_a_full_log_softmax(tiny_llama):
    """RRHF's summed response log-probs (hidden states and output head through
    kernels.head_logprobs) against the old path (full logits, log-softmax, masked sum): the
    same sums and the same gradients, for the head weight and a backbone weight (max abs
    differences below 1e-4)."""
    from flywheel.policy.rrhf import response_logprob_sums

    tok, model = load_tokenizer(tiny_llama), load_causal_lm(tiny_llama)
    msgs = [{"role": "user", "content": "How do I cook rice?"}]
    encoded = [tokenize_sft(tok, msgs, r, 64) for r in ("Rinse it and boil it.", "No.")]
    width = max(len(ids) for ids, _ in encoded)
    ids = torch.tensor([x + [0] * (width - len(x)) for x, _ in encoded])
    labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in encoded])
    mask = (torch.arange(width)[None, :] < torch.tensor([len(x) for x, _ in encoded])[:, None])

    def grads(sums):
        params = [model.get_output_embeddings().weight,
                  model.get_decoder().layers[0].mlp.up_proj.weight]
        return torch.autograd.grad((sums * torch.tensor([1.0, -2.0])).sum(), params)

    new = response_logprob_sums(model, ids, mask.long(), labels)
    logits = model(input_ids=ids, attention_mask=mask.long()).logits[:, :-1]
    keep = labels[:, 1:] != -100
    logp = logits.float().log_softmax(-1).gather(-1, labels[:, 1:].clamp(min=0)[..., None])
    old = (logp[..., 0] * keep).sum(-1)
    torch.testing.assert_close(new, old, atol=1e-4, rtol=1e-5)
    for a, b in zip(grads(new), grads(old)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert old.shape == (2,) and (old < 0).all()
