"""What the console shows: the toolkit's own messages plainly, other libraries' warnings, and none of the warnings
the toolkit knows to be expected."""

from __future__ import annotations

import logging
import sys

EXPECTED_WARNINGS = {
    "accelerate.utils.other": ("Removed shared tensor",),
    "lm_eval.models.huggingface": ("`pretrained` model kwarg is not of type `str`",
                                   "Passed an already-initialized model through `pretrained`"),
    "lm_eval.api.task": ("Custom kwargs can be passed to `--metadata`",),
}
"""Logger -> the messages it gives on every run that mean nothing went wrong: accelerate's on saving tied embeddings
once (transformers ties them again on loading, which the tests check), lm-eval's on being handed the loaded model
(as the toolkit does, in one process) and on every task that takes metadata."""


class _Stderr(logging.StreamHandler):
    """A handler that writes to whatever ``sys.stderr`` is at the time (tests swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


class _Expected(logging.Filter):
    """Drops the records whose message holds one of ``phrases``."""

    def __init__(self, phrases: tuple[str, ...]):
        super().__init__()
        self.phrases = phrases

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(phrase in message for phrase in self.phrases)


def configure_logging(verbose: bool = False, quiet: bool = False) -> None:
    """The toolkit's loggers print plain messages on stderr at INFO (DEBUG with -v, WARNING with -q); other
    libraries print WARNING and above (INFO with -v, ERROR with -q), but :data:`EXPECTED_WARNINGS` (shown with -v).
    Calling it again replaces the setting."""
    own = logging.getLogger("toolkit")
    own.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    if not any(isinstance(handler, _Stderr) for handler in own.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        own.addHandler(handler)
    own.propagate = False
    logging.getLogger().setLevel(logging.INFO if verbose else logging.ERROR if quiet else logging.WARNING)
    for name, phrases in EXPECTED_WARNINGS.items():  # shown with -v
        logger = logging.getLogger(name)
        for known in [known for known in logger.filters if isinstance(known, _Expected)]:
            logger.removeFilter(known)
        if not verbose:
            logger.addFilter(_Expected(phrases))
