"""How results are shown, below both the evaluations and the report: numbers as text
(:mod:`toolkit.formatting.numbers`) and report blocks rendered to Markdown and HTML
(:mod:`toolkit.formatting.blocks`)."""
