"""Renderers: self-contained, escaped HTML; terminal text; matplotlib figure; dataframe and JSON round trip."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import matplotlib

matplotlib.use("Agg")

import pytest
import torch
from matplotlib.figure import Figure

from llm_attrib import Explanation, InvalidInputError
from llm_attrib.render import explanation_text, plot_heatmap, render_html

PROMPT_TOKENS = ["<s>", "the", " <script>", " cat", "&", "\n", " sat"]
TARGET_TOKENS = [" on", " mat", "!"]


def make_explanation(n_prompt_tokens: int = len(PROMPT_TOKENS)) -> Explanation:
    """A causal-LM explanation built by hand: 7 prompt tokens, 3 targets (the first 2 are also inputs)."""
    prompt_tokens = PROMPT_TOKENS[:n_prompt_tokens]
    text, offsets = "", []
    for tok in prompt_tokens:
        if tok == "<s>":
            offsets.append((0, 0))
            continue
        offsets.append((len(text), len(text) + len(tok)))
        text += tok
    answer_offsets = []
    for tok in TARGET_TOKENS:
        answer_offsets.append((len(text), len(text) + len(tok)))
        text += tok
    n_inputs = n_prompt_tokens + len(TARGET_TOKENS) - 1
    torch.manual_seed(0)
    scores = torch.randn(len(TARGET_TOKENS), n_inputs)
    for t in range(len(TARGET_TOKENS)):
        scores[t, n_prompt_tokens + t:] = 0.0
    return Explanation(
        scores=scores,
        input_tokens=prompt_tokens + TARGET_TOKENS[:-1],
        input_offsets=offsets + answer_offsets[:-1],
        input_ids=list(range(n_inputs)),
        target_tokens=list(TARGET_TOKENS),
        target_ids=[100, 101, 102],
        target_probs=[0.5, 0.25, 0.125],
        completeness_error=torch.tensor([0.01, float("nan"), 0.2]),
        text=text,
        n_prompt_tokens=n_prompt_tokens,
        method="ig",
        space="embeddings",
        params={"n_steps": 32, "baseline": "pad"},
        model_name="hand-made",
        library_version="0.1.0",
    )


@pytest.fixture
def exp() -> Explanation:
    return make_explanation()


def test_html_is_self_contained(exp):
    page = render_html(exp)
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, flags=re.I)
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page.lower()
    assert "@import" not in page


def test_html_escapes_tokens(exp):
    page = render_html(exp, title="a <b> title")
    # the only <script> elements are the page's own two (data and code)
    assert len(re.findall(r"<script\b", page)) == 2
    assert "&lt;script&gt;" in page
    assert "a &lt;b&gt; title" in page
    data = re.search(r'<script type="application/json" id="llm-attrib-data">(.*?)</script>', page, re.S).group(1)
    assert "<" not in data and ">" not in data


def test_html_shows_every_token_target_and_provenance(exp):
    page = render_html(exp)
    for tok in ["the", "cat", "sat", "&amp;"]:
        assert tok in page
    for tok in ["on", "mat", "!"]:
        assert f"{tok}<small>" in page
    assert '<span class="ws">␣</span>on' in page  # whitespace shown visibly
    assert "↵" in page  # the newline token
    assert page.count('<th class="col') == len(exp.input_tokens)
    assert page.count('<tr data-t=') == len(exp.target_tokens)
    for text in ["ig", "embeddings", "hand-made", "n_steps=32", "0.500", "1.00%", "n/a"]:
        assert text in page


def test_html_rejects_bad_target(exp):
    with pytest.raises(InvalidInputError):
        render_html(exp, target=3)
    assert 'id="llm-attrib-data"' in exp.to_html(target=2)


def test_terminal_text_contains_tokens(exp):
    text = explanation_text(exp)
    for tok in ["the", "<script>", "cat", "sat", "on", "mat", "!"]:
        assert tok in text
    assert "p=0.500" in text and "n/a" in text
    one = explanation_text(exp, target=1)
    assert "target 1" in one and "target 0" not in one
    costed = dataclasses.replace(exp, cost={"n_forward": 6, "n_backward": 8, "n_forward_all": 11, "seconds": 0.2})
    assert "6 forward, 8 backward sequence passes (11 forwards in all), 200 ms" in explanation_text(costed, width=200)
    from llm_attrib.render._colors import fmt_seconds

    assert [fmt_seconds(s) for s in (0.044, 3.21, 42.4, 300)] == ["44 ms", "3.21 s", "42 s", "5.0 min"]


def test_terminal_prints_to_given_console(exp):
    from rich.console import Console

    console = Console(record=True, width=100)
    exp.print(console=console, top_k=2)
    assert "summary" in console.export_text()


def test_plot_returns_figure_with_one_tick_per_input(exp):
    fig = plot_heatmap(exp)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert len(ax.get_xticks()) == len(exp.input_tokens)
    assert len(ax.get_yticks()) == len(exp.target_tokens)
    assert len(fig.axes) == 2  # the heatmap and its colourbar
    low, high = ax.images[0].get_clim()
    assert low == -high


def test_plot_caps_columns(exp):
    fig = exp.plot(max_inputs=4)
    assert len(fig.axes[0].get_xticks()) == 4


def test_dataframe_shape(exp):
    frame = exp.to_dataframe()
    assert frame.shape[0] == len(exp.target_tokens) * len(exp.input_tokens)
    assert {"target_token", "input_token", "score"} <= set(frame.columns)


def test_json_round_trip(exp, tmp_path):
    path = tmp_path / "exp.json"
    exp.save(path)
    back = Explanation.load(path)
    assert torch.equal(back.scores, exp.scores)
    assert back.input_tokens == exp.input_tokens
    assert back.target_tokens == exp.target_tokens
    assert back.input_offsets == exp.input_offsets
    assert back.params == exp.params
    assert math.isnan(float(back.completeness_error[1]))
    assert torch.equal(back.completeness_error[[0, 2]], exp.completeness_error[[0, 2]])
    assert render_html(back) == render_html(exp)


def test_wide_explanation_renders():
    torch.manual_seed(1)
    n_prompt, n_targets = 100, 16
    tokens = [f" w{i}" for i in range(n_prompt + n_targets)]
    text = "".join(tokens)
    offsets, pos = [], 0
    for tok in tokens:
        offsets.append((pos, pos + len(tok)))
        pos += len(tok)
    exp = Explanation(
        scores=torch.randn(n_targets, n_prompt + n_targets - 1), input_tokens=tokens[:-1],
        input_offsets=offsets[:-1], input_ids=list(range(len(tokens) - 1)), target_tokens=tokens[n_prompt:],
        target_ids=list(range(n_targets)), target_probs=[0.5] * n_targets,
        completeness_error=torch.zeros(n_targets), text=text, n_prompt_tokens=n_prompt, method="ig",
        space="embeddings",
    )
    page = render_html(exp)
    assert page.count('<td class="cell') == n_targets * len(exp.input_tokens)
    assert len(explanation_text(exp, target=15)) > 0
    assert len(plot_heatmap(exp).axes[0].get_xticks()) == 80


def test_html_shows_head_scores_when_kept(exp):
    assert 'id="sel-heads"' not in render_html(exp)
    exp.head_scores = torch.randn(len(exp.target_tokens), 2, 3, len(exp.input_tokens))
    page = render_html(exp)
    assert 'id="sel-heads"' in page
    data = json.loads(re.search(r'id="llm-attrib-data">(.*?)</script>', page, re.S).group(1))
    assert len(data["heads"]) == 3 and len(data["heads"][0]) == 2 and len(data["heads"][0][0]) == 3


def test_classifier_explanation_has_no_hidden_cells():
    text = "the film was great"
    tokens = ["[CLS]", "the", " film", " was", " great", "[SEP]"]
    offsets = [(0, 0), (0, 3), (3, 8), (8, 12), (12, 18), (0, 0)]
    exp = Explanation(
        scores=torch.tensor([[0.0, 0.1, 0.2, -0.1, 0.9, 0.0]]), input_tokens=tokens, input_offsets=offsets,
        input_ids=list(range(6)), target_tokens=["positive"], target_ids=[1], target_probs=[0.97],
        completeness_error=torch.tensor([0.003]), text=text, n_prompt_tokens=6, method="ig", space="embeddings",
    )
    page = render_html(exp)
    assert "cell na" not in page and '"lm": false' in page
    assert "positive" in explanation_text(exp)


def test_cost_fields_are_text_not_markup(exp, tmp_path):
    """Stored XSS probe: a cost field holding markup is shown as text (the page once wrote it unescaped)."""
    probe = "<img src=x onerror=alert(1)>"
    page = render_html(dataclasses.replace(exp, cost={"n_forward": probe, "n_backward": 2, "seconds": 0.5}))
    assert probe not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert len(re.findall(r"<script\b", page)) == 2 and "<img" not in page
    path = tmp_path / "crafted.json"
    data = exp.to_dict()
    data["cost"] = {"n_forward": probe}
    path.write_text(json.dumps(data))
    with pytest.raises(InvalidInputError, match="cost"):  # and a crafted file is refused on load
        Explanation.load(path)


def test_script_json_cannot_end_its_element():
    from llm_attrib.render.templating import script_json

    data = {"text": "</script><!-- & \u2028\u2029 'x' \"y\""}
    text = str(script_json(data))
    assert not set("<>&\u2028\u2029") & set(text)
    assert json.loads(text) == data


def test_notes_are_shown(exp):
    page = render_html(dataclasses.replace(exp, notes=["40% of the prompt's tokens are <unk>"]))
    assert "40% of the prompt&#39;s tokens are &lt;unk&gt;" in page


def test_repr_is_a_short_summary(exp):
    text = repr(exp)
    assert "tensor(" not in text and len(text) < 400 and text.count("\n") <= 3
    assert text.startswith("Explanation: ig over embeddings of hand-made, 3 targets x 9 inputs (7 prompt)")
    assert "'&' +0.849" in text  # the first target's top token
    assert "<iframe" in exp._repr_html_()


def test_renderers_do_not_import_the_results_back():
    """Imports run one way: a result hands itself to a renderer, which imports the result's module only for
    type hints (under TYPE_CHECKING), so render <-> explanation is no circle."""
    import ast
    from pathlib import Path

    import llm_attrib.render as render

    def runtime_imports(tree):
        for node in ast.iter_child_nodes(tree):
            if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
                continue
            if isinstance(node, ast.ImportFrom):
                yield "." * node.level + (node.module or "")
            yield from runtime_imports(node)

    for path in Path(render.__file__).parent.glob("*.py"):
        imported = list(runtime_imports(ast.parse(path.read_text())))
        assert not [m for m in imported if m.startswith("..explanation") or m.startswith("..rag")], path.name
