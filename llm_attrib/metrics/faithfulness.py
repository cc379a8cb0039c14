"""Faithfulness metrics: how the target probability moves when the top-attributed prompt tokens are removed.

p is the model's softmax probability of the target: for a causal LM the probability of target token t at
its position given the prompt and the earlier targets (teacher-forced), for a classifier the probability of
the explained class. Every metric is computed per target, from the probabilities of perturbed inputs:

- comprehensiveness@k = p - p(top-k% removed)                                   (higher is better)
- sufficiency@k       = p - p(only top-k% kept)                                 (lower is better)
- log_odds@k          = log p(top-k% replaced by a reference token) - log p     (lower is better)
- aopc_comprehensiveness, aopc_sufficiency: the per-bin values aggregated over the bins by `normalisation`,
  one of three conventions, named by what they compute:
    "bins_plus_one" (default): sum over the |B| bins divided by |B| + 1. The formula of the ERASER paper
        (DeYoung et al. 2020, Sec. 4), 1/(|B|+1) * sum_{k=0..|B|} (...), whose extra k = 0 term is the empty
        bin (nothing removed, value 0); the RPI code (rpiconf/rpi) does the same (sum of its 5 bins / 6). For
        sufficiency the empty bin would be "keep nothing", which is not 0, but the paper and RPI count it as 0,
        and so does this.
    "mean": the mean over the |B| bins. ERASER's released scorer (jayded/eraserbenchmark,
        rationale_benchmark/metrics.py, `compute_aopc_scores`: np.average over the thresholds) computes this,
        so with ERASER's 5 bins the paper's formula is 5/6 of the released scorer's value.
    "distinct": the mean over the *distinct non-empty* bins only, per candidate and target (ferret 0.4.2): a
        bin is skipped when it holds 0 tokens or as many tokens as an earlier bin (the same top-k tokens, so
        the same perturbation). If no bin remains, the value is ferret's: comprehensiveness 0, sufficiency 1.
  The name "eraser" of earlier versions is refused with a pointer to these (ERASER has two conventions).
- deletion_auc, insertion_auc: p after removing (deletion) or keeping only (insertion) the top-scored tokens,
  as a curve over the fraction x in [0, 1] of removable prompt tokens, and its trapezoid area over x
  (deletion: lower is better, insertion: higher is better). Points: every token count 0..n by default, or
  `curve_bins` percentages plus 0 and 100%.

Top-k% means ceil(k% of the removable prompt tokens) (`bin_rounding="ceil"`, default, ERASER; never empty),
or floor(k% of them) (`bin_rounding="floor"`, ferret; can be 0 tokens), ranked by descending score with ties
broken by position. Removable = prompt tokens that are not special tokens: special tokens (BOS, CLS, SEP, ...)
are never removed and never counted in k. With `only_positive=True` (ferret's default `only_pos=True`) only
tokens with a score > 0 may be removed, so a bin holds min(top-k%, #positive) tokens; #positive depends on the
scores, so on each candidate and target (n, the base of k%, stays the number of removable tokens). The
deletion/insertion curves use the same rounding and cap (their x is still the requested fraction of n).
Only the prompt is perturbed; earlier targets stay as they are. log_odds always replaces tokens (that is its
definition); the other metrics use `removal`:
    "delete" (default, as ERASER, ferret, RPI): the tokens are dropped, the sequence gets shorter;
    "replace": each removed token becomes `replacement` (default: the tokenizer's mask, else unk, else pad);
    "mask": the tokens are zeroed in the attention mask and keep their positions. In a causal LM the token at
        the read position still sees itself, so masking the last prompt token removes less than deleting it.

ferret 0.4.2's AOPC conventions, all together, are the preset `FERRET`: `faithfulness(attr, exp, **FERRET)`
(bins 10..100%, floor, only positive, "distinct"; removal "delete", ferret's default; add removal="replace"
for its `remove_tokens=False`). ferret decodes perturbed ids to text and tokenises again, so it agrees with
this id-level perturbation only where that round trip is exact (see tests/test_ferret_crosscheck.py).

Metrics follow the torchmetrics split: `update(perturbed)` returns one example's values and accumulates
them, `compute()` gives the mean over everything seen, and each metric declares `higher_is_better`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from types import MappingProxyType
from typing import ClassVar

import torch

from ..core.placement import input_device
from ..core.model_kind import is_classifier
from ..core.sequence import Sequence, padded_mask, readable_tokens, special_token_mask
from ..errors import InvalidInputError, SelectionLeakWarning, UnknownNameError
from ._perturb import (
    ERASER_BINS,
    FERRET_BINS,
    PerturbedInputs,
    bin_counts,
    check_bins,
    check_removal,
    check_rounding,
    padding_token,
    perturbed_probabilities,
    rank_tokens,
    replacement_token,
    target_probabilities,
    top_masks,
)

NORMALISATIONS = ("bins_plus_one", "mean", "distinct")
DEFAULT_NORMALISATION = "bins_plus_one"
TINY = 1e-12  # floor of probabilities under a log


@dataclass
class Perturbed:
    """Target probabilities of one example under every perturbation the requested metrics need.

    Attributes:
        p: (T,) unperturbed target probabilities.
        bins: the percentages of the `removed`, `kept` and `replaced` columns.
        removed: (R, T, K) p with the top-k% removed, or None if not needed.
        kept: (R, T, K) p with only the top-k% kept (plus special tokens).
        replaced: (R, T, K) p with the top-k% replaced by the reference token.
        curve_x: (S,) fractions of removable prompt tokens of the curve points, 0 first and 1 last.
        deletion: (R, T, S) p after removing the top fraction x; insertion: (R, T, S) p keeping only it.
        n_removable: removable prompt tokens.
        sizes: (R, T, K) tokens actually perturbed in each bin (after rounding and the `only_positive` cap);
            None means ceil(k% of n_removable) for every candidate and target.
    """

    p: torch.Tensor
    bins: tuple[float, ...]
    n_removable: int
    removed: torch.Tensor | None = None
    kept: torch.Tensor | None = None
    replaced: torch.Tensor | None = None
    curve_x: torch.Tensor | None = None
    deletion: torch.Tensor | None = None
    insertion: torch.Tensor | None = None
    sizes: torch.Tensor | None = None

    def bin_sizes(self) -> torch.Tensor:
        """(..., K) tokens in each bin, broadcastable with the (R, T, K) columns."""
        if self.sizes is not None:
            return self.sizes
        return torch.tensor(bin_counts(self.bins, self.n_removable), device=self.p.device)


class Metric:
    """Base: `values` maps one example's `Perturbed` to {key: (R, T)}; `update`/`compute` aggregate."""

    name: ClassVar[str]
    higher_is_better: ClassVar[bool]
    needs: ClassVar[frozenset[str]]

    def __init__(self) -> None:
        self.reset()

    def values(self, perturbed: Perturbed) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def reset(self) -> None:
        self._sum: dict[str, float] = {}
        self._count: dict[str, int] = {}

    def update(self, perturbed: Perturbed) -> dict[str, torch.Tensor]:
        """One example's values {key: (R, T)}, also added to the running sums (NaN values skipped)."""
        values = self.values(perturbed)
        for key, value in values.items():
            finite = value[~value.isnan()]
            self._sum[key] = self._sum.get(key, 0.0) + float(finite.double().sum())
            self._count[key] = self._count.get(key, 0) + finite.numel()
        return values

    def compute(self) -> dict[str, float]:
        """Mean of every key over all targets seen since the last reset."""
        return {k: self._sum[k] / self._count[k] if self._count[k] else math.nan for k in self._sum}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _per_bin(name: str, bins: tuple[float, ...], values: torch.Tensor) -> dict[str, torch.Tensor]:
    return {f"{name}@{b:g}": values[..., i] for i, b in enumerate(bins)}


