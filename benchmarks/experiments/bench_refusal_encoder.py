"""Would fine-tuning the encoder beat the refusal head? The packaged all-MiniLM-L6-v2 fine-tuned
whole as a cross-encoder on (prompt, answer), against the shipped recipe (a logistic-regression
head on the frozen encoder's embeddings and the refusal cues), both under the same 5-fold
cross-validation grouped by prompt on flywheel/data/refusal_labels.jsonl, both followed by the
same two rules (`refusal.decide`).

    .venv/bin/python benchmarks/experiments/bench_refusal_encoder.py [--folds 0,1,2,3,4] \
        [--epochs 3] [--lr 5e-5] [--max-length 192] [--lora 0] [--out FILE]

The encoder: mean-pooled last hidden states into a 3-class linear layer, AdamW (weight decay
0.01), one-cycle schedule (10 % warm-up, linear decay), batches of 16, bfloat16 autocast, the
classes weighted as the head's are (`refusal_train.class_weights`). With `--lora R`, rank-R
adapters on the attention's query and value and on both feed-forward layers are the only
encoder weights trained, with the 3-class layer.
Prints refuse-vs-comply agreement with people per fold, per answer source and on XSTest's
prompts; writes the table to --out (default: print only).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from pathlib import Path

import torch

from flywheel.evaluation.refusal import LABELS, decide, embedder_path, features
from flywheel.evaluation.refusal_train import class_weights, fit, folds, load_labels

BATCH = 16


class Adapter(torch.nn.Module):
    """y = W x + (B A x) * 16 / r, with W frozen and B starting at zero."""

    def __init__(self, base: torch.nn.Linear, rank: int):
        super().__init__()
        self.base, self.scale = base, 16 / rank
        self.a = torch.nn.Parameter(torch.randn(rank, base.in_features) / base.in_features**0.5)
        self.b = torch.nn.Parameter(torch.zeros(base.out_features, rank))

    def forward(self, x):
        return self.base(x) + (x @ self.a.T @ self.b.T) * self.scale


class CrossEncoder(torch.nn.Module):
    def __init__(self, path: str, lora: int):
        from transformers import AutoModel

        super().__init__()
        self.encoder = AutoModel.from_pretrained(path)
        self.head = torch.nn.Linear(self.encoder.config.hidden_size, len(LABELS))
        if lora:
            for p in self.encoder.parameters():
                p.requires_grad = False
            for layer in self.encoder.encoder.layer:
                attn = layer.attention.self
                attn.query = Adapter(attn.query, lora)
                attn.value = Adapter(attn.value, lora)
                layer.intermediate.dense = Adapter(layer.intermediate.dense, lora)
                layer.output.dense = Adapter(layer.output.dense, lora)

    def forward(self, batch):
        hidden = self.encoder(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        return self.head((hidden * mask).sum(1) / mask.sum(1))


def encoder_fold(examples, train, test, args, tokenizer) -> torch.Tensor:
    """Class probabilities of the test answers from an encoder fine-tuned on the train ones."""
    def encode(idx):
        return tokenizer([examples[i].prompt for i in idx], [examples[i].completion for i in idx],
                         truncation="longest_first", max_length=args.max_length, padding=True,
                         return_tensors="pt")

    torch.manual_seed(0)
    y = torch.tensor([LABELS.index(e.label) for e in examples])
    class_weight = class_weights(y[train])
    model = CrossEncoder(embedder_path(), args.lora)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    steps = args.epochs * -(-len(train) // BATCH)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, args.lr, total_steps=steps, pct_start=0.1,
                                                anneal_strategy="linear")
    order_rng = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(args.epochs):
        order = [train[i] for i in torch.randperm(len(train), generator=order_rng).tolist()]
        for s in range(0, len(order), BATCH):
            idx = order[s : s + BATCH]
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(encode(idx))
            loss = torch.nn.functional.cross_entropy(logits.float(), y[idx], weight=class_weight)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    out = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for s in range(0, len(test), 64):
            out.append(model(encode(test[s : s + 64])).float().softmax(-1))
    return torch.cat(out)


def agreement(examples, idx, labels) -> str:
    hits = sum((labels[i] != "compliance") == (examples[i].label != "compliance") for i in idx)
    return f"{hits / len(idx):.3f}"


def main() -> None:
    from transformers import AutoTokenizer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folds", default="0,1,2,3,4")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--max-length", type=int, default=192)
    parser.add_argument("--lora", type=int, default=0)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    examples = load_labels()
    fold = folds(examples, 5, 0)
    chosen = [int(f) for f in args.folds.split(",")]
    tokenizer = AutoTokenizer.from_pretrained(embedder_path())
    x = features([e.completion for e in examples])
    texts = [e.completion for e in examples]
    head, enc = [""] * len(examples), [""] * len(examples)
    lines = []
    for f in chosen:
        train = [i for i in range(len(examples)) if fold[i] != f]
        test = [i for i in range(len(examples)) if fold[i] == f]
        start = time.time()
        probs = encoder_fold(examples, train, test, args, tokenizer)
        seconds = time.time() - start
        fitted = fit(x[train], [examples[i].label for i in train])
        for i, p, h in zip(test, probs.argmax(1).tolist(), fitted.predict(x[test])):
            enc[i], head[i] = LABELS[p], h
        line = (f"fold {f}: {len(test)} answers, "
                f"head {agreement(examples, test, decide(head, texts))}, "
                f"encoder {agreement(examples, test, decide(enc, texts))} "
                f"(fine-tuned in {seconds:.0f} s)")
        print(line, flush=True)
        lines.append(line)
    done = [i for i in range(len(examples)) if fold[i] in chosen]
    head_d, enc_d = decide(head, texts), decide(enc, texts)
    groups = defaultdict(list)
    for i in done:
        groups[examples[i].source].append(i)
        if examples[i].type:
            groups["XSTest's prompts (SmolLM2's answers)"].append(i)
    rows = ["| subset | answers | head agreement | encoder agreement |", "|---|---|---|---|",
            f"| all | {len(done)} | {agreement(examples, done, head_d)} | "
            f"{agreement(examples, done, enc_d)} |"]
    rows += [f"| {name} | {len(idx)} | {agreement(examples, idx, head_d)} | "
             f"{agreement(examples, idx, enc_d)} |" for name, idx in sorted(groups.items())]
    print("\n".join(rows))
    if args.out:
        args.out.write_text("\n".join(lines + [""] + rows) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
