"""The package's layers, enforced: a wrong-way import fails the build.

The contract lives in pyproject.toml ([tool.importlinter]); import-linter
reads every import of the package, also those inside functions.
"""

from __future__ import annotations

import subprocess

from conftest import PROJECT_DIR

LINT_IMPORTS = PROJECT_DIR / ".venv" / "bin" / "lint-imports"


def test_layer_contract_is_kept() -> None:
    result = subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=PROJECT_DIR, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout
