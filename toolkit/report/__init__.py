"""The run report: ``report.md``, a self-contained ``report.html`` and PNG plots from a run folder
(:mod:`toolkit.report.report`), the run's verdict (:mod:`toolkit.report.verdict`) and the summary across runs."""
