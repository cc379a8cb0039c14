"""A matplotlib heatmap of an explanation (works with the Agg backend; never opens a window)."""

from __future__ import annotations

from typing import TYPE_CHECKING


from ._colors import normalise_rows, visible

if TYPE_CHECKING:
    from ..explanation import Explanation


def plot_heatmap(exp: "Explanation", ax=None, max_inputs: int = 80, normalize: bool = True):
    """Heatmap of targets (rows) x input tokens (columns) with a diverging colormap centred at 0.

    Args:
        exp: the explanation to plot.
        ax: a matplotlib Axes to draw into (default: a new figure sized to the matrix).
        max_inputs: at most this many columns; when there are more, the columns with the largest
            |score| are kept, in their original order, and the title says so.
        normalize: divide each row by its max |score| (rows become comparable); else raw scores.

    Returns:
        The matplotlib Figure.
    """
    from matplotlib.figure import Figure  # a Figure without pyplot: no backend, no window

    scores = normalise_rows(exp.scores) if normalize else exp.scores.detach().float().cpu().nan_to_num(0.0)
    n_targets, n_inputs = scores.shape
    columns = list(range(n_inputs))
    if n_inputs > max_inputs:
        strength = scores.abs().amax(dim=0)  # (N,)
        columns = sorted(strength.topk(max_inputs).indices.tolist())
    shown = scores[:, columns]  # (T, K)
    if ax is None:
        fig = Figure(figsize=(min(2.0 + 0.22 * len(columns), 30.0), 1.8 + 0.3 * max(n_targets, 1)), layout="constrained")
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    limit = 1.0 if normalize else max(float(shown.abs().max()) if shown.numel() else 0.0, 1e-12)
    image = ax.imshow(shown.numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(columns)))
    ax.set_xticklabels([visible(exp.input_tokens[j]) for j in columns], rotation=90, fontsize=8, family="monospace")
    ax.set_yticks(range(n_targets))
    ax.set_yticklabels([f"{visible(tok)} ({p:.2f})" for tok, p in zip(exp.target_tokens, exp.target_probs)],
                       fontsize=8, family="monospace")
    if exp.n_prompt_tokens in columns and exp.n_prompt_tokens > 0:
        ax.axvline(columns.index(exp.n_prompt_tokens) - 0.5, color="black", linewidth=1.2)
    ax.set_xlabel("input token" + (f" (top {len(columns)} of {n_inputs} by |score|)" if len(columns) < n_inputs else ""))
    ax.set_ylabel("target (probability)")
    ax.set_title(f"{exp.method} / {exp.space}" + (f" — {exp.model_name}" if exp.model_name else ""), fontsize=10)
    fig.colorbar(image, ax=ax, label="score / row max |score|" if normalize else "score", shrink=0.9)
    return fig


__all__ = ["plot_heatmap"]
