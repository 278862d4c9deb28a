"""``param_groups``: the training recipe — optimizer groups with the recommended learning rates.

Codes, scales and raw parameters live on different scales and want different step sizes under
Adam (whose step is ``lr`` in each parameter's own units): codes move on the generator's input
range (``[-1, 1]`` at generator version 2, where ``L`` is a frequency, not a range), scales are
weight norms per chunk, raw tensors (biases, normalisation, a new head) are ordinary weights.
The rates below were chosen on a validation split (``benchmarks/ablation.py``,
``docs/ablation.md``); test data never entered the choice.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from mcnc_core.compress import get_state
from mcnc_core.errors import ConfigError

__all__ = ["HORIZON_EXPONENT", "HORIZON_MAX_STEPS", "HORIZON_REF_STEPS", "RECOMMENDED_LR", "code_lr", "param_groups"]

#: ``(codes, scales, raw)`` Adam learning rates per mode, for generator version 2 codes.
#: full: mnist1d MLP at 2 %, three rounds on validation (docs/ablation.md). delta: MCNC-LoRA on
#: MiniLM-L6 (rank-16 factors, 2k-41k stored numbers, 200 steps): a code lr of 0.03 was within 0.5
#: validation points of the best at every budget, the scale ratio (1/3, 1, 3) did not matter; raw
#: is the new head's rate every method used there (not tuned) (docs/benchmarks.md, MCNC-LoRA).
RECOMMENDED_LR: dict[str, tuple[float, float, float]] = {
    "full": (0.05, 0.05, 0.025),
    "delta": (0.03, 0.03, 0.002),
}


#: The horizon rule (``param_groups(total_steps=T)``): the code lr is ``RECOMMENDED_LR[mode][0] *
#: (clip(T, HORIZON_REF_STEPS, HORIZON_MAX_STEPS) / HORIZON_REF_STEPS) ** -HORIZON_EXPONENT[mode]``.
#: Chosen on validation (``benchmarks/horizon.py``, docs/ablation.md "The horizon"): the best code
#: lr per horizon (800 / 3,000 / 12,000 steps) on two tasks per mode, fitted with one slope per
#: mode and one intercept per task. Full mode: p = 0.24, rounded to 0.2 (one tuning seed on 600
#: validation samples supports no more digits): 0.05 at 800 steps, 0.038 at 3,000, 0.029 at
#: 12,000. Delta mode: p = -0.01, so 0 (the level of the optimum depends on the task, not the
#: horizon). Outside 800-12,000 steps, where nothing was measured, the end-point rate applies.
HORIZON_REF_STEPS = 800
HORIZON_MAX_STEPS = 12_000
HORIZON_EXPONENT: dict[str, float] = {"full": 0.2, "delta": 0.0}


def code_lr(mode: str, total_steps: int | None = None) -> float:
    """The recommended code learning rate for ``mode`` and a planned number of optimizer steps.

    ``total_steps=None`` is ``RECOMMENDED_LR[mode][0]`` exactly. Horizons shorter than
    ``HORIZON_REF_STEPS`` get the reference rate and longer than ``HORIZON_MAX_STEPS`` that
    horizon's rate (the rule was measured between the two only).

    Raises:
        ConfigError: ``mode`` is not ``"full"``/``"delta"``, or ``total_steps`` is not a positive int.
    """
    if mode not in RECOMMENDED_LR:
        raise ConfigError(f"mode must be one of {sorted(RECOMMENDED_LR)}, got {mode!r}")
    base = RECOMMENDED_LR[mode][0]
    if total_steps is None:
        return base
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ConfigError(f"total_steps must be a positive int (the planned optimizer steps), got {total_steps!r}")
    ratio = min(max(total_steps, HORIZON_REF_STEPS), HORIZON_MAX_STEPS) / HORIZON_REF_STEPS
    return base * ratio ** -HORIZON_EXPONENT[mode]


def _rate(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        raise ConfigError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def param_groups(
    model: nn.Module,
    lr: float | None = None,
    *,
    total_steps: int | None = None,
    scale_lr: float | None = None,
    raw_lr: float | None = None,
) -> list[dict[str, Any]]:
    """Optimizer parameter groups for a compressed model: ``torch.optim.Adam(param_groups(model))``.

    Three groups (empty ones are left out), each a dict with ``params``, ``lr`` and ``name``:
    ``"mcnc.codes"`` (every ``alpha``), ``"mcnc.scales"`` (every ``beta``) and ``"raw"`` (every
    other parameter that requires grad: biases, normalisation, delta mode's ``trainable``).
    Frozen parameters are never included.

    Args:
        model: a model after ``mcnc_core.compress``.
        lr: the code learning rate; ``None`` takes ``code_lr(mode, total_steps)``: the rate
            recommended for the model's mode and horizon. The scale and raw rates keep their
            recommended ratio to the code rate (one knob to tune).
        total_steps: the planned number of optimizer steps (the horizon of the schedule): in full
            mode longer runs get a lower code rate (``code_lr``: 0.05 at 800 steps, 0.038 at 3,000,
            0.029 at 12,000), in delta mode the rate does not move. ``None`` keeps
            ``RECOMMENDED_LR`` exactly. Validated even when ``lr`` is given, which wins.
        scale_lr: overrides the scales' rate.
        raw_lr: overrides the raw parameters' rate.

    Returns:
        A list of param-group dicts for any ``torch.optim`` optimizer.

    Raises:
        ModelError: the model is not compressed.
        ConfigError: a rate is not a positive finite number, or ``total_steps`` is not a positive int.
    """
    state = get_state(model)
    codes0, scales0, raw0 = RECOMMENDED_LR[state.config.mode]
    horizon_rate = code_lr(state.config.mode, total_steps)  # validates total_steps
    code_rate = horizon_rate if lr is None else _rate("lr", lr)
    factor = code_rate / codes0
    scale_rate = scales0 * factor if scale_lr is None else _rate("scale_lr", scale_lr)
    raw_rate = raw0 * factor if raw_lr is None else _rate("raw_lr", raw_lr)
    codes = [mw.alpha for mw in state.targets.values() if mw.alpha.requires_grad]
    scales = [mw.beta for mw in state.targets.values() if mw.beta.requires_grad]
    taken = {id(p) for p in (*codes, *scales)}
    raw = [p for p in model.parameters() if p.requires_grad and id(p) not in taken]
    groups = [("mcnc.codes", codes, code_rate), ("mcnc.scales", scales, scale_rate), ("raw", raw, raw_rate)]
    return [{"params": ps, "lr": rate, "name": name} for name, ps, rate in groups if ps]
