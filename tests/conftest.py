"""Shared fixtures. Real-data tests read ZF_SHARED_DATA (``.ci/run`` sets it when ../shared/data exists)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real images (Imagenette, Caltech-101); skips the test when it is not available."""
    root = os.environ.get("ZF_SHARED_DATA")
    if not root:
        pytest.skip("real-data test: set ZF_SHARED_DATA to the shared data folder (holding imagenette/, caltech101/)")
    path = Path(root)
    if not (path / "imagenette").is_dir():
        pytest.skip(f"real-data test: ZF_SHARED_DATA={root} has no imagenette/ folder")
    return path
