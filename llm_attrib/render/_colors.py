"""Shared colour scale and token display helpers of the renderers (pure functions, no UI library)."""

from __future__ import annotations

import math
import re
from pathlib import PurePath

import torch

# Diverging scale end points: white at 0, red for positive, blue for negative (ColorBrewer RdBu ends).
_WHITE = (255, 255, 255)
_RED = (178, 24, 43)
_BLUE = (33, 102, 172)

_VISIBLE_WHITESPACE = {" ": "\u2423", "\n": "\u21b5", "\t": "\u2192", "\r": "\u240d"}


def normalise_rows(scores: torch.Tensor) -> torch.Tensor:
    """(T, N) scores divided by each row's max |score| (rows of zeros stay zero; NaN becomes 0)."""
    scores = torch.nan_to_num(scores.detach().float().cpu(), nan=0.0, posinf=0.0, neginf=0.0)
    peak = scores.abs().amax(dim=1, keepdim=True) if scores.numel() else scores.new_ones(scores.shape[0], 1)
    return scores / peak.clamp_min(1e-12)


def score_rgb(value: float) -> tuple[int, int, int]:
    """RGB of a normalised score in [-1, 1]: white at 0, red for positive, blue for negative."""
    if not math.isfinite(value):
        value = 0.0
    value = max(-1.0, min(1.0, value))
    end = _RED if value > 0 else _BLUE
    a = abs(value)
    return tuple(round(w + (e - w) * a) for w, e in zip(_WHITE, end))


def is_dark(value: float) -> bool:
    """Whether text on `score_rgb(value)` should be white."""
    return math.isfinite(value) and abs(value) > 0.55


def visible(token: str) -> str:
    """Token text with whitespace made visible (space as ␣, newline as ↵, tab as →); empty as ∅."""
    if token == "":
        return "\u2205"
    return "".join(_VISIBLE_WHITESPACE.get(c, c) for c in token)


def fmt_score(value: float) -> str:
    return "nan" if not math.isfinite(value) else f"{value:+.3g}"


def fmt_seconds(value) -> str:
    """Seconds for display, readable from milliseconds to minutes (a tiny model's 0.08 s is not "0.0 s")."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return str(value)
    if value < 1:
        return f"{value * 1000:.0f} ms"
    return f"{value:.2f} s" if value < 10 else f"{value:.0f} s" if value < 120 else f"{value / 60:.1f} min"


def fmt_error(value: float) -> str:
    return "n/a" if not math.isfinite(value) else f"{value:.2%}"


def short_model_name(name: str) -> str:
    """A model's short name: the zoo name or the folder's last part (without the zoo cache's content hash, as in
    `smollm2-b179c9523d0e`), never a whole filesystem path."""
    name = str(name or "").rstrip("/\\")
    return re.sub(r"-[0-9a-f]{12}$", "", PurePath(name).name or name) if name else "unknown model"
