"""Fixtures the pure profiling tests share."""

from __future__ import annotations

import pytest

from tests.profiling_pure import npm_tools


@pytest.fixture(scope="module")
def tools() -> None:
    """The npm parsers (speedscope's schema, pprof-format), installed if missing."""
    npm_tools.ensure()
