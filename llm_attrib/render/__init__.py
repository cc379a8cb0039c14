"""Renderers of an `Explanation` (and a RAG explanation): a self-contained HTML page, rich terminal output, a
matplotlib heatmap."""

from .html import render_html
from .plot import plot_heatmap
from .terminal import explanation_text, print_explanation, print_rag_explanation

__all__ = ["render_html", "print_explanation", "explanation_text", "plot_heatmap", "print_rag_explanation"]
