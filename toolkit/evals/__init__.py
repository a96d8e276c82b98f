"""Evaluation: suites of needle-in-a-haystack, RULER-style, lm-eval, perplexity and RoPE-comparison tasks.

A suite is data (``evals/*.yaml``, see :mod:`toolkit.evals.suite`); :func:`toolkit.evals.api.run_suites`
runs suites on an already-loaded model and writes ``<out>/<tag>/<suite>.json``; :mod:`toolkit.evals.report`
turns a run folder into ``report.md`` and ``report.html``.
"""