class Comprehensiveness(Metric):
    name, higher_is_better, needs = "comprehensiveness", True, frozenset({"removed"})

    def values(self, perturbed: Perturbed) -> dict[str, torch.Tensor]:
        return _per_bin(self.name, perturbed.bins, perturbed.p[:, None] - perturbed.removed)


class Sufficiency(Metric):
    name, higher_is_better, needs = "sufficiency", False, frozenset({"kept"})

    def values(self, perturbed: Perturbed) -> dict[str, torch.Tensor]:
        return _per_bin(self.name, perturbed.bins, perturbed.p[:, None] - perturbed.kept)


class LogOdds(Metric):
    name, higher_is_better, needs = "log_odds", False, frozenset({"replaced"})

    def values(self, perturbed: Perturbed) -> dict[str, torch.Tensor]:
        log_p = perturbed.p.clamp_min(TINY).log()[:, None]
        return _per_bin(self.name, perturbed.bins, perturbed.replaced.clamp_min(TINY).log() - log_p)


def distinct_bins(sizes: torch.Tensor) -> torch.Tensor:
    """(..., K) tokens per bin -> (..., K) bool: the bin is non-empty and no earlier bin has its size."""
    k = sizes.shape[-1]
    earlier = torch.ones(k, k, dtype=torch.bool, device=sizes.device).tril(-1)  # [i, j]: j < i
    repeated = ((sizes.unsqueeze(-1) == sizes.unsqueeze(-2)) & earlier).any(-1)
    return (sizes > 0) & ~repeated


