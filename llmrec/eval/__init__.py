"""The offline comparison: one protocol (split, slices, true cold-start users), every row on one metric code,
paired intervals against SASRec+, verdicts chosen on validation, and the Markdown/JSON/PNG report.

`protocol` builds the split and slices, `rows` names the rows and their configs, `run` trains and scores them
(`run_evaluation`), `llm_rows` holds the LLM rows, `stats` the paired bootstrap, `tables`/`plots`/`report` the output.
"""
