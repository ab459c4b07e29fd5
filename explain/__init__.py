"""Grounded explanations: facts (item, matching interest, the user's evidence items) -> checked sentence -> table."""

from explain.check import check_explanation
from explain.explain import ExplainStats, explain_items, template_explanation
from explain.facts import ExplainFacts, build_facts, select_evidence
from explain.table import ExplanationTable

__all__ = ["ExplainFacts", "ExplainStats", "ExplanationTable", "build_facts", "check_explanation", "explain_items",
           "select_evidence", "template_explanation"]
