"""Files for ``mcnc convert``: load a base model (transformers, local files only) and read unlabeled inputs.

Base: a directory with ``config.json`` and safetensors weights (``from_pretrained``, never the
network), or one safetensors file with ``--config config.json`` (the model is built from the config
and the file's tensors loaded into it). Inputs: a text file, one example a line, tokenized with the
base's tokenizer; or a safetensors file holding ``input_ids`` (2-D integers) and, optionally,
``attention_mask``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from mcnc_core.errors import ConfigError, ModelError

__all__ = ["load_base", "load_tokenizer", "read_inputs"]

_TASK_CLASSES = {  # adapter_config.json task_type -> transformers auto class
    "CAUSAL_LM": "AutoModelForCausalLM",
    "SEQ_CLS": "AutoModelForSequenceClassification",
    "TOKEN_CLS": "AutoModelForTokenClassification",
    "SEQ_2_SEQ_LM": "AutoModelForSeq2SeqLM",
    "QUESTION_ANS": "AutoModelForQuestionAnswering",
    "FEATURE_EXTRACTION": "AutoModel",
}


def _transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise ModelError("loading a base model needs transformers: pip install 'mcnc[peft]'") from exc
    return transformers


def _model_class(tf: Any, config: Any, task_type: str | None) -> Any:
    for arch in getattr(config, "architectures", None) or []:
        if hasattr(tf, arch):
            return getattr(tf, arch)
    return getattr(tf, _TASK_CLASSES.get(task_type or "", "AutoModel"))


def load_base(path: str | os.PathLike[str], *, config: str | None = None, task_type: str | None = None) -> nn.Module:
    """The base model, in eval mode, from local files.

    Args:
        path: a ``from_pretrained`` directory, or a safetensors file (then ``config`` is required).
        config: a transformers ``config.json`` for a safetensors file.
        task_type: the adapter's ``task_type``, used when the config names no architecture.

    Raises:
        ConfigError: a file is missing, or the weights do not fit the model (names them).
        ModelError: transformers is not installed.
    """
    tf = _transformers()
    p = Path(path)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ConfigError(f"{p}: no config.json; BASE must be a from_pretrained directory or a safetensors file")
        cfg = tf.AutoConfig.from_pretrained(str(p), local_files_only=True)
        cls = _model_class(tf, cfg, task_type)
        return cls.from_pretrained(str(p), local_files_only=True).eval()
    if not p.is_file():
        raise ConfigError(f"base {p} does not exist")
    if config is None:
        raise ConfigError(f"{p} is a weights file: pass --config with the model's config.json")
    try:
        data = json.loads(Path(config).read_text())
        cfg = tf.AutoConfig.for_model(**data)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{config}: not a transformers config.json ({exc})") from exc
    cls = _model_class(tf, cfg, task_type)
    model = cls.from_config(cfg) if cls.__name__.startswith("Auto") else cls(cfg)
    from safetensors.torch import load_file

    state = load_file(str(p))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # A tied weight (lm_head = embed_tokens) is saved once: it is missing by name but loaded.
    tied = set(dict(model.named_parameters(remove_duplicate=False))) - set(dict(model.named_parameters()))
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ConfigError(
            f"{p} does not fit {type(model).__name__}: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    return model.eval()


def load_tokenizer(path: str | os.PathLike[str] | None) -> Any:
    """The tokenizer saved in directory ``path``, or ``None`` when it has none."""
    if path is None or not Path(path).is_dir():
        return None
    if not any((Path(path) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
        return None
    tok = _transformers().AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token  # causal LMs often have none; padded positions are masked out
    return tok


def read_inputs(path: str | os.PathLike[str], tokenizer: Any, *, batch_size: int, max_length: int) -> list[Any]:
    """Batches of unlabeled inputs for ``convert_peft``: dicts with ``input_ids`` (and ``attention_mask``).

    Raises:
        ConfigError: an empty or unreadable file, no ``input_ids``, or text without a tokenizer.
    """
    if batch_size < 1 or max_length < 1:
        raise ConfigError(f"batch size and max length must be positive, got {batch_size} and {max_length}")
    p = Path(path)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            data = load_file(str(p))
        except Exception as exc:  # safetensors raises its own error types
            raise ConfigError(f"{p}: not a readable safetensors file ({exc})") from exc
        ids = data.get("input_ids")
        if ids is None or ids.dim() != 2 or ids.is_floating_point() or ids.shape[0] == 0:
            raise ConfigError(f"{p}: needs a non-empty 2-D integer tensor 'input_ids', has {sorted(data)}")
        mask = data.get("attention_mask")
        rows: list[dict[str, Tensor]] = []
        for i in range(0, ids.shape[0], batch_size):
            b = {"input_ids": ids[i : i + batch_size].long()}
            if mask is not None:
                b["attention_mask"] = mask[i : i + batch_size].long()
            rows.append(b)
        return rows
    try:
        lines = [ln for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read it as UTF-8 text ({exc})") from exc
    if not lines:
        raise ConfigError(f"{p}: no examples (one a line)")
    if tokenizer is None:
        raise ConfigError(
            f"{p} is text but the base has no tokenizer: put one in the base directory, pass --tokenizer DIR, "
            "or give a safetensors file of input_ids"
        )
    out = []
    for i in range(0, len(lines), batch_size):
        enc = tokenizer(lines[i : i + batch_size], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")  # fmt: skip
        out.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return out
