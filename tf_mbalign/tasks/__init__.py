"""Zero-shot transfer tasks: fine-tune on English, test every language, over seeds.

`registry.TASKS` names the tasks (`nli`, `ner`, `pos`, `topic` by default,
retrieval run beside them; `xnli_mini` and `mlqa` optional), `runner` runs
one, `intervals` computes the 95% intervals, `suite` runs the selected tasks
whose files are present for one or two encoders and `suite_report` writes the
JSON, Markdown and plots. `xnli` and `mlqa` also hold the XNLI / MLQA
fine-tuning of `tf_mbalign.finetune` (translate-train, code-switching).
"""
