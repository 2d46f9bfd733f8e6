"""Hostile input (issue 15 item 6): every fleet, plan and snapshot below gets exit code 2 and one
short error line, no traceback, in bounded time; the heaviest also run in a subprocess limited to
1 GiB of address space. A hypothesis mutation of a valid fleet and snapshot finds no other outcome.
"""

from __future__ import annotations

import copy
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from packer_cli.main import main
from packer_cli.plan import example_path
from packer.errors import UserError
from packer.fleetfile import load_fleet
from packer.plan import save_plan
from test_scaling_helpers import tiny_plan

ROOT = Path(__file__).resolve().parents[1]
FLEET_TEXT = example_path().read_text()
BASE = yaml.safe_load(FLEET_TEXT)
MAX_LINE = 1100  # packer_cli.main.one_line keeps an error within 1000 characters, plus "error: "


def _fleet(fn) -> bytes:
    d = copy.deepcopy(BASE)
    fn(d)
    return yaml.safe_dump(d, sort_keys=False).encode()


LAUGHS = ("a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
          + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8))
          + "name: *i\npools: *i\nmodels: *i\n").encode()

FLEETS: dict[str, bytes] = {
    "billion laughs": LAUGHS,
    "2000-deep list": b"name: x\npools: " + b"[" * 2000 + b"]" * 2000 + b"\n",
    "2000-deep map": b"name: x\npools: " + b"{a: " * 2000 + b"1" + b"}" * 2000 + b"\n",
    "invalid utf-8": FLEET_TEXT.encode().replace(b"asr-en", b"asr-\xff\xfe", 1),
    "binary": bytes(range(256)) * 64,
    "nul bytes": b"name: x\x00\npools: []\n",
    "base 1e308": FLEET_TEXT.replace("base: 4.0", "base: 1e308", 1).encode(),
    "rps 1e9": _fleet(lambda d: d["models"][0]["traffic"].update(rps=1e9, peak_rps=1e9)),
    "peak_rps 2**63": _fleet(lambda d: d["models"][0]["traffic"].update(peak_rps=2**63)),
    "nan": _fleet(lambda d: d["models"][0].update(slo_ms=float("nan"))),
    "infinity": _fleet(lambda d: d["models"][0]["traffic"].update(rps=float("inf"))),
    "minus infinity": _fleet(lambda d: d["pools"][0].update(cost_per_gpu_hour=float("-inf"))),
    "1 MB model name": _fleet(lambda d: d["models"][0].update(name="a" * 2**20)),
    "1 MB key": _fleet(lambda d: d["models"][0].update({"k" * 2**20: 1})),
    "100k sharing modes": _fleet(lambda d: d["pools"][0].update(sharing=[f"mode-{i}" for i in range(100_000)])),
    "100k-item name": _fleet(lambda d: d.update(name=[f"n{i}" for i in range(100_000)])),
    "5000-digit integer": FLEET_TEXT.replace("max_batch: 128", "max_batch: " + "9" * 5000, 1).encode(),
    "base-60 integer": FLEET_TEXT.replace("max_batch: 128", "max_batch: " + ":".join(["59"] * 100_000), 1).encode(),
    "bad timestamp": b"name: 2020-13-45\npools: []\n",
    "python tag": b"name: !!python/object/apply:os.system [true]\n",
    "two documents": FLEET_TEXT.encode() + b"\n---\n" + FLEET_TEXT.encode(),
    "empty": b"",
    "null": b"null\n",
    "a list": b"[1, 2, 3]\n",
    "unhashable key": b"? [a, b]\n: 1\n",
    "over 16 MiB": b"name: x\nabout: '" + b"x" * (16 * 2**20) + b"'\n",
}

PLANS: dict[str, bytes] = {
    "empty": b"",
    "a list": b"[]",
    "notjson": b"notjson",
    "no placements": b'{"fleet": {}, "status": "optimal", "cost_per_hour": 1}',
    "a fleet": FLEET_TEXT.encode(),
    "deep": b'{"fleet": ' + b"[" * 3000 + b"]" * 3000 + b"}",
    "nan": b'{"fleet": {}, "placements": [], "status": "x", "cost_per_hour": NaN}',
    "10^37": b'{"fleet": {}, "placements": [], "status": "x", "cost_per_hour": 1' + b"0" * 37 + b"}",
    "5000 digits": b'{"cost_per_hour": ' + b"9" * 5000 + b"}",
    "binary": b"{\xff\xfe\x00}",
    "placements of ints": b'{"fleet": ' + json.dumps(BASE).encode() + b', "placements": [1, 2], "status": "x", '
                          b'"cost_per_hour": 1}',
    "fleet is a list": b'{"fleet": [], "placements": [], "status": "x", "cost_per_hour": 1}',
}

