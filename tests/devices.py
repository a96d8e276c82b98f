"""The devices a device-dependent test runs on: the CPU always, CUDA too (marked gpu, so skipped without one).

A test that needs a GPU takes ``device`` from :data:`DEVICES`, so the same test also runs on CPU; one that cannot do
everything there says why in one line. ``tests/test_device_variants.py`` checks that no test is GPU-only.
"""

from __future__ import annotations

import pytest

DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda", marks=pytest.mark.gpu)]
