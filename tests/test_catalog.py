"""MIG layouts derived from placement rules match NVIDIA's documented (in)valid combinations."""

import pytest

from packer.catalog import GPU_TYPES, _first_fit, is_valid_combination, mig_layouts, valid_instances

# From NVIDIA's MIG user guide: supported A100-40GB configurations, and ones the hardware refuses.
VALID_A100_40 = {
    "7g": ["7g.40gb"],
    "4-2-1": ["4g.20gb", "2g.10gb", "1g.5gb"],
    "4-1-1-1": ["4g.20gb", "1g.5gb", "1g.5gb", "1g.5gb"],
    "3-3": ["3g.20gb", "3g.20gb"],
    "3-2-1": ["3g.20gb", "2g.10gb", "1g.5gb"],
    "3-1-1-1": ["3g.20gb", "1g.5gb", "1g.5gb", "1g.5gb"],
    "2-2-3": ["2g.10gb", "2g.10gb", "3g.20gb"],
    "2-1-1-3": ["2g.10gb", "1g.5gb", "1g.5gb", "3g.20gb"],
    "3-2-1-1": ["3g.20gb", "2g.10gb", "1g.5gb", "1g.5gb"],
    "2-2-2-1": ["2g.10gb", "2g.10gb", "2g.10gb", "1g.5gb"],
    "1x7": ["1g.5gb"] * 7,
    "1g.10gb-x4": ["1g.10gb"] * 4,
}
INVALID_A100_40 = {
    "4+3 (excluded by NVIDIA)": ["4g.20gb", "3g.20gb"],
    "7+1": ["7g.40gb", "1g.5gb"],
    "3x3": ["3g.20gb"] * 3,
    "2x4": ["2g.10gb"] * 4,
    "1x8": ["1g.5gb"] * 8,
    "4+4": ["4g.20gb", "4g.20gb"],
    "1g.10gb-x5": ["1g.10gb"] * 5,
    "unknown profile": ["5g.25gb"],
}


@pytest.mark.parametrize("profiles", VALID_A100_40.values(), ids=VALID_A100_40.keys())
def test_documented_valid_combinations(profiles):
    assert is_valid_combination("a100-40gb", profiles)


@pytest.mark.parametrize("profiles", INVALID_A100_40.values(), ids=INVALID_A100_40.keys())
def test_documented_invalid_combinations(profiles):
    assert not is_valid_combination("a100-40gb", profiles)


@pytest.mark.parametrize("gpu", [g for g, t in GPU_TYPES.items() if t.has_mig])
def test_every_layout_is_valid_maximal_and_its_creation_order_realises_it(gpu):
    t = GPU_TYPES[gpu]
    layouts = mig_layouts(gpu)
    assert layouts
    for l in layouts:
        assert valid_instances(t, l.instances)
        assert sum(t.profile(p).compute_slices for p in l.profiles) <= t.compute_slices
        assert _first_fit(t, l.creation_order) == l.instances
        # maximal: no further instance can be added anywhere
        for p in t.mig_profiles:
            for s in p.placements:
                bigger = tuple(sorted(l.instances + ((p.name, s),), key=lambda x: x[1]))
                assert not valid_instances(t, bigger), (l.name, p.name, s)


def test_a30_has_the_four_documented_maximal_layouts():
    names = {tuple(sorted(l.profiles)) for l in mig_layouts("a30-24gb")}
    assert names == {("4g.24gb",), ("2g.12gb", "2g.12gb"), ("1g.6gb", "1g.6gb", "2g.12gb"), ("1g.6gb",) * 4}


def test_profile_names_follow_memory():
    assert [p.name for p in GPU_TYPES["h100-80gb"].mig_profiles] == [
        "1g.10gb", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"]
    assert GPU_TYPES["h200-141gb"].profile("3g.71gb").memory_slices == 4
    assert not GPU_TYPES["l4-24gb"].has_mig
