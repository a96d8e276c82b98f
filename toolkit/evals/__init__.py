"""Evaluation: suites of needle-in-a-haystack, RULER-style, lm-eval, perplexity, RoPE-comparison and jury tasks.

A suite is data (``evals/*.yaml``, see :mod:`toolkit.evals.suite`); each task ``type`` is one module (its settings,
runner, report section, ...) registered in :mod:`toolkit.evals.registry`; :func:`toolkit.evals.api.run_suites` runs
suites on an already-loaded model and writes ``<out>/<tag>/<suite>.json``. The run report built from them is
:mod:`toolkit.report`.
"""
