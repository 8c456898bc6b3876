"""Where the OpenAI reference data (../shared/reference) lives, for the diffusion tests."""

import os
from pathlib import Path

import pytest

REFERENCE = Path(
    os.environ.get(
        "DENOISED_DRS_REFERENCE", Path(__file__).resolve().parents[2] / "shared" / "reference"
    )
)


def reference_path(name: str) -> Path:
    """The reference file ``name``; skips the test (with the reason) when it is absent."""
    path = REFERENCE / name
    if not path.is_file():
        pytest.skip(f"reference data not found: {path} (set DENOISED_DRS_REFERENCE)")
    return path
