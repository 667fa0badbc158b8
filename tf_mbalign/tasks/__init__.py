"""Zero-shot transfer tasks: fine-tune on English, test every language, over seeds.

`registry.TASKS` names the tasks (`nli`, `ner`, `pos`, `topic`; retrieval is
run beside them), `runner` runs one, `intervals` computes the 95% intervals,
`suite` runs every task whose files are present for one or two encoders and
`suite_report` writes the JSON, Markdown and plots.
"""