SNAPSHOTS: dict[str, bytes] = {
    "binary": b'{"models": {"\x00\xff": 1}}',
    "deep": b'{"models": ' + b"[" * 3000 + b"]" * 3000 + b"}",
    "10^37": b'{"time": 1, "models": {"asr-a": {"arrival_rps": 1' + b"0" * 37 + b"}}}",
    "nan": b'{"time": 1, "models": {"asr-a": {"arrival_rps": NaN}}}',
    "infinity": b'{"time": 1, "models": {"asr-a": {"queue_ms": Infinity}}}',
    "late_share 5": b'{"time": 1, "models": {"asr-a": {"late_share": 5}}}',
    "negative": b'{"time": 1, "models": {"asr-a": {"queued": -1}}}',
    "a string": b'{"time": 1, "models": {"asr-a": {"arrival_rps": "lots"}}}',
    "a bool": b'{"time": 1, "models": {"asr-a": {"arrival_rps": true}}}',
    "time nan": b'{"time": NaN, "models": {}}',
    "100k names": json.dumps({"time": 1, "models": {f"m{i}": {} for i in range(100_000)}}).encode(),
    "1 MB name": json.dumps({"time": 1, "models": {"m" * 2**20: {}}}).encode(),
    "a list": b"[]",
    "empty": b"",
}


def assert_one_line(rc: int | None, out: str, err: str) -> str:
    assert rc == 2, (rc, out[-500:], err[-2000:])
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-2000:]
    assert "Traceback" not in err and out == ""
    assert len(lines[0]) <= MAX_LINE
    return lines[0]


@pytest.fixture(scope="module")
def plan_file(tmp_path_factory) -> str:
    p = tmp_path_factory.mktemp("plan") / "plan.json"
    save_plan(tiny_plan(), p)
    return str(p)


def _run(capsys, args: list[str]) -> str:
    t0 = time.monotonic()
    rc = main(args)
    assert time.monotonic() - t0 < 20
    out, err = capsys.readouterr()
    return assert_one_line(rc, out, err)


@pytest.mark.parametrize("name", FLEETS)
def test_hostile_fleet(tmp_path, capsys, name):
    p = tmp_path / "fleet.yaml"
    p.write_bytes(FLEETS[name])
    _run(capsys, ["plan", str(p)])


@pytest.mark.parametrize("name", PLANS)
def test_hostile_plan(tmp_path, capsys, plan_file, name):
    p = tmp_path / "plan.json"
    p.write_bytes(PLANS[name])
    line = _run(capsys, ["plan", str(example_path()), "--current", str(p)])
    assert str(p) in line
    snap = tmp_path / "snap.json"
    snap.write_text('{"models": {}}')
    _run(capsys, ["scale", "--plan", str(p), "--metrics", str(snap)])


@pytest.mark.parametrize("name", SNAPSHOTS)
def test_hostile_snapshot(tmp_path, capsys, plan_file, name):
    p = tmp_path / "snap.json"
    p.write_bytes(SNAPSHOTS[name])
    _run(capsys, ["scale", "--plan", plan_file, "--metrics", str(p)])


def test_dev_zero_is_not_read_forever(capsys):
    if not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero")
    assert "larger than 16 MiB" in _run(capsys, ["plan", "/dev/zero"])


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (2**30, 2**30))


def test_heavy_cases_fit_in_1_gib(tmp_path):
    """One subprocess, 1 GiB of address space, the cases that once took 1.6 GB or ran forever."""
    cases = []
    for name in ("billion laughs", "2000-deep list", "rps 1e9", "peak_rps 2**63", "base-60 integer",
                 "over 16 MiB"):
        p = tmp_path / f"{len(cases)}.yaml"
        p.write_bytes(FLEETS[name])
        cases.append(["plan", str(p)])
    cases.append(["plan", "/dev/zero"])
    script = (
        "import contextlib, io, json, sys\n"
        "from packer_cli.main import main\n"
        "res = []\n"
        "for args in json.loads(sys.argv[1]):\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        try:\n"
        "            rc = main(args)\n"
        "        except BaseException as e:\n"
        "            rc = repr(e)[:300]\n"
        "    res.append([rc, err.getvalue()[-2000:]])\n"
        "print(json.dumps(res))\n"
    )
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", script, json.dumps(cases)], capture_output=True, text=True,
                       cwd=ROOT, timeout=120, preexec_fn=_limit_memory)
    assert r.returncode == 0, r.stderr[-2000:]
    assert time.monotonic() - t0 < 60
    for args, (rc, err) in zip(cases, json.loads(r.stdout)):
        assert_one_line(rc, "", err)


