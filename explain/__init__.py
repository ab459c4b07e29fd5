"""Explanations per (interest, item) pair, generated in batch and served from a lookup table."""

from explain.explain import ExplainStats, ExplanationTable, check_faithful, explain_pairs, template_explanation

__all__ = ["ExplainStats", "ExplanationTable", "check_faithful", "explain_pairs", "template_explanation"]
