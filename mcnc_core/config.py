"""``MCNCConfig``: the one typed, validated, versioned configuration of compression."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

from mcnc_core.errors import ConfigError
from mcnc_core.generator import INIT_RULES, GeneratorSpec

__all__ = ["CONFIG_FORMAT_VERSION", "TASK_TYPES", "MCNCConfig", "infer_task_type"]

CONFIG_FORMAT_VERSION = 1
Mode = Literal["full", "delta"]
#: PEFT's ``TaskType`` values (``peft/utils/peft_types.py``): what ``AutoPeftModelFor*`` reads.
TASK_TYPES = ("CAUSAL_LM", "SEQ_2_SEQ_LM", "SEQ_CLS", "TOKEN_CLS", "QUESTION_ANS", "FEATURE_EXTRACTION")
# transformers' head classes by name suffix (``LlamaForCausalLM``, ``GPT2LMHeadModel``, ...), longest first.
_TASK_BY_SUFFIX = (
    ("ForConditionalGeneration", "SEQ_2_SEQ_LM"),
    ("ForSequenceClassification", "SEQ_CLS"),
    ("ForTokenClassification", "TOKEN_CLS"),
    ("ForQuestionAnswering", "QUESTION_ANS"),
    ("ForSeq2SeqLM", "SEQ_2_SEQ_LM"),
    ("ForCausalLM", "CAUSAL_LM"),
    ("LMHeadModel", "CAUSAL_LM"),
)


def infer_task_type(model: object) -> str | None:
    """The PEFT task type of a model, from its class name (transformers' naming), or None.

    ``*ForCausalLM`` and ``*LMHeadModel`` are ``CAUSAL_LM``; ``*ForSequenceClassification``
    ``SEQ_CLS``; ``*ForTokenClassification`` ``TOKEN_CLS``; ``*ForQuestionAnswering``
    ``QUESTION_ANS``; ``*ForSeq2SeqLM`` and ``*ForConditionalGeneration`` ``SEQ_2_SEQ_LM``.
    Anything else (a plain ``nn.Module``, a bare ``LlamaModel``) has none.
    """
    name = type(model).__name__
    return next((task for suffix, task in _TASK_BY_SUFFIX if name.endswith(suffix)), None)


def _as_patterns(name: str, value: Any) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = (value,)
    try:
        patterns = tuple(value)
    except TypeError:
        raise ConfigError(f"{name} must be a sequence of glob patterns, got {value!r}") from None
    for p in patterns:
        if not isinstance(p, str) or not p:
            raise ConfigError(f"{name} must contain non-empty strings, got {p!r}")
    return patterns


@dataclass(frozen=True)
class MCNCConfig:
    """How ``compress`` puts a model's weights on the MCNC manifold.

    Every chunk of ``chunk_size`` weights of a targeted tensor is ``beta * phi(alpha)``,
    ``phi`` being a frozen sine MLP ``k -> width (x depth) -> chunk_size`` built from ``seed``.
    Stored numbers per chunk: ``k + 1``; the ideal ratio is ``chunk_size / (k + 1)``.

    The defaults come from the ablation in ``docs/ablation.md`` (mnist1d MLP, chosen on a
    validation split): k=8, chunk_size=1024, width=64, depth=2, generator version 2 with
    bound (omega_0) 30 — about 114x on the targeted weights. Train with
    ``torch.optim.Adam(mcnc_core.param_groups(model))``.

    Attributes:
        mode: ``"full"``: targeted weights *are* ``beta * phi(alpha)`` (training from scratch).
            ``"delta"``: ``W = W_base + delta``, the delta on the manifold, base frozen
            (fine-tuning; the bundle references the base by digest).
        k: code dimension (generator input), ``1 <= k <= 1024``.
        chunk_size: ``d``, the generator's output size, ``2 <= d <= 2**20``.
        width: hidden width of the generator, ``1 <= width <= 8192``.
        depth: number of sine layers of the generator, ``1 <= depth <= 8``.
        bound: ``L``. Generator version 2: the frequency of the generator's first layer
            (SIREN's ``omega_0``; ``W_1 ~ U(-L/k, L/k)``) while codes start in
            ``[-alpha_init, alpha_init]``, so ``L`` and the learning rate are independent knobs.
            Version 1: only the initial code range ``[-alpha_init*L, alpha_init*L]`` (the
            generator does not depend on ``L``).
        seed: generator seed, ``0 <= seed < 2**64``.
        generator_version: ``2`` (default) or ``1`` (the original rule, kept readable and
            bit-identical forever). ``from_dict`` reads a dict without this key as version 1:
            every config written before version 2 existed.
        init_seed: seed of the initial codes, drawn from ``mcnc_core.prng`` (the same on every
            machine and CPU dispatch level), one stream per compressed tensor.
        rank: ``0`` compresses each weight directly (the paper's "w/o LoRA"); ``r > 0``
            factors every targeted tensor as ``A @ B`` (``A: rows x r``, ``B: r x cols`` with
            ``rows = shape[0]`` and ``cols`` the product of the other dims: conv kernels and
            embeddings on their 2-D view) and puts the factors on the manifold (the paper's
            "w/ LoRA"). Any ``r >= 1`` is honoured, including over-complete factors
            (``r >= min(rows, cols)``, as the paper uses on narrow layers); a 1-D target with
            ``r > 0`` is a ``ConfigError`` from ``compress`` (exclude it or use ``rank=0``).
        targets: glob patterns over parameter names (``"encoder.*.weight"``) selecting what is
            compressed; ``None`` selects the ``weight`` of every Linear, Conv1d/2d/3d and
            Embedding module.
        exclude: glob patterns removed from the targets.
        trainable: delta mode only — glob patterns over the *other* parameters that stay
            trainable and travel raw in the bundle (a new classifier head, say). Everything else
            is frozen and read from the base. Full mode trains and ships every non-target
            parameter raw.
        min_numel: targeted tensors with fewer elements stay raw (they would not compress);
            ``None`` means ``chunk_size``.
        alpha_init: ``alpha`` starts uniform in ``[-alpha_init, alpha_init]`` (version 2) or
            ``[-alpha_init * L, alpha_init * L]`` (version 1).
        beta_init: full mode: ``"kaiming"`` sets each chunk's ``beta`` to the expected norm of
            a default-initialised chunk of that layer; delta mode always starts at ``beta = 0``
            (the fine-tune starts exactly at the base) for the last factor.
        base_name: delta mode: a human name for the base, recorded in the bundle.
        task_type: the model's PEFT task type (one of ``TASK_TYPES``), written to an exported
            adapter's ``adapter_config.json`` (``AutoPeftModelFor*`` needs it). ``None``:
            ``compress`` infers it from the model's class (``infer_task_type``); it stays ``None``
            for models that are not transformers heads. Omitted from ``to_dict`` when ``None``, so
            configs without it keep their bytes.
        format_version: version of this config's schema (``CONFIG_FORMAT_VERSION``).

    Raises:
        ConfigError: on any out-of-range or inconsistent value, naming it.
    """

    mode: Mode = "full"
    k: int = 8
    chunk_size: int = 1024
    width: int = 64
    depth: int = 2
    bound: float = 30.0
    seed: int = 0
    generator_version: int = 2
    init_seed: int = 0
    rank: int = 0
    targets: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    trainable: tuple[str, ...] = ()
    min_numel: int | None = None
    alpha_init: float = 1.0
    beta_init: Literal["kaiming"] = "kaiming"
    base_name: str | None = None
    format_version: int = field(default=CONFIG_FORMAT_VERSION)
    task_type: str | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("full", "delta"):
            raise ConfigError(f"mode must be 'full' or 'delta', got {self.mode!r}")
        if self.format_version != CONFIG_FORMAT_VERSION:
            raise ConfigError(
                f"format_version {self.format_version!r} is not supported (this library writes {CONFIG_FORMAT_VERSION})"
            )
        if type(self.generator_version) is not int or self.generator_version not in INIT_RULES:
            raise ConfigError(f"generator_version must be one of {sorted(INIT_RULES)}, got {self.generator_version!r}")
        if type(self.init_seed) is not int or not 0 <= self.init_seed < 2**64:
            raise ConfigError(f"init_seed must be an int in [0, 2**64), got {self.init_seed!r}")
        # The generator spec validates k, chunk_size, width, depth, bound and seed.
        self.generator_spec()
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or not 0 <= self.rank <= 4096:
            raise ConfigError(f"rank must be an int in [0, 4096], got {self.rank!r}")
        object.__setattr__(self, "targets", _as_patterns("targets", self.targets))
        object.__setattr__(self, "exclude", _as_patterns("exclude", self.exclude) or ())
        object.__setattr__(self, "trainable", _as_patterns("trainable", self.trainable) or ())
        if self.min_numel is not None and (not isinstance(self.min_numel, int) or self.min_numel < 1):
            raise ConfigError(f"min_numel must be a positive int or None, got {self.min_numel!r}")
        if not (isinstance(self.alpha_init, (int, float)) and 0 < self.alpha_init <= 1e3):
            raise ConfigError(f"alpha_init must be in (0, 1000], got {self.alpha_init!r}")
        if self.beta_init != "kaiming":
            raise ConfigError(f"beta_init must be 'kaiming', got {self.beta_init!r}")
        if self.base_name is not None and not isinstance(self.base_name, str):
            raise ConfigError(f"base_name must be a string, got {self.base_name!r}")
        if self.task_type is not None and self.task_type not in TASK_TYPES:
            raise ConfigError(f"task_type must be None or one of {list(TASK_TYPES)}, got {self.task_type!r}")

    def generator_spec(self) -> GeneratorSpec:
        """The frozen generator this config describes (validated)."""
        return GeneratorSpec(
            k=self.k,
            chunk_size=self.chunk_size,
            width=self.width,
            depth=self.depth,
            bound=float(self.bound) if isinstance(self.bound, (int, float)) else self.bound,
            seed=self.seed,
            version=self.generator_version,
            init=INIT_RULES[self.generator_version],
        )

    @property
    def effective_min_numel(self) -> int:
        """``min_numel`` with its default (``chunk_size``) applied."""
        return self.chunk_size if self.min_numel is None else self.min_numel

    @property
    def ideal_ratio(self) -> float:
        """``chunk_size / (k + 1)``: the ratio on targeted weights, ignoring padding and raw tensors."""
        return self.chunk_size / (self.k + 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists); ``from_dict(to_dict())`` round-trips."""
        out = dataclasses.asdict(self)
        for key in ("targets", "exclude", "trainable"):
            if out[key] is not None:
                out[key] = list(out[key])
        if out["generator_version"] == 1:
            # A version-1 config is written exactly as before version 2 existed (the key's absence
            # means 1), so re-serialising an old bundle gives its original bytes.
            del out["generator_version"]
            if out["init_seed"] == 0:
                del out["init_seed"]
        if out["task_type"] is None:  # configs written before task_type existed keep their bytes
            del out["task_type"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MCNCConfig:
        """Build from a dict; unknown keys are ignored with a warning (forward compatibility).

        A dict without ``generator_version`` is a config written before version 2 existed and
        is read as version 1 (so every stored config keeps meaning what it meant).

        Raises:
            ConfigError: if ``data`` is not a dict or a value is invalid.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            warnings.warn(f"ignoring unknown MCNCConfig keys: {unknown}", stacklevel=2)
        kwargs = {"generator_version": 1, **{k: v for k, v in data.items() if k in known}}
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"invalid config: {exc}") from exc