def check_normalisation(normalisation: str) -> str:
    """One of `NORMALISATIONS`; the retired name "eraser" gets a pointer to the two conventions ERASER has."""
    if normalisation == "eraser":
        raise UnknownNameError(
            "AOPC normalisation 'eraser' is ambiguous and was renamed: the ERASER paper's formula sum/(|B|+1) is "
            "'bins_plus_one' (the default), ERASER's released scorer's mean over the bins is 'mean'."
        )
    if normalisation not in NORMALISATIONS:
        raise UnknownNameError(f"unknown AOPC normalisation {normalisation!r}; choose one of {list(NORMALISATIONS)}.")
    return normalisation


def aopc(per_bin: torch.Tensor, normalisation: str, sizes: torch.Tensor | None = None, empty: float = 0.0) -> torch.Tensor:
    """(..., K) values per bin -> (...): sum / (K + 1) ("bins_plus_one"), mean ("mean"), or mean over the
    distinct non-empty bins by `sizes` (..., K) ("distinct"; `empty` where no bin remains)."""
    check_normalisation(normalisation)
    if normalisation == "bins_plus_one":
        return per_bin.sum(-1) / (per_bin.shape[-1] + 1)
    if normalisation == "mean":
        return per_bin.mean(-1)
    if sizes is None:
        raise InvalidInputError("normalisation='distinct' needs the tokens per bin (sizes).")
    used = distinct_bins(sizes).expand(per_bin.shape)
    count = used.sum(-1)
    total = torch.where(used, per_bin, torch.zeros_like(per_bin)).sum(-1)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, empty))


class _Aopc(Metric):
    def __init__(self, normalisation: str = DEFAULT_NORMALISATION) -> None:
        self.normalisation = check_normalisation(normalisation)
        super().__init__()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(normalisation={self.normalisation!r})"


class AopcComprehensiveness(_Aopc):
    name, higher_is_better, needs = "aopc_comprehensiveness", True, frozenset({"removed"})

    def values(self, perturbed: Perturbed) -> dict[str, torch.Tensor]:
        per_bin = perturbed.p[:, None] - perturbed.removed
        return {self.name: aopc(per_bin, self.normalisation, perturbed.bin_sizes(), empty=0.0)}


class AopcSufficiency(_Aopc):
    name, higher_is_better, needs = "aopc_sufficiency", False, frozenset({"kept"})

    def values(self, perturbed: Perturbed) -> dict[str, torch.Tensor]:
        per_bin = perturbed.p[:, None] - perturbed.kept
        return {self.name: aopc(per_bin, self.normalisation, perturbed.bin_sizes(), empty=1.0)}  # ferret's 1