# -- mutations of a valid fleet and snapshot ----------------------------------------------------

HOSTILE = [float("nan"), float("inf"), -float("inf"), 1e308, -1, 0, 2**63, 10**30, -(10**30), 0.5, "x" * 5000, "",
           None, [], {}, True, [1] * 1000, {"k": "v"}, "asr-en", "a100-80gb", 1e-300]


def _paths(doc, prefix=()):
    """Every (container, key) position in a document."""
    out = []
    items = doc.items() if isinstance(doc, dict) else enumerate(doc) if isinstance(doc, list) else ()
    for k, v in items:
        out.append((doc, k))
        out.extend(_paths(v))
    return out


def _typo(key: str, i: int) -> str:
    i %= len(key) + 1
    return key[:i] + key[i + 1:] if i < len(key) else key + "s"


@st.composite
def mutated(draw, base):
    doc = copy.deepcopy(base)
    for _ in range(draw(st.integers(1, 3))):
        spots = _paths(doc)
        if not spots:
            break
        parent, key = spots[draw(st.integers(0, len(spots) - 1))]
        op = draw(st.sampled_from(["value", "delete", "rename", "nest"]))
        if op == "value":
            parent[key] = copy.deepcopy(draw(st.sampled_from(HOSTILE)))
        elif op == "delete":
            del parent[key]
        elif op == "rename" and isinstance(parent, dict) and isinstance(key, str):
            parent[_typo(key, draw(st.integers(0, 30)))] = parent.pop(key)
        elif op == "nest":
            v = parent[key]
            for _ in range(draw(st.integers(1, 40))):
                v = [v]
            parent[key] = v
    return doc


SMALL = copy.deepcopy(BASE)
SMALL["models"] = SMALL["models"][:3]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=mutated(SMALL))
def test_mutated_fleets_load_or_fail_in_one_line(tmp_path, doc):
    p = tmp_path / "m.yaml"
    p.write_text(yaml.safe_dump(doc, sort_keys=False))
    t0 = time.monotonic()
    try:
        load_fleet(p)
    except UserError as e:
        from packer_cli.main import one_line

        msg = str(e)
        assert "\n" not in msg and len(one_line(msg)) <= 1000
    assert time.monotonic() - t0 < 5


SNAP = {"time": 10, "models": {"asr-a": {"arrival_rps": 100, "in_flight": 3, "queued": 1, "queue_ms": 5,
                                         "late_share": 0.01}, "punct": {"arrival_rps": 5}}}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(doc=mutated(SNAP))
def test_mutated_snapshots_act_or_fail_in_one_line(tmp_path, capsys, plan_file, doc):
    p = tmp_path / "s.json"
    p.write_text(json.dumps(doc))  # NaN and Infinity as Python writes them
    rc = main(["scale", "--plan", plan_file, "--metrics", str(p)])
    out, err = capsys.readouterr()
    if rc != 0:
        assert_one_line(rc, out, err)


def test_a_plan_given_as_the_fleet_is_named_a_plan(tmp_path, capsys, plan_file):
    """``packer plan plan.json`` (or ``capacity``): the plan's JSON is valid YAML, and its keys
    used to be refused one by one ("fleet.version: is not a known key")."""
    line = _run(capsys, ["plan", plan_file])
    assert "is a plan, not a fleet file" in line and "--current" in line


def test_too_many_values_without_aliases_does_not_blame_aliases(tmp_path, capsys):
    """A fleet past the values cap with no alias in it is told it is too large, not to use fewer
    aliases; the billion laughs still hears about aliases."""
    d = copy.deepcopy(BASE)
    d["models"] = [dict(copy.deepcopy(d["models"][0]), name=f"m{i}") for i in range(40_000)]  # no aliases
    p = tmp_path / "big.yaml"
    p.write_text(yaml.safe_dump(d))
    line = _run(capsys, ["plan", str(p)])
    assert "more than 1,000,000 values" in line and "alias" not in line and "split it" in line
    p.write_bytes(LAUGHS)
    assert "aliases" in _run(capsys, ["plan", str(p)])


