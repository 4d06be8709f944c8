"""The separate environment of the shap and shapiq references (``.venv-ref``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def reference_python() -> str:
    """The Python of the reference environment (``.venv-ref``: shap and shapiq, see ``scripts/reference_env.sh``).
    Skips the test when it is missing, or fails it when ``SEGSHAP_REQUIRE_REFERENCE`` is set (``scripts/test.sh``)."""
    python = os.environ.get("SEGSHAP_REFERENCE_PYTHON", str(Path(__file__).parents[2] / ".venv-ref/bin/python"))
    if not Path(python).exists():
        if os.environ.get("SEGSHAP_REQUIRE_REFERENCE"):
            pytest.fail(f"The reference environment is missing ({python}); run scripts/reference_env.sh.")
        pytest.skip("reference environment (shap, shapiq) not set up: `bash scripts/test.sh` makes .venv-ref")
    return python