def curve_area(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Trapezoid area of y (..., S) over x (S,) in [0, 1]."""
    return ((y[..., 1:] + y[..., :-1]) / 2 * (x[1:] - x[:-1])).sum(-1)


class DeletionAuc(Metric):
    name, higher_is_better, needs = "deletion_auc", False, frozenset({"deletion"})

    def values(self, perturbed: Perturbed) -> dict[str, torch.Tensor]:
        return {self.name: curve_area(perturbed.curve_x, perturbed.deletion)}


class InsertionAuc(Metric):
    name, higher_is_better, needs = "insertion_auc", True, frozenset({"insertion"})

    def values(self, perturbed: Perturbed) -> dict[str, torch.Tensor]:
        return {self.name: curve_area(perturbed.curve_x, perturbed.insertion)}


METRICS: dict[str, type[Metric]] = {
    m.name: m
    for m in (Comprehensiveness, Sufficiency, LogOdds, AopcComprehensiveness, AopcSufficiency, DeletionAuc, InsertionAuc)
}
DEFAULT_METRICS = ("comprehensiveness", "sufficiency", "log_odds", "aopc_comprehensiveness", "aopc_sufficiency")

FERRET = MappingProxyType(
    {"bins": FERRET_BINS, "bin_rounding": "floor", "only_positive": True, "normalisation": "distinct"}
)
"""ferret 0.4.2's AOPC conventions, for `faithfulness(attr, exp, **FERRET)` or `score_candidates(..., **FERRET)`:
thresholds 10, 20, ..., 100% of the non-special tokens rounded down, only positively scored tokens removed,
AOPC = mean over the distinct non-empty bins. Removal stays the default "delete" (ferret's `remove_tokens=True`);
pass removal="replace" as well for `remove_tokens=False` ([MASK])."""


def make_metrics(metrics, normalisation: str = DEFAULT_NORMALISATION) -> list[Metric]:
    """Names or `Metric` instances -> instances (AOPC metrics built with `normalisation`)."""
    if isinstance(metrics, (str, Metric)):
        metrics = [metrics]
    made = []
    for metric in metrics:
        if isinstance(metric, Metric):
            made.append(metric)
        elif metric in METRICS:
            cls = METRICS[metric]
            made.append(cls(normalisation) if issubclass(cls, _Aopc) else cls())
        else:
            raise UnknownNameError(f"unknown metric {metric!r}; choose from {sorted(METRICS)} or pass Metric instances.")
    if not made:
        raise InvalidInputError(f"metrics is empty; choose from {sorted(METRICS)}.")
    check_normalisation(normalisation)
    return made


def _model_and_tokenizer(attributor):
    if isinstance(attributor, tuple) and len(attributor) == 2:
        return attributor
    if hasattr(attributor, "model") and hasattr(attributor, "tokenizer"):
        return attributor.model, attributor.tokenizer
    raise InvalidInputError(f"expected an Attributor or a (model, tokenizer) pair, got {type(attributor).__name__}.")


def selection_leak(explanation, metrics, bins, removal: str) -> str | None:
    """The metric among `metrics` that the explanation's method selected its map on with this same perturbation
    (RPI records it in `extra["selected_on"]`), or None."""
    chosen = (getattr(explanation, "extra", None) or {}).get("selected_on")
    if not chosen:
        return None
    metric = str(chosen.get("metric", "")).split("@")[0]
    names = [m if isinstance(m, str) else getattr(m, "name", "") for m in metrics]
    same_bins = [float(b) for b in chosen.get("bins", ERASER_BINS)] == [float(b) for b in bins]
    same_removal = chosen.get("removal", "delete") == removal
    return chosen["metric"] if metric in names and same_bins and same_removal else None


def sequence_of(explanation, model, tokenizer) -> Sequence:
    """Rebuild the explained `Sequence` from an `Explanation` (inputs plus the last target)."""
    ids, n_prompt = list(explanation.input_ids), explanation.n_prompt_tokens
    targets = list(explanation.target_ids)
    device = input_device(model)
    classifier = is_classifier(model)
    n_inputs = len(explanation.input_ids)
    vocabulary = model.get_input_embeddings().num_embeddings
    if explanation.params.get("aggregated"):
        raise InvalidInputError(
            "this explanation was aggregated into words or spans, which are not model inputs; evaluate the token-level "
            "explanation and aggregate afterwards."
        )
    here = readable_tokens(tokenizer, ids, explanation.text, list(explanation.input_offsets)) if min(ids) >= 0 else []
    same = len(here) == n_inputs and all(
        a == b or "\ufffd" in b for a, b in zip(here, explanation.input_tokens)  # b: saved before fragments were shown as text
    )
    n_outputs = model.config.num_labels if classifier else vocabulary
    if max(ids) >= vocabulary or max(targets) >= n_outputs or not same:
        raise InvalidInputError(
            f"this explanation was made with another model or tokenizer ({explanation.model_name or 'unknown'}): its "
            "token ids do not read back as its tokens here. Evaluate it with the Attributor that explained it."
        )
    if not classifier:
        if ids[n_prompt:] != targets[:-1]:
            raise InvalidInputError(
                "the explanation's inputs after the prompt are not its earlier targets; was it made by a classifier? "
                f"Pass the model it was made with ({explanation.model_name or 'unknown'})."
            )
        ids = ids + targets[-1:]
    return Sequence(
        input_ids=torch.tensor([ids], device=device),
        n_prompt=n_prompt,
        target_ids=torch.tensor(targets, device=device),
        text=explanation.text,
        offsets=list(explanation.input_offsets) + [(len(explanation.text),) * 2] * (len(ids) - n_inputs),
        tokens=list(explanation.input_tokens) + ["?"] * (len(ids) - n_inputs),
        keep=(special_token_mask(tokenizer, ids) | padded_mask(explanation.input_markup, len(ids))).to(device),
        is_classifier=classifier,
        answer_segments=explanation.segments(),
    )


def _prompt_scores(seq: Sequence, candidates: torch.Tensor) -> torch.Tensor:
    """(R, T, N) or (R, T, P) -> (R, T, P) float on the sequence's device."""
    if not isinstance(candidates, torch.Tensor):
        candidates = torch.as_tensor(candidates)
    shape = tuple(candidates.shape)
    allowed = {seq.n_inputs, seq.n_prompt}
    if candidates.dim() != 3 or shape[1] != seq.n_outputs or shape[2] not in allowed:
        raise InvalidInputError(
            f"candidate scores must have shape (R, {seq.n_outputs}, N) with N = {seq.n_inputs} inputs or "
            f"{seq.n_prompt} prompt tokens (one row per target, or one for the whole answer), got {shape}."
        )
    scores = candidates[..., : seq.n_prompt].to(seq.input_ids.device).float()
    if torch.isnan(scores).any():
        raise InvalidInputError("the scores contain NaN; they cannot rank tokens.")
    return scores


def _curve_points(curve_bins, n: int, rounding: str = "ceil") -> tuple[torch.Tensor, list[int]]:
    if curve_bins is None:
        return torch.arange(n + 1, dtype=torch.float64) / n, list(range(n + 1))
    fractions = sorted({0.0, 100.0, *check_bins(curve_bins)})
    return torch.tensor(fractions, dtype=torch.float64) / 100, bin_counts(tuple(fractions), n, rounding)


def perturb(
    attributor,
    seq: Sequence,
    candidates: torch.Tensor,
    needs=("removed", "kept", "replaced"),
    *,
    bins=ERASER_BINS,
    removal: str = "delete",
    replacement: int | None = None,
    curve_bins=None,
    batch_size: int = 32,
    bin_rounding: str = "ceil",
    only_positive: bool = False,
) -> Perturbed:
    """Target probabilities of one example under the perturbations `needs` ranked by each candidate map.

    Args:
        attributor: an `Attributor` or a (model, tokenizer) pair.
        seq: the explained sequence (`Attributor.sequence`, or `sequence_of(explanation, model, tokenizer)`).
        candidates: (R, T, N) or (R, T, n_prompt) score maps; only prompt columns are used.
        needs: any of "removed", "kept", "replaced", "deletion", "insertion".
        bins: top-k percentages in (0, 100] (default ERASER's 1, 5, 10, 20, 50; `FERRET_BINS` is 10..100).
        removal: "delete", "replace" or "mask" (for "removed", "kept" and the curves).
        replacement: token id for "replace" and "replaced" (default mask, else unk, else pad).
        curve_bins: percentages of the deletion/insertion curve points; None: every token count.
        batch_size: distinct perturbed inputs per forward.
        bin_rounding: "ceil" (default, ERASER) or "floor" (ferret) of k% of the removable tokens.
        only_positive: only tokens scored > 0 by the candidate (for that target) may be removed, so each bin
            holds at most #positive tokens (ferret's default `only_pos=True`); default False.

    Returns:
        A `Perturbed`; all perturbed inputs of all candidates go through the model together. `sizes` gives the
        tokens in each (candidate, target, bin).
    """
    model, tokenizer = _model_and_tokenizer(attributor)
    bins, removal, bin_rounding = check_bins(bins), check_removal(removal), check_rounding(bin_rounding)
    if not isinstance(only_positive, bool):
        raise InvalidInputError(f"only_positive must be True or False, got {only_positive!r}.")
    unknown = set(needs) - {"removed", "kept", "replaced", "deletion", "insertion"}
    if unknown:
        raise UnknownNameError(f"unknown perturbations {sorted(unknown)}; use removed, kept, replaced, deletion, insertion.")
    scores = _prompt_scores(seq, candidates)  # (R, T, P)
    n_cand, n_targets, n_prompt = scores.shape
    removable = ~seq.keep[:n_prompt]  # (P,)
    n = int(removable.sum())
    if n == 0:
        raise InvalidInputError("the prompt has only special tokens, so there is nothing to remove.")
    rank = rank_tokens(scores, removable)  # (R, T, P)
    curve_x, curve_counts = _curve_points(curve_bins, n, bin_rounding)
    # A cap per (candidate, target) on the tokens any bin may hold: n, or the removable tokens scored > 0.
    cap = ((scores > 0) & removable).sum(-1) if only_positive else torch.full((n_cand, n_targets), n)

    def sizes_of(count_list: list[int]) -> torch.Tensor:
        """(R, T, K) tokens of each bin: the counts, capped."""
        counts = torch.tensor(count_list, device=scores.device)
        return torch.minimum(counts, cap.to(scores.device).unsqueeze(-1))

    sizes = sizes_of(bin_counts(bins, n, bin_rounding))
    curve_sizes = sizes_of(curve_counts)
    targets = torch.arange(n_targets, device=scores.device)
    p = target_probabilities(model, seq)  # (T,), or (1,) for the whole answer

    def rows(count_sizes: torch.Tensor, only: bool) -> tuple[PerturbedInputs, tuple[int, ...]]:
        top = top_masks(rank, count_sizes)  # (R, T, K, P)
        keep = top | ~removable if only else ~top
        index = targets.view(1, -1, 1).expand(keep.shape[:-1])
        return PerturbedInputs(index.reshape(-1), keep.reshape(-1, n_prompt)), keep.shape[:-1]

    plans = {
        "removed": (sizes, False, removal),
        "kept": (sizes, True, removal),
        "replaced": (sizes, False, "replace"),
        "deletion": (curve_sizes, False, removal),
        "insertion": (curve_sizes, True, removal),
    }
    token = replacement_token(tokenizer, replacement, model.get_input_embeddings().num_embeddings)
    pad = padding_token(tokenizer)
    result = Perturbed(p=p, bins=bins, n_removable=n, sizes=sizes)
    if "deletion" in needs or "insertion" in needs:
        result.curve_x = curve_x.to(p)
    # One call per removal mode: every row of that mode, deduplicated, in chunks of batch_size.
    for mode in dict.fromkeys(plans[name][2] for name in needs):
        names = [name for name in needs if plans[name][2] == mode]
        built = [rows(plans[name][0], plans[name][1]) for name in names]
        inputs = PerturbedInputs(
            torch.cat([b[0].target_index for b in built]), torch.cat([b[0].keep for b in built])
        )
        probs = perturbed_probabilities(model, seq, inputs, mode, token, pad, batch_size, p)
        for name, (_, shape), part in zip(names, built, probs.split([math.prod(b[1]) for b in built])):
            setattr(result, name, part.view(shape))
    return result


def score_candidates(
    attributor,
    seq: Sequence,
    candidates: torch.Tensor,
    metrics=DEFAULT_METRICS,
    *,
    bins=ERASER_BINS,
    removal: str = "delete",
    replacement: int | None = None,
    normalisation: str = DEFAULT_NORMALISATION,
    curve_bins=None,
    batch_size: int = 32,
    bin_rounding: str = "ceil",
    only_positive: bool = False,
) -> dict[str, torch.Tensor]:
    """Faithfulness of many candidate score maps of one sequence, in one batched pass (e.g. RPI's selection).

    Args:
        attributor: an `Attributor` or a (model, tokenizer) pair.
        seq: the explained `Sequence`.
        candidates: (R, T, N) or (R, T, n_prompt) candidate score maps.
        metrics: names from `METRICS` or `Metric` instances (their `update` is called, so they accumulate).
        bins, removal, replacement, curve_bins, batch_size, bin_rounding, only_positive: see `perturb`.
        normalisation: AOPC normalisation, "bins_plus_one" (sum / (bins + 1), the ERASER paper's formula), "mean"
            (ERASER's released scorer) or "distinct" (mean over the distinct non-empty bins of each candidate and
            target, ferret).
        `**FERRET` sets bins, bin_rounding, only_positive and normalisation as ferret 0.4.2.

    Returns:
        {key: (R, T)}; per-bin metrics give one key per bin, e.g. "comprehensiveness@20".

    Example:
        >>> values = score_candidates(attr, seq, torch.randn(8, seq.n_targets, seq.n_inputs), ["aopc_comprehensiveness"])
        >>> best = values["aopc_comprehensiveness"].argmax(0)  # (T,) best candidate per target
    """
    made = make_metrics(metrics, normalisation)
    needs = tuple(dict.fromkeys(need for metric in made for need in sorted(metric.needs)))
    perturbed = perturb(
        attributor, seq, candidates, needs, bins=bins, removal=removal, replacement=replacement,
        curve_bins=curve_bins, batch_size=batch_size, bin_rounding=bin_rounding, only_positive=only_positive,
    )
    values: dict[str, torch.Tensor] = {}
    for metric in made:
        values.update(metric.update(perturbed))
    return values


def faithfulness(
    attributor,
    explanation,
    metrics=DEFAULT_METRICS,
    *,
    bins=ERASER_BINS,
    removal: str = "delete",
    replacement: int | None = None,
    normalisation: str = DEFAULT_NORMALISATION,
    curve_bins=None,
    batch_size: int = 32,
    bin_rounding: str = "ceil",
    only_positive: bool = False,
) -> dict[str, torch.Tensor]:
    """Faithfulness metrics of one explanation, per target.

    Args:
        attributor: the `Attributor` that explained (or a (model, tokenizer) pair).
        explanation: an `Explanation`, or a pair (Sequence, scores (T, N)).
        metrics: names from `METRICS` (default comprehensiveness, sufficiency, log_odds and both AOPCs) or
            `Metric` instances, which accumulate over calls (`metric.compute()` gives the dataset mean).
        bins: top-k percentages in (0, 100], default ERASER's (1, 5, 10, 20, 50); `FERRET_BINS` = 10..100.
        removal: "delete" (default), "replace" or "mask".
        replacement: token id replacing removed tokens (default: mask, else unk, else pad).
        normalisation: AOPC normalisation, "bins_plus_one" (default: sum over bins / (bins + 1), the ERASER
            paper's formula), "mean" (ERASER's released scorer), or "distinct" (ferret: mean over the bins that are
            non-empty and differ in size from the earlier ones; 0 comprehensiveness / 1 sufficiency if none).
        curve_bins: percentages of the deletion/insertion curve points (default every token count).
        batch_size: perturbed inputs per forward.
        bin_rounding: "ceil" (default, ERASER: a bin is never empty) or "floor" (ferret) of k% of the tokens.
        only_positive: only tokens with a score > 0 may be removed, at most #positive per bin (ferret's
            default); default False (every removable token is ranked).
        `**FERRET` sets bins, bin_rounding, only_positive and normalisation as ferret 0.4.2 does.

    Returns:
        {key: (T,)}, e.g. "comprehensiveness@20", "aopc_sufficiency".

    Example:
        >>> exp = attr.explain("k1 = v3 v8 , k2 = v5 v1 . k2 =>", max_new_tokens=2)
        >>> faithfulness(attr, exp)["aopc_comprehensiveness"]  # tensor of shape (2,)
        >>> faithfulness(attr, exp, **FERRET)["aopc_sufficiency"]  # ferret 0.4.2's conventions
    """
    model, tokenizer = _model_and_tokenizer(attributor)
    if isinstance(explanation, tuple) and len(explanation) == 2:
        seq, scores = explanation
    elif hasattr(explanation, "scores") and hasattr(explanation, "input_ids"):
        seq, scores = sequence_of(explanation, model, tokenizer), explanation.scores
    else:
        raise InvalidInputError(f"expected an Explanation or a (Sequence, scores) pair, got {type(explanation).__name__}.")
    scores = torch.as_tensor(scores)
    if scores.dim() != 2:
        raise InvalidInputError(f"scores must have shape (T, N) = ({seq.n_outputs}, {seq.n_inputs}), got {tuple(scores.shape)}.")
    leaked = selection_leak(explanation, metrics, bins, removal)
    if leaked:
        warnings.warn(
            f"{getattr(explanation, 'method', 'this method')} chose its map by {leaked} with this same perturbation "
            f"(removal={removal!r}, bins={list(bins)}), so the value is the best of its candidates on this very example, "
            "not an honest measurement; evaluate with another perturbation or bins, or select on other data.",
            SelectionLeakWarning,
            stacklevel=2,
        )
    values = score_candidates(
        (model, tokenizer), seq, scores[None], metrics, bins=bins, removal=removal, replacement=replacement,
        normalisation=normalisation, curve_bins=curve_bins, batch_size=batch_size, bin_rounding=bin_rounding,
        only_positive=only_positive,
    )
    return {key: value[0] for key, value in values.items()}
