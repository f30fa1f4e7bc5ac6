"""What it costs PPO to get updated weights into vLLM: an in-place reload (the actor's
safetensors written to a scratch folder, every engine worker reloads them) against starting a
new engine on a saved checkpoint, and one rollout batch from vLLM against transformers
`generate`, side by side in one run on the demo's policy.

    .venv/bin/python benchmarks/bench_weight_sync.py [--model builtin:smollm2-135m-instruct]

Writes benchmarks/results/weight_sync.md.
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _machine import describe

from flywheel import models
from flywheel.annotation.prompts import load_prompts, messages_of
from flywheel.models import load_causal_lm, load_tokenizer
from flywheel.policy.ppo import response_logprobs
from flywheel.policy.rollouts import VLLMRollouts, rollout
from flywheel.policy.sampling import VLLMSampler

OUT = Path(__file__).parent / "results" / "weight_sync.md"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="builtin:smollm2-135m-instruct")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--reloads", type=int, default=3)
    args = ap.parse_args()
    path = models.resolve(args.model)
    tok = load_tokenizer(path)
    policy = load_causal_lm(path, "float32")
    prompts = [{"messages": messages_of(p)} for p in load_prompts(None, None)
               if p["criterion"] == "helpfulness"][: args.prompts]
    with tempfile.TemporaryDirectory() as scratch, tempfile.TemporaryDirectory() as saved:
        t0 = time.perf_counter()
        engine = VLLMSampler(path, dtype="float32", max_model_len=1024, weight_sync=True)
        start = time.perf_counter() - t0
        ro = VLLMRollouts(engine, tok, scratch)
        try:
            ro(prompts, args.tokens, 1.0)  # warm
            for _ in range(args.reloads):
                with torch.no_grad():  # a stand-in update: every weight moves a little
                    for p in policy.parameters():
                        p.mul_(1.0 + 1e-3 * torch.randn_like(p))
                ro.sync(policy)
                batch = ro(prompts, args.tokens, 1.0)
            # the engine now samples the updated policy: its greedy tokens are the policy's
            greedy = ro(prompts[:4], 8, 0.0)
            _, logits = response_logprobs(policy, greedy)
            agree = ((logits.argmax(-1) == greedy.input_ids[:, greedy.prompt_width:]).float()
                     * greedy.response_mask).sum() / greedy.response_mask.sum()
        finally:
            engine.close()
        policy.save_pretrained(saved, safe_serialization=True)
        tok.save_pretrained(saved)
        t0 = time.perf_counter()
        restarted = VLLMSampler(saved, dtype="float32", max_model_len=1024)
        restart = time.perf_counter() - t0
        restarted.close()
    t0 = time.perf_counter()
    hf = rollout(policy, tok, prompts, args.tokens, 1.0)
    hf_seconds = time.perf_counter() - t0
    reload = statistics.median(ro.reload_seconds)
    n_params = sum(p.numel() for p in policy.parameters())
    written = sum(p.numel() * p.element_size() for p in policy.parameters())
    vllm_gen = statistics.median(ro.generate_seconds[1:])
    tokens = int(batch.response_mask.sum())
    lines = [
        "# Weights into vLLM for PPO rollouts",
        "",
        f"Machine: {describe()}. Model: {args.model} (float32), {args.prompts} demo prompts, "
        f"{args.tokens} new tokens at temperature 1.",
        "",
        "| what | seconds | ratio |",
        "|---|---|---|",
        f"| in-place reload (write safetensors + every worker reloads), median of "
        f"{args.reloads} | {reload:.2f} | 1.0 |",
        f"| new engine on a saved checkpoint | {restart:.1f} | {restart / reload:.0f}x |",
        f"| (first engine start, for reference) | {start:.1f} | {start / reload:.0f}x |",
        "",
        f"Per update per billion parameters: {reload / (n_params / 1e9):.1f} s on this machine "
        f"({n_params / 1e6:.1f}M parameters, {written / 1e9:.2f} GB of float32 safetensors "
        "written and read back per update; each rank's engine reloads its own copy). A GPU "
        "node's figure is for benchmarks/gpu_check.py to record: none was lent.",
        "",
        "| one rollout batch | seconds | response tokens |",
        "|---|---|---|",
        f"| vLLM (median over the batches after a reload) | {vllm_gen:.2f} | {tokens} |",
        f"| transformers generate | {hf_seconds:.2f} | {int(hf.response_mask.sum())} |",
        "",
        f"After the reloads the engine's greedy tokens agree with the updated policy's argmax "
        f"on {agree.item():.1%} of positions.",
        "",
    ]
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
