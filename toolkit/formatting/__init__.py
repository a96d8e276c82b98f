"""How results and progress are shown, below both the evaluations and the report: numbers and settings' values as
text (:mod:`toolkit.formatting.numbers`), report blocks rendered to Markdown and HTML (:mod:`toolkit.formatting.blocks`)
and progress bars for long work (:mod:`toolkit.formatting.progress`)."""
