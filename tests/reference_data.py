"""Where the OpenAI reference data for the diffusion tests lives: ``tests/data``.

The files are part of the repository (``tests/data/README.md`` records where they came
from), so these tests run in any clone. ``DENOISED_DRS_REFERENCE`` may point at another
folder holding files of the same names, e.g. to check a regenerated reference.
"""

import os
from pathlib import Path

REFERENCE = Path(os.environ.get("DENOISED_DRS_REFERENCE", Path(__file__).resolve().parent / "data"))


def reference_path(name: str) -> Path:
    """The reference file ``name``; a missing file is an error, never a skip."""
    path = REFERENCE / name
    if not path.is_file():
        raise FileNotFoundError(f"reference data not found: {path} (see tests/data/README.md)")
    return path
