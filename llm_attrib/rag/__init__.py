"""RAG debugging: which retrieved documents (and sentences) carried each part of an answer, whether the documents
support it, and why the retriever ranked them.

    >>> from llm_attrib import rag
    >>> result = rag.explain(model, tokenizer, "What is the capital of Australia?", documents)
    >>> result.top_document, result.citations, result.to_html()
"""

from .explain import GRANULARITIES, SCOPES, explain
from .explanation import Citation, RagExplanation, Verdict
from .prompt import SYSTEM, TEMPLATES, Document, Template
from .retriever import RetrievalExplanation, explain_retrieval, rank_and_explain, similarity
from .shapley import DocumentShapley
from .verdicts import THRESHOLDS, calibrate, calibrated_thresholds

__all__ = ["explain", "RagExplanation", "Citation", "Verdict", "Template", "Document", "TEMPLATES", "SYSTEM", "THRESHOLDS", "calibrate", "calibrated_thresholds",
           "GRANULARITIES", "SCOPES", "explain_retrieval", "rank_and_explain", "similarity", "RetrievalExplanation", "DocumentShapley"]
