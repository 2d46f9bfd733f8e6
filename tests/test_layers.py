"""The layers hold: import-linter's contracts (pyproject.toml) over every package, none broken.

The command line (``packer_cli``) sits on the adapters (``k8s`` above ``serving`` and ``sims``,
which are independent of each other), which sit on the core (``packer``); the core imports no
adapter's library; no package's modules import each other in a cycle. Subcommands load lazily,
but by import statements the linter sees.
"""

import re
import shutil
import subprocess
from pathlib import Path

import pytest


def test_the_layer_contracts_hold():
    exe = shutil.which("lint-imports")
    assert exe, "import-linter is a test dependency"
    r = subprocess.run([exe], cwd=Path(__file__).resolve().parent.parent, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"(\d+) kept, 0 broken", r.stdout)
    assert m and int(m.group(1)) >= 3, r.stdout  # layers, the core's libraries, no cycles


@pytest.mark.parametrize("package", ["packer", "serving", "sims", "k8s"])
def test_no_package_below_the_command_line_imports_it(package):
    """``packer_cli`` is the top: nothing under it names it, not even by a string for importlib."""
    root = Path(__file__).resolve().parent.parent / package
    hits = [str(p) for p in root.rglob("*.py") if "packer_cli" in p.read_text()]
    assert not hits, hits
