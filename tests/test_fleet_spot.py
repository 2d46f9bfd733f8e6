"""The fleet file's spot fields (issue 18): per pool the preemption notice and rate, per model
the spot policy and its on-demand floor; validated like every other field."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from packer_cli.main import main
from packer.fleet import FleetError
from packer.fleetfile import parse_fleet
from packer.plan import fleet_to_dict

EXAMPLES = Path(__file__).resolve().parent.parent / "packer" / "examples"
BASE = yaml.safe_load((EXAMPLES / "llm-platform.yaml").read_text())  # pools[1] is h100-spot


def mutate(fn):
    d = copy.deepcopy(BASE)
    fn(d)
    return d


def test_defaults_keep_old_fleets_as_they_were() -> None:
    f = parse_fleet(BASE)
    assert all(m.spot_policy == "free" and m.on_demand_floor == 0.0 for m in f.models)
    assert f.pool("h100-spot").preemption_notice_s is None and f.pool("h100-spot").preemptions_per_node_hour is None
    assert "spot_policy" not in fleet_to_dict(f)["models"][0]  # plans of old fleets serialise as before


def test_fields_parse_and_round_trip() -> None:
    def fn(d):
        d["pools"][1].update(preemption_notice_s=30, preemptions_per_node_hour=0.05)
        d["models"][0].update(spot_policy="floor", on_demand_floor=0.25)
        d["models"][1].update(spot_policy="floor")
        d["models"][2].update(spot_policy="never")
        d["models"][3].update(spot_policy="floor", on_demand_floor=0.5, spot_loss="pool")
    f = parse_fleet(mutate(fn))
    assert (f.pool("h100-spot").preemption_notice_s, f.pool("h100-spot").preemptions_per_node_hour) == (30.0, 0.05)
    assert [(m.spot_policy, m.on_demand_floor) for m in f.models[:4]] == [
        ("floor", 0.25), ("floor", 0.5), ("never", 1.0), ("floor", 0.5)]
    assert [m.spot_loss for m in f.models[:4]] == ["node", "node", "node", "pool"]  # node unless said
    assert parse_fleet(fleet_to_dict(f)) == f


BAD = {
    "policy typo": (lambda d: d["models"][0].update(spot_policy="flor"), "models[0] (chat-7b-0).spot_policy",
                    "did you mean floor?"),
    "floor without policy": (lambda d: d["models"][0].update(on_demand_floor=0.5),
                             "models[0] (chat-7b-0).on_demand_floor", "spot_policy: floor"),
    "floor above 1": (lambda d: d["models"][0].update(spot_policy="floor", on_demand_floor=1.5),
                      "models[0] (chat-7b-0).on_demand_floor", "share of peak_rps"),
    "floor 0": (lambda d: d["models"][0].update(spot_policy="floor", on_demand_floor=0),
                "models[0] (chat-7b-0).on_demand_floor", "share of peak_rps"),
    "loss without floor": (lambda d: d["models"][0].update(spot_policy="never", spot_loss="node"),
                           "models[0] (chat-7b-0).spot_loss", "spot_policy: floor"),
    "loss typo": (lambda d: d["models"][0].update(spot_policy="floor", spot_loss="nodes"),
                  "models[0] (chat-7b-0).spot_loss", "use node"),
    "key typo": (lambda d: d["models"][0].update(spot_polcy="never"), "models[0] (chat-7b-0).spot_polcy",
                 "did you mean spot_policy?"),
    "notice on on-demand": (lambda d: d["pools"][0].update(preemption_notice_s=30),
                            "pools[0] (h100).preemption_notice_s", "spot: true"),
    "negative rate": (lambda d: d["pools"][1].update(preemptions_per_node_hour=-1),
                      "pools[1] (h100-spot).preemptions_per_node_hour", "per hour"),
    "notice as text": (lambda d: d["pools"][1].update(preemption_notice_s="30s"),
                       "pools[1] (h100-spot).preemption_notice_s", "float"),
}


@pytest.mark.parametrize("fn,field,fix", BAD.values(), ids=BAD.keys())
def test_bad_spot_fields_name_the_field_and_the_fix(fn, field: str, fix: str) -> None:
    with pytest.raises(FleetError) as e:
        parse_fleet(mutate(fn))
    assert e.value.field == field
    assert fix in e.value.fix


def test_cli_bad_spot_field_exits_2_without_traceback(tmp_path, capsys) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(mutate(BAD["policy typo"][0])))
    assert main(["plan", str(p)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "spot_policy" in err and "Traceback" not in err
