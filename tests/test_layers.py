"""The core stays pure: import-linter's contract (pyproject.toml) holds."""

import shutil
import subprocess
from pathlib import Path


def test_core_imports_no_adapter():
    exe = shutil.which("lint-imports")
    assert exe, "import-linter is a test dependency"
    r = subprocess.run([exe], cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 kept, 0 broken" in r.stdout
