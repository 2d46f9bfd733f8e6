"""Poisson batch quantiles and the lines the planner uses in their place."""

import math

import pytest

from packer.arrivals import QUANTILE, batch_bound, envelope, max_mean, poisson_quantile


def _cdf(k: int, m: float) -> float:
    return sum(math.exp(-m) * m ** j / math.factorial(j) for j in range(k + 1))


@pytest.mark.parametrize("m,k", [(0.0, 0), (0.0005, 0), (0.01, 1), (1.0, 5), (10.0, 21)])
def test_poisson_quantile_worked_numbers(m, k):
    assert poisson_quantile(m) == k
    if m > 0:
        assert _cdf(k, m) >= QUANTILE and (k == 0 or _cdf(k - 1, m) < QUANTILE)


def test_a_request_counts_itself():
    assert batch_bound(0) == 1 and batch_bound(1.0) == 6 and batch_bound(10.0) == 22


def test_the_normal_bound_above_the_exact_range_is_above_the_exact_quantile():
    for m in (61.0, 100.0, 400.0):
        k = poisson_quantile(m)
        # exact tail by summing in logs
        logp = [-m + j * math.log(m) - math.lgamma(j + 1) for j in range(k + 1)]
        assert sum(math.exp(x) for x in logp) >= QUANTILE


@pytest.mark.parametrize("m_ref", [1e-3, 0.1, 1.0, 8.0, 30.0, 100.0, 1000.0, 1e5])
def test_envelope_is_above_the_bound_everywhere_and_tight_near_its_point(m_ref):
    c, s = envelope(m_ref)
    grid = [j / 200 for j in range(0, 20000)] + [100 * 1.01 ** j for j in range(1200)]
    assert all(batch_bound(m) <= c + s * m + 1e-9 for m in grid)
    if m_ref >= 1:
        assert c + s * m_ref <= batch_bound(m_ref) * 1.15 + 2


def test_max_mean_is_the_largest_window_a_batch_holds():
    for mb in (1, 2, 8, 128):
        m = max_mean(mb)
        assert batch_bound(m) <= mb
        assert batch_bound(m * 1.001 + 1e-6) > mb
    assert batch_bound(0.0) == 1 and max_mean(1) == pytest.approx(0.001, rel=0.01)


def test_session_slots_cover_the_count_at_one_in_a_million():
    from packer.arrivals import session_slots

    assert session_slots(0.0) == 1 and session_slots(1.0) == 10 and session_slots(40.0) == 75
    for m in (1e-4, 0.01, 0.3, 1.0, 3.0, 10.0, 40.0, 150.0, 454.0, 2000.0, 1e4, 1e5):
        k = session_slots(m)
        # P(N > k) for N ~ Poisson(m), summed in logs from k + 1 upwards until the terms vanish
        j, tail, term = k + 1, 0.0, 1.0
        while term > 1e-300 and j < k + 10 * math.sqrt(m) + 200:
            term = math.exp(-m + j * math.log(m) - math.lgamma(j + 1))
            tail += term
            j += 1
        assert tail <= 1e-6, (m, k, tail)
