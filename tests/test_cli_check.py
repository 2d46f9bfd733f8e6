"""``packer check PLAN``: a plan file against its own fleet, as every plan reader checks it."""

from __future__ import annotations

import json

from packer_cli.main import main
from packer_cli.plan import example_path


def test_a_sound_plan_holds_and_an_edited_one_is_one_line_exit_2(tmp_path, capsys):
    """The README and bench/tight.py said plans are put to `packer check`, and there was no such
    command ("No such command 'check'")."""
    p = tmp_path / "plan.json"
    assert main(["plan", str(example_path()), "--time-limit", "2", "-o", str(p)]) == 0
    capsys.readouterr()
    assert main(["check", str(p)]) == 0
    out = capsys.readouterr().out
    assert "holds against its fleet" in out and "p99 bounds" in out
    assert main(["check", str(p), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["holds"] is True
    doc = json.loads(p.read_text())
    doc["placements"][0]["models"][0]["p99_bound_ms"] = 1.0
    p.write_text(json.dumps(doc))
    assert main(["check", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "reported p99 bound 1.00 ms" in err and "Fix:" in err
