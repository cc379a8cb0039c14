"""Renderers of an `Explanation`: a self-contained HTML page, rich terminal output, a matplotlib heatmap."""

from .html import render_html
from .plot import plot_heatmap
from .terminal import explanation_text, print_explanation

__all__ = ["render_html", "print_explanation", "explanation_text", "plot_heatmap"]
