"""Would a bigger model's features beat the refusal head? The packaged SmolLM2-135M-Instruct reads
each labelled answer after its prompt (the chat template), and its hidden states (the mean over
the answer's tokens, and over its first 24 tokens, at one layer) feed the same logistic
regression as the shipped head, alone and beside the head's own features (MiniLM embeddings and
the refusal cues); all under the shipped head's 5-fold cross-validation grouped by prompt on
flywheel/data/refusal_labels.jsonl, all followed by the same two rules (`refusal.decide`).

    .venv/bin/python benchmarks/experiments/bench_refusal_decoder.py [--layer 15] \
        [--max-answer-tokens 160] [--out FILE]

The decoder's states are standardised per dimension and scaled by 0.05, near the size of the
MiniLM embeddings' entries, so the head's weight decay treats both alike. Prints and writes
(--out) refuse-vs-comply agreement with people overall and on XSTest's prompts, with the time
the features took.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from flywheel.evaluation.refusal import REFUSED, decide, features
from flywheel.evaluation.refusal_train import cross_validate, load_labels
from flywheel.models import load_causal_lm, load_tokenizer, resolve

OPENING_TOKENS = 24
MAX_PROMPT_TOKENS = 96


def decoder_features(examples, layer: int, max_answer: int) -> torch.Tensor:
    """Per answer: [mean over its tokens, mean over its opening] of the layer's hidden states."""
    path = resolve("builtin:smollm2-135m-instruct")
    tok, model = load_tokenizer(path), load_causal_lm(path, "bfloat16").eval()
    rows = []
    with torch.no_grad():
        for e in examples:
            prompt = tok.apply_chat_template([{"role": "user", "content": e.prompt}],
                                             tokenize=False, add_generation_prompt=True)
            p_ids = tok(prompt, add_special_tokens=False)["input_ids"][-MAX_PROMPT_TOKENS:]
            a_ids = (tok(e.completion, add_special_tokens=False)["input_ids"][:max_answer]
                     or [tok.eos_token_id])
            states = model(torch.tensor([p_ids + a_ids]), output_hidden_states=True
                           ).hidden_states[layer][0, len(p_ids):].float()
            rows.append(torch.cat([states.mean(0), states[:OPENING_TOKENS].mean(0)]))
    x = torch.stack(rows)
    return (x - x.mean(0)) / (x.std(0) + 1e-6) * 0.05


def agreement(examples, labels: list[str], subset=None) -> float:
    idx = [i for i, e in enumerate(examples) if subset is None or subset(e)]
    return sum((labels[i] in REFUSED) == (examples[i].label in REFUSED) for i in idx) / len(idx)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--max-answer-tokens", type=int, default=160)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.manual_seed(0)
    examples = load_labels()
    texts = [e.completion for e in examples]
    start = time.perf_counter()
    head_x = features(texts)
    head_s = time.perf_counter() - start
    start = time.perf_counter()
    dec_x = decoder_features(examples, args.layer, args.max_answer_tokens)
    dec_s = time.perf_counter() - start
    lines = ["| features | all | XSTest's prompts |", "|---|---|---|"]
    for name, x in [("the shipped head's (MiniLM embeddings, cues)", head_x),
                    (f"SmolLM2-135M layer {args.layer}", dec_x),
                    ("both", torch.cat([head_x, dec_x], 1))]:
        labels = decide(cross_validate(examples, x), texts)
        lines.append(f"| {name} | {agreement(examples, labels):.3f} | "
                     f"{agreement(examples, labels, lambda e: bool(e.type)):.3f} |")
        print(lines[-1], flush=True)
    lines.append("")
    lines.append(f"Features for {len(examples)} answers: the head's {head_s:.0f} s, "
                 f"SmolLM2's {dec_s:.0f} s (one answer a pass).")
    print(lines[-1])
    if args.out:
        args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
