"""Where the demo's learning signal comes from, measured on the base policy and the shipped
prompts: what the demo's settings (deployments/demo.yaml) were chosen from.

    .venv/bin/python benchmarks/experiments/bench_demo_signal.py sample  [--out ./bench-demo-signal]
    .venv/bin/python benchmarks/experiments/bench_demo_signal.py judge   [--out ...]
    .venv/bin/python benchmarks/experiments/bench_demo_signal.py rm --pairs 24 --epochs 2 \
        --lr 1e-4 --backbone builtin:all-minilm-l6-v2
    .venv/bin/python benchmarks/experiments/bench_demo_signal.py preprompt "TEXT"
    .venv/bin/python benchmarks/experiments/bench_demo_signal.py sft --epochs 2 --lr 1e-4

- sample: the base policy (vLLM) answers all shipped prompts greedily and 8 times at each of
  T = 0.5, 0.7 and 1.0 (64 new tokens); the harmful ones also 4 times at T = 0.5 with the demo's
  safety preprompt as the system prompt.
- judge: the proxy judge scores every answer; per criterion and split, the mean greedy score
  against the judge's best of K (K = 1, 4, 8) at each temperature, the share of prompts whose
  best of K beats greedy, and on harmful prompts how often the policy refuses.
- rm: a reward model per criterion trained on pairs of those answers (T 0.7 and 1.0) of the train
  prompts, labelled by the judge as the simulated annotator does; reported: accuracy on all
  pairs of the held-out prompts' answers, and the judge's mean score of the answer the reward
  model picks among 8 (per temperature) against a random one, the judge's best and greedy.
- preprompt: the share of refusals on the harmful prompts with TEXT as the system prompt.
- sft: rejection sampling with a perfect reward model: per train prompt the judge's best of the
  candidates rejection sampling draws (8 at T 0.5; on harmful prompts 4 of them with the safety
  preprompt), the base policy fine-tuned on them (the demo's rejection_sampling settings, with
  --lr and --epochs), then its greedy answers judged against the base's on every prompt: win
  rate (ties half), mean score, refusals. The most a rejection-sampling step can give.
"""

import argparse
import json
import random
import statistics as st
import time
from pathlib import Path

SEEDED_TEMPERATURES = [(0.0, 1), (0.5, 8), (0.7, 8), (1.0, 8)]
THRESHOLDS = [0.6, 0.3, 0.1]  # the demo's annotation.strength_thresholds


def sample(out: Path) -> None:
    from flywheel import models
    from flywheel.annotation.prompts import load_prompts, messages_of, user_text
    from flywheel.policy.sampling import VLLMSampler

    rows = load_prompts()
    msgs = [messages_of(r) for r in rows]
    s = VLLMSampler(models.resolve("builtin:smollm2-135m-instruct"), seed=0)
    data = {"prompts": [{"id": r["id"], "text": user_text(r), "criterion": r["criterion"],
                         "split": r["split"]} for r in rows], "gens": {}}
    for t, n in SEEDED_TEMPERATURES:
        t0 = time.time()
        data["gens"][str(t)] = [[g.text for g in gs] for gs in s.generate(msgs, n, t, 64)]
        print(f"T={t}: {n} x {len(msgs)} answers in {time.time() - t0:.0f} s", flush=True)
    harmful = [i for i, r in enumerate(rows) if r["criterion"] == "safety"]
    pre = [[{"role": "system", "content": _demo_preprompt()}] + msgs[i] for i in harmful]
    data["pre"] = [[] for _ in rows]
    for i, gs in zip(harmful, s.generate(pre, 4, 0.5, 64)):
        data["pre"][i] = [g.text for g in gs]
    (out / "samples.json").write_text(json.dumps(data))
    s.close()


def _demo_preprompt() -> str:
    from flywheel.config import load_config

    return load_config(str(Path(__file__).parents[2] / "deployments" / "demo.yaml")) \
        .rejection_sampling.safety_preprompt


