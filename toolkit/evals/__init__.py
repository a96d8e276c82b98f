"""Evaluation: suites of needle-in-a-haystack, RULER-style, lm-eval, perplexity and RoPE-comparison tasks.

A suite is data (``evals/*.yaml``, see :mod:`toolkit.evals.suite`); each task ``type`` is one entry of
:mod:`toolkit.evals.registry`; :func:`toolkit.evals.api.run_suites` runs suites on an already-loaded model and
writes ``<out>/<tag>/<suite>.json``. The run report built from them is :mod:`toolkit.report`.
"""