@pytest.mark.parametrize("args,says", [
    (["simulate", "PLAN", "--scenario", "nosuch", "--no-progress"], "one of bursty, diurnal"),
    (["scale", "--plan", "PLAN", "--metrics", "SNAP:null"], "is null, not a number"),
    (["scale", "--plan", "PLAN", "--metrics", "SNAP:scalar"], "is not a mapping; give some of arrival_rps"),
    (["scale", "--plan", "PLAN", "--triton", "http://127.0.0.1:9/metrics"], "Connection refused"),
    # No URL at all was a ValueError traceback; a file:// URL was read as metrics ("no action").
    (["scale", "--plan", "PLAN", "--triton", "not a url", "--window", "0"], "is not an http(s) URL"),
    (["scale", "--plan", "PLAN", "--triton", "file:///etc/passwd", "--window", "0"], "is not an http(s) URL"),
    (["reconcile", "--dry-run", "--kubeconfig", "nosuch-kubeconfig"], "--kubeconfig nosuch-kubeconfig: no such file"),
    (["reconcile", "--dry-run", "--kubeconfig", "/dev/zero"], "--kubeconfig /dev/zero: is not a regular file"),
])
def test_messages_speak_json_and_plain_words_not_python(tmp_path, capsys, plan_file, args, says):
    """What the user wrote is JSON or YAML and what they read is one line: no Python reprs
    (``['a', 'b']``, ``NoneType``, ``<urlopen error ...>``), and a kubeconfig that is not there is
    named as such (it was 'Invalid kube-config file. No configuration found. Fix: give --kubeconfig')."""
    snaps = {"null": {"asr-a": {"arrival_rps": None}}, "scalar": {"asr-a": 3}}
    out = []
    for a in args:
        if a == "PLAN":
            a = plan_file
        elif a.startswith("SNAP:"):
            p = tmp_path / "snap.json"
            p.write_text(json.dumps({"time": 1, "models": snaps[a[5:]]}))
            a = str(p)
        out.append(a)
    line = _run(capsys, out)
    assert says in line and "['" not in line and "NoneType" not in line and "<urlopen" not in line, line


def test_a_bad_image_reference_is_refused_before_rendering(tmp_path, capsys, plan_file):
    """``--triton-image 'bad image'`` was written into every Deployment (kubernetes-validate takes
    any string there; the container runtime does not)."""
    for flag in ("--triton-image", "--fetch-image"):
        line = _run(capsys, ["render", "k8s", plan_file, "-d", str(tmp_path / "out"), flag, "bad image"])
        assert flag in line and "not an image reference" in line
        assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args,says", [
    (["plan", ""], "FLEET: the path is empty"),
    (["plan", "-o", ""], "-o '': an empty value"),
    (["plan", "--svg", " "], "--svg '': an empty value"),
    (["plan", "--time-limit="], "--time-limit=: an empty value"),
    (["gpus", ""], "GPU_TYPE: is empty"),
    (["render", "triton", "PLAN", "-d", ""], "-d '': an empty value"),
    (["simulate", "PLAN", "--duration", ""], "--duration '': an empty value"),  # ran the scenario's hour
    (["simulate", "PLAN", "--policy", ""], "--policy '': an empty value"),  # ran the scenario's policy
])
def test_an_empty_path_is_refused_not_taken_for_the_default(capsys, plan_file, args, says):
    """An unset shell variable (``packer plan "$FLEET" -o "$OUT"``) planned the bundled example and
    wrote the plan nowhere, with exit 0."""
    line = _run(capsys, [plan_file if a == "PLAN" else a for a in args])
    assert says in line, line


def test_an_os_error_past_the_checks_is_one_line(tmp_path, capsys, plan_file, monkeypatch):
    """What the checks before the work cannot see (``-d /proc/x`` as root, a disk that fills) was
    a traceback from mkdir or write; it is one line naming the path, exit 2."""
    import errno
    from pathlib import Path

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "mkdir", full)
    line = _run(capsys, ["render", "triton", plan_file, "-d", str(tmp_path / "out")])
    assert "No space left on device" in line and "out" in line