def judge(out: Path) -> None:
    from flywheel import models
    from flywheel.evaluation.proxy import ProxyJudge

    d = json.loads((out / "samples.json").read_text())
    P = d["prompts"]
    j = ProxyJudge(models.resolve("builtin:all-minilm-l6-v2"))
    scores = {}
    for t, gens in d["gens"].items():
        flat = [(i, text) for i, g in enumerate(gens) for text in g]
        js = j.judge([P[i]["text"] for i, _ in flat], [P[i]["criterion"] for i, _ in flat],
                     [text for _, text in flat])
        per = [[] for _ in P]
        for (i, _), x in zip(flat, js):
            per[i].append((x.score, x.refused))
        scores[t] = per
    if "pre" in d:
        flat = [(i, text) for i, g in enumerate(d["pre"]) for text in g]
        js = j.judge([P[i]["text"] for i, _ in flat], ["safety"] * len(flat),
                     [text for _, text in flat])
        scores["pre"] = [[] for _ in P]
        for (i, _), x in zip(flat, js):
            scores["pre"][i].append((x.score, x.refused))
    (out / "scores.json").write_text(json.dumps(scores))
    g = scores["0.0"]
    print("| prompts | greedy | T | best of 1 | best of 4 | best of 8 | prompts where best of 8 "
          "beats greedy | refusals (harmful) | prompts with a refusal among 8 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for crit in ("helpfulness", "safety"):
        for split in ("train", "heldout"):
            idx = [i for i, p in enumerate(P) if p["criterion"] == crit and p["split"] == split]
            greedy = st.fmean(g[i][0][0] for i in idx)
            for t in [k for k in scores if k not in ("0.0", "pre")]:
                s = scores[t]
                best = [st.fmean(max(x[0] for x in s[i][:k]) for i in idx) for k in (1, 4, 8)]
                beat = st.fmean(max(x[0] for x in s[i]) > g[i][0][0] for i in idx)
                ref = (f"{st.fmean(x[1] for i in idx for x in s[i]):.3f} | "
                       f"{st.fmean(any(x[1] for x in s[i]) for i in idx):.2f}"
                       if crit == "safety" else "n/a | n/a")
                print(f"| {crit} {split} (n={len(idx)}) | {greedy:.3f} | {t} | "
                      + " | ".join(f"{b:.3f}" for b in best) + f" | {beat:.2f} | {ref} |")


def reward_models(out: Path, pairs_per_prompt: int, epochs: int, lr: float,
                  backbone_name: str) -> None:
    import torch

    from flywheel import models
    from flywheel.annotation.simulated import strength_of
    from flywheel.config import RewardModelConfig
    from flywheel.reward.model import PreferencePair
    from flywheel.reward.train import train_reward_model

    torch.set_num_threads(2)
    d = json.loads((out / "samples.json").read_text())
    S = json.loads((out / "scores.json").read_text())
    P = d["prompts"]
    rng = random.Random(0)
    backbone = models.resolve(backbone_name)

    def answers(i):
        return [(t, d["gens"][t][i][k], S[t][i][k][0]) for t in ("0.7", "1.0")
                for k in range(len(d["gens"][t][i]))]

    def user(i):
        return [{"role": "user", "content": P[i]["text"]}]

    for crit in ("helpfulness", "safety"):
        train = [i for i, p in enumerate(P) if p["criterion"] == crit and p["split"] == "train"]
        test = [i for i, p in enumerate(P) if p["criterion"] == crit and p["split"] == "heldout"]
        pairs = []
        for i in train:
            rs = answers(i)
            for _ in range(pairs_per_prompt):
                a, b = rng.sample(rs, 2)
                if a[1] == b[1]:
                    continue
                ch, rj = (a, b) if a[2] >= b[2] else (b, a)
                pairs.append(PreferencePair(user(i), ch[1], rj[1],
                                            strength_of(ch[2] - rj[2], THRESHOLDS)))
        cfg = RewardModelConfig(learning_rate=lr, epochs=epochs, batch_size=8,
                                micro_batch_size=4, max_length=256, margin="small")
        t0 = time.time()
        model, info = train_reward_model(backbone, pairs, cfg, desc=crit)
        seconds = time.time() - t0
        res: dict[str, list] = {"acc": [], "greedy": []}
        for i in test:
            for t in ("0.5", "0.7", "1.0"):
                texts, js = d["gens"][t][i], [x[0] for x in S[t][i]]
                sc = model.score([user(i)] * len(texts), texts, max_length=256)
                res.setdefault("pick " + t, []).append(js[max(range(len(sc)), key=sc.__getitem__)])
                res.setdefault("random " + t, []).append(st.fmean(js))
                res.setdefault("best " + t, []).append(max(js))
                res["acc"] += [(sc[a] > sc[b]) == (js[a] > js[b]) for a in range(len(js))
                               for b in range(a + 1, len(js)) if js[a] != js[b]]
            res["greedy"].append(S["0.0"][i][0][0])
        print(f"| {crit} | {backbone_name} | {len(pairs)} | {epochs} | {lr:g} | {seconds:.0f} | "
              f"{st.fmean(res['acc']):.3f} | "
              + " | ".join(f"{st.fmean(res[k + ' ' + t]):.3f}" for t in ("0.5", "0.7", "1.0")
                           for k in ("pick", "random", "best"))
              + f" | {st.fmean(res['greedy']):.3f} |", flush=True)


def preprompt(text: str) -> None:
    from flywheel import models
    from flywheel.annotation.prompts import load_prompts, messages_of, user_text
    from flywheel.evaluation.proxy import ProxyJudge
    from flywheel.policy.sampling import VLLMSampler

    rows = [r for r in load_prompts() if r["criterion"] == "safety"]
    msgs = [[{"role": "system", "content": text}] + messages_of(r) for r in rows]
    s = VLLMSampler(models.resolve("builtin:smollm2-135m-instruct"), seed=0)
    j = ProxyJudge(models.resolve("builtin:all-minilm-l6-v2"))
    for t, n in [(0.0, 1), (0.5, 8), (1.0, 8)]:
        g = s.generate(msgs, n, t, 64)
        flat = [(i, x.text) for i, gs in enumerate(g) for x in gs]
        js = j.judge([user_text(rows[i]) for i, _ in flat], ["safety"] * len(flat),
                     [x for _, x in flat])
        per: dict[int, list[bool]] = {}
        for (i, _), x in zip(flat, js):
            per.setdefault(i, []).append(x.refused)
        print(f"T={t}: refusals {st.fmean(x.refused for x in js):.3f}, prompts with a refusal "
              f"among {n}: {st.fmean(any(v) for v in per.values()):.3f}", flush=True)
    s.close()


def sft(out: Path, epochs: int, lr: float) -> None:
    from flywheel import models
    from flywheel.config import load_config
    from flywheel.evaluation.proxy import ProxyJudge
    from flywheel.policy.finetune import finetune
    from flywheel.policy.sampling import VLLMSampler

    d = json.loads((out / "samples.json").read_text())
    S = json.loads((out / "scores.json").read_text())
    if "pre" not in S:
        raise SystemExit("samples.json has no preprompted answers: rerun the sample step")
    P = d["prompts"]

    def user(i):
        return [{"role": "user", "content": P[i]["text"]}]

    examples = []
    for i, p in enumerate(P):
        if p["split"] != "train":
            continue
        cands = list(zip(d["gens"]["0.5"][i], S["0.5"][i]))
        if p["criterion"] == "safety":  # half of K drawn with the preprompt, as the demo draws
            cands = cands[:4] + list(zip(d["pre"][i], S["pre"][i]))
        examples.append((user(i), max(cands, key=lambda c: c[1][0])[0]))
    rs = load_config(str(Path(__file__).parents[2] / "deployments" / "demo.yaml")) \
        .rejection_sampling.model_copy(update={"learning_rate": lr, "epochs": epochs})
    t0 = time.time()
    policy_dir = out / f"sft-{lr:g}-{epochs}"
    finetune(models.resolve("builtin:smollm2-135m-instruct"), examples, rs, policy_dir)
    seconds = time.time() - t0
    s = VLLMSampler(str(policy_dir), seed=0)
    greedy = [gs[0].text for gs in s.generate([user(i) for i in range(len(P))], 1, 0.0, 64)]
    s.close()
    j = ProxyJudge(models.resolve("builtin:all-minilm-l6-v2"))
    new = j.judge([p["text"] for p in P], [p["criterion"] for p in P], greedy)
    base = S["0.0"]
    for crit in ("helpfulness", "safety"):
        for split in ("train", "heldout"):
            idx = [i for i, p in enumerate(P) if p["criterion"] == crit and p["split"] == split]
            win = st.fmean(1.0 if new[i].score > base[i][0][0] else 0.5
                           if new[i].score == base[i][0][0] else 0.0 for i in idx)
            print(f"| {lr:g} | {epochs} | {len(examples)} | {seconds:.0f} | {crit} {split} "
                  f"(n={len(idx)}) | {win:.3f} | {st.fmean(new[i].score for i in idx):.3f} / "
                  f"{st.fmean(base[i][0][0] for i in idx):.3f} | "
                  f"{st.fmean(new[i].refused for i in idx):.3f} / "
                  f"{st.fmean(base[i][0][1] for i in idx):.3f} |", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("step", choices=["sample", "judge", "rm", "preprompt", "sft"])
    ap.add_argument("text", nargs="?", help="preprompt: the system prompt")
    ap.add_argument("--out", default="./bench-demo-signal")
    ap.add_argument("--pairs", type=int, default=4, help="rm: pairs per train prompt")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--backbone", default="builtin:smollm2-135m-instruct")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.step == "sample":
        sample(out)
    elif args.step == "judge":
        judge(out)
    elif args.step == "sft":
        sft(out, args.epochs, args.lr)
    elif args.step == "rm":
        reward_models(out, args.pairs, args.epochs, args.lr, args.backbone)
    else:
        if not args.text:
            ap.error("preprompt needs the system prompt text")
        preprompt(args.text)


if __name__ == "__main__":
    main()
