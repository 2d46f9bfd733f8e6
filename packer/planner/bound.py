"""A lower bound on the cost of any plan: the aggregate relaxation, solved as an LP and a MIP.

Every feasible plan satisfies these constraints, so their optimum can only be cheaper:

* ``z[p, L]`` GPUs of pool ``p`` with layout ``L`` (integer); ``N[p, k] = sum_L cnt_L(k) z[p, L]``
  instances of profile ``k`` exist;
* model ``m`` puts ``q[m, t]`` replicas (integer in the MIP, continuous in the LP) and
  ``v[m, t]`` rps on slot type ``t``:
  ``sum_t v = peak``, ``v <= cap_t q`` (no replica serves more than it can alone),
  ``sum_t q >= n_lb`` and ``q <= N`` (one replica of a model per slot);
* per slot type, memory ``sum mem q <= mem_t N`` and time ``sum T <= u N``: in any slot, a
  member at rate ``r`` takes at least ``A / d + per r`` of the duty cycle ``d``, ``d`` is at
  most ``(slo - A) / (1 + per r)``, and a request costs at least ``base / max_batch + per`` (a
  window over ``max_batch`` is served in several turns, so ``max_batch`` caps no rate); each
  gives a lower bound on the share that is linear in ``r``, so
  ``T >= A/(slo-A) q + slo/(slo-A) per v`` and ``T >= (base/max_batch + per) v`` hold for the
  sums over a model's replicas (``_coefficients``).

Slots are further split by duty-cycle class (``docs/planner.md``); in the MIP the number of slots
of each type and class is an integer too, since every slot runs one cycle. Multi-GPU replicas are
never shared, so their exact cheapest cost is added as a constant. ``docs/planner.md`` gives the
argument in full. A MIP or LP that does not finish in time gives no bound (HiGHS reports none);
the closed form (``closed_form``), which needs no solver, then stands.
"""

from __future__ import annotations

import itertools
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ortools.linear_solver import pywraplp

from packer.fleet import Model
from packer.planner.cpsat import _layouts
from packer.planner.model import Problem
from packer.planner.mip import quiet_stdout
from packer.planner.patterns import PatternBound, pattern_bound, refine
from packer.slot import WHOLE, duty_capacity, latency_scale, lone_capacity

MAX_CLASSES = 5
"""Duty-cycle classes: a slot's cycle lies in exactly one class [b_j, b_(j+1)), and its members'
shares are bounded below by A / b_(j+1). More classes give a tighter bound and a larger LP. On
long-tail 4 classes prove 24.41, 5 prove 25.37 (3.0 s with interior point), 8 and 16 no more."""
LP_SOLVER = "HIGHS"
MIP_SOLVER = "HIGHS"
CLASSES_UP_TO = 250
"""Above this many models the duty-class LP takes minutes; the one-class LP is used alone."""
MIP_CLASSES = 3
"""The MIP's integer slot counts do most of its work; fewer classes keep it to a few seconds."""
MIP_UP_TO = 60
"""Up to this many models the duty-class MIP usually finishes within a few seconds."""


PATTERN_SHARE = 0.6
"""The pattern LP's column generation gets what the aggregate LPs left of the bound's time, and at
least this share of it."""
ONE_CLASS_S, ONE_CLASS_S_PER_MODEL2 = 0.64, 3.84e-6
"""Above ``CLASSES_UP_TO`` models, the one-class LP's seconds, fixed and per model squared, kept
out of the pattern LP's budget: 1.6 s at 500 models (measured 1.6 in the plan, 1.2-1.9 alone) and
16 s at 2000 (13.6-16.6). At 4e-6 per model squared alone it was 1.0 s at 500, and generated-500's
bound stage ran 0.6 s past its share."""
ONE_CLASS_TIMES = 1.5
"""The one-class LP may run this many times its estimated seconds where column generation has taken
what was left. HiGHS's dual simplex solves it in 0.1-0.7 s on most 400-500-model fleets and in 5
to 13 s on a few of the same size (family-1500058-mixed-491: 12.9 s for 18,595 columns, where
generated-500's 18,304 take 0.3 s); at three times the estimate (4.7 s at 500 models) those ran to
the limit and gave nothing. 1.5 leaves 2.4 s at 500 models and 24 s at 2000 (measured 13.6-16.6)."""
AGGREGATE_SHARE, AGGREGATE_S_PER_MODEL = 0.25, 0.015
"""Time kept for the aggregate LPs after column generation, up to this many models: the duty-class
LP takes about 3.5 s on long-tail (200 models), 1 s on 40."""
MIP_MIN_S = 8.0
"""With the default budget, the MIP gets at least this long: multilingual-10's (40 models) needs
6.3 s, where 45 % of the plan's 7.5 s left it 2-3 s and no bound (16.40/h from the LP, not 17.70)."""
SPREAD_RULE = "the spread rule"
"""How a bound over the plans that obey the spread rule (``solve._spread_kept``: a replica of
every ``min_replicas >= 2`` model off each pool of one node) says so: ``solve.plan_fleet`` checks
the plan obeys it, else takes the bound over every plan."""


def lower_bound(problem: Problem, multi_cost: float, time_limit: float, mip_s: float = 0.0, *,
                upper: float = math.inf, seeds: list[tuple[str, list[tuple[str, int]]]] = (),
                counts: dict[str, set[int]] | None = None, keep: list | None = None,
                apart: bool = False) -> tuple[float, str]:
    """The best of the closed form (``closed_form``: no solver, any fleet size, so the bound is
    never 0 for a fleet that needs a GPU), the pattern LP (``patterns.py``: column generation,
    a Lagrangian bound), the relaxation's LP, and its duty-class MIP or LP where time allows; then
    raised to the cheapest whole-GPU purchase that costs at least as much. The description names
    the bound that won. ``upper``, ``seeds`` and ``counts`` go to ``patterns.pattern_bound``, whose
result is appended to ``keep`` (its columns can seed a packing). ``apart``: the pattern LP with
the spread rule's rows (``patterns.Patterns.apart``); where they bind, its bound is over the plans
that obey the rule, and says so (``SPREAD_RULE``).

    ``multi_cost`` must be a lower bound on what the multi-GPU models cost (``solve.multi_floor``);
    the shared models may use every GPU of a pool, since where the multi-GPU models sit is open.
    """
    # The LPs are small and finish. For small fleets the MIP (integer layouts,
    # replica and slot counts per duty class) is far tighter: it sees that a slot runs one duty
    # cycle, so a streaming model cannot use the idle half of a slot whose batch members run
    # seconds-long cycles. Cheapest first, so a slow machine still gets the LP bounds.
    start = time.monotonic()
    n = len(problem.shared_models)
    if not problem.fleet.models:  # ``models: []``: a fleet being retired costs nothing, exactly
        return 0.0, "no models: nothing to place"

    spent: list[float] = []  # counted seconds of column generation, once it has run

    def left() -> float:
        # Reproducible (``PlanSettings.reproducible``): the time column generation counted, not
        # the clock's, so which LPs run does not depend on the machine.
        if problem.settings.reproducible:
            return time_limit - sum(spent)
        return time_limit - (time.monotonic() - start)

    # The closed form needs no solver and always finishes: the floor under every other bound.
    found: list[tuple[float, str] | None] = [closed_form(problem)]

    one_class_s = ONE_CLASS_S + ONE_CLASS_S_PER_MODEL2 * n * n  # estimated, above CLASSES_UP_TO

    def aggregate() -> None:
        # The duty-class LP is at least as tight as the one-class LP (summing its classes gives a
        # one-class solution), so the one-class LP runs only where the other is not tried or fails.
        # With under a second left the duty-class LP, whose rows take seconds to build on a few
        # hundred models, does not finish (family-13100399-mixed-221: 3.0 s for nothing); the
        # one-class LP then runs at once.
        classes = n <= CLASSES_UP_TO and left() >= 1.0
        if classes:
            found.append(_solve(problem, left(), integer=False, max_classes=MAX_CLASSES))
        if not classes or found[-1] is None:
            # Its time as estimated, and half again, where column generation has taken what was left.
            found.append(_solve(problem, max(1.0, left(), ONE_CLASS_TIMES * one_class_s), integer=False,
                                max_classes=1))

    # The pattern LP bounds the whole plan, multi-GPU replicas included; the others bound the
    # shared models, to which multi_cost is added below. The pattern LP runs first, and the
    # aggregate LPs only where column generation is cut short (its Lagrangian bound is then poor,
    # and they are the floor); converged, it is the tighter relaxation of the two (its columns are
    # groups ``feasible`` admits, where the aggregate LPs pool the slots' time and memory). Up to
    # CLASSES_UP_TO models the aggregate LPs' few seconds are kept from column generation's time;
    # above, the one-class LP's (16 s at 2000 models), estimated from the fleet's size rather
    # than read off the clock, so that the columns (and the plan dived from them) do not depend
    # on the load, and at least PATTERN_SHARE of the time is column generation's. The one-class
    # LP ran first above CLASSES_UP_TO until the pools' caps (``patterns.Patterns.pool_caps``)
    # took their time in the last bound: on generated-500 it took 1.6 s for a bound of 97.0/h,
    # against the converged pattern LP's 126.62/h.
    if n <= CLASSES_UP_TO:
        reserve = min(AGGREGATE_SHARE * time_limit, AGGREGATE_S_PER_MODEL * n + 0.5)
    else:
        reserve = max(0.0, min(one_class_s, (1 - PATTERN_SHARE) * time_limit))
    pat = pattern_bound(problem, max(1.0, time_limit - reserve), upper, seeds, counts, apart=apart)
    spent.append(0.0 if pat is None else pat.spent)
    if pat is None or not pat.converged:
        aggregate()
    if pat is not None and keep is not None:
        keep.append(pat)
    pattern = _pattern_found(problem, pat, upper)
    # The MIP's integer slot counts rarely beat the pattern LP: with one, it gets only the time left.
    if pattern is not None:
        mip_s = 0.0
    if n <= MIP_UP_TO and max(left(), mip_s) > 0.2:
        found.append(_solve(problem, max(left(), mip_s), integer=True, max_classes=MIP_CLASSES))
    best = max((b for b in found if b is not None), key=lambda b: b[0], default=(0.0, "no bound in time"))
    best = _whole_gpus_plus(problem, best, multi_cost)
    if pattern is not None and pattern[0] > best[0] + 1e-6:
        return pattern
    return best


def refined_bound(problem: Problem, found: PatternBound, bound: tuple[float, str], time_limit: float,
                  upper: float) -> tuple[float, str]:
    """``bound`` (what :func:`lower_bound` gave), or the pattern LP's where column generation,
    resumed with deeper pricing for ``time_limit`` deterministic seconds (``patterns.refine``),
    raises it. ``upper``: the best plan's cost now (a plan exists there)."""
    again = refine(found, time_limit, upper)
    if again is found:  # nothing resumed (no time, not converged) or nothing new: no purchases to list again
        return bound
    better = _pattern_found(problem, again, upper)
    return better if better is not None and better[0] > bound[0] + 1e-6 else bound


def _pattern_found(problem: Problem, pat: PatternBound | None, upper: float) -> tuple[float, str] | None:
    """The pattern LP's bound (of the whole plan) raised to whole GPUs, and what it was: to the
    cheapest purchase the Lagrangian does not rule out at its own pool sizes where ``upper`` (the
    best plan's cost) is known (``patterns.cheapest_purchase``), else to the next purchase."""
    if pat is None or pat.value <= 0:
        return None
    whole_of = [(p.cost_per_gpu_hour, p.max_gpus) for p in problem.fleet.pools]
    total = whole_gpus(whole_of, pat.value)
    note = "" if pat.converged else ", column generation stopped at its time limit"
    rounded = f", {pat.value:.2f} rounded up to whole GPUs" if total > pat.value + 1e-6 else ""
    if pat.patterns is not None and math.isfinite(upper):
        bought = pat.patterns.cheapest_purchase(total, upper)
        if bought > total + 1e-6:
            rounded = (f", {pat.value:.2f} raised to the cheapest GPU purchase it does not rule out "
                       f"at that purchase's pool sizes")
            total = bought
    apart = (f", over the plans that keep a replica of every min_replicas >= 2 model off each pool of one node "
             f"({SPREAD_RULE})") if pat.patterns is not None and pat.patterns.apart_rows else ""
    return (total, f"pattern LP, Lagrangian bound over the replica counts the planner offers "
                   f"({pat.columns} patterns{note}){apart}" + rounded)


def _whole_gpus_plus(problem: Problem, best: tuple[float, str], multi_cost: float) -> tuple[float, str]:
    """A bound on the shared models raised to whole GPUs, plus the multi-GPU models' cost."""
    limits = [(p.cost_per_gpu_hour, p.max_gpus) for p in problem.fleet.pools]
    whole = whole_gpus(limits, best[0])
    if whole > best[0] + 1e-6:
        return (multi_cost + whole, best[1] + f", {best[0]:.2f} rounded up to whole GPUs")
    return (multi_cost + best[0], best[1])


def _slice_weights(problem: Problem, pool) -> dict[str, tuple[float, float]]:
    """Per slot type of ``pool``: its share of the GPU's compute and of its memory, each divided by
    the most any layout of the pool holds, so that on every GPU the slots' weights sum to at most 1."""
    out: dict[str, tuple[float, float]] = {}
    layouts = _layouts(problem, pool.name)
    types = {st.profile: st for st in problem.types[pool.name]}
    g = types and next(iter(types.values())).gpu

    def frac(profile: str) -> tuple[float, float]:
        if profile == WHOLE:
            return 1.0, 1.0
        pr = g.profile(profile)
        return pr.compute_slices / g.compute_slices, pr.memory_slices / g.memory_slices

    most_c = max(sum(frac(k)[0] * n for k, n in cnt.items()) for _, cnt, _ in layouts)
    most_m = max(sum(frac(k)[1] * n for k, n in cnt.items()) for _, cnt, _ in layouts)
    for prof, st in types.items():
        c, mem = frac(prof)
        out[st.key] = (c / max(most_c, 1.0), mem / max(most_m, 1.0))
    return out


def closed_form(problem: Problem) -> tuple[float, str]:
    """A weaker bound with no solver, for any fleet size: every model paying for its replicas'
    shares of slots, each in its cheapest way. Linear in models times slot types (1.2 s at 2000
    models and 13 slot types), so it always runs to the end: the bound is never left at 0.

    Why it holds: give each slot type ``t`` of pool ``p`` a weight ``w_t = lam f_t + (1 - lam) g_t``
    (its compute and memory shares of a GPU, ``_slice_weights``), so a GPU's slots weigh at most 1
    and a GPU costs at least ``c_p`` times its slots' weights. In a slot, the members' time shares
    sum to at most ``u`` and their memory to at most the slot's, so for ``mu`` in [0, 1] the slot's
    weight is at least ``w_t`` times the sum over members of ``mu share / u + (1 - mu) mem / mem_t``.
    Every plan thus costs at least the sum over replicas of ``c_p w_t (mu share / u + (1 - mu)
    mem / mem_t)``, with the share bounded below linearly in the replica's rate (``_coefficients``).
    Per model that sum is at least ``n_lb`` times the least fixed part plus ``peak`` times the least
    per-rps part, and at least ``peak`` times the least cost per rps of a replica at its capacity
    (a replica serves at most ``cap_t``, so its fixed part is at least ``a r / cap_t``). Summed over
    models, for each of a few fixed ``(lam, mu)``; the best is the bound. The pools' sizes, the
    classes of duty cycle and the integrality the LP and MIP see are all dropped.
    """
    grid = [(lam, mu) for lam in (0.0, 0.5, 1.0) for mu in (1.0, 0.75, 0.5, 0.0)]
    totals = [0.0] * len(grid)
    weights: dict[str, tuple[float, float]] = {}
    for p in problem.fleet.pools:
        weights.update(_slice_weights(problem, p))
    types = [st for st in problem.all_types() if st.key in weights]
    for m in problem.shared_models:
        opts = _options(problem, m, types, weights)
        if not opts:
            continue
        peak = m.traffic.peak_rps
        n_lb = max(m.min_replicas, 1 if peak > 0 else 0)
        capmax = max(o[4] for o in opts)
        if peak > 0 and capmax > 0:
            n_lb = max(n_lb, math.ceil(peak / capmax - 1e-9))
        if n_lb == 0:
            continue
        for k, (lam, mu) in enumerate(grid):
            totals[k] += _model_floor(problem, opts, n_lb, peak, lam, mu)
    k = max(range(len(grid)), key=lambda k: totals[k])
    lam, mu = grid[k]
    # And trivially: a model that must run buys at least one GPU of a pool that can hold it.
    one = max((min((st.pool.cost_per_gpu_hour for st in types if m.memory_gb <= st.memory_gb + 1e-9
                    and problem.capacity(m, st) > 0), default=0.0)
               for m in problem.shared_models if m.min_replicas > 0 or m.traffic.peak_rps > 0), default=0.0)
    if one > totals[k]:
        return one, "one GPU of the cheapest pool that holds the largest model"
    return totals[k], f"per-model closed form (slot weights {lam:g} compute, time share {mu:g})"


_Option = tuple[float, float, float, float, float, list[tuple[float, float]]]
"""A slot type a model can use: GPU price, compute and memory weights, the model's share of the
slot's memory, its capacity there, and the linear lower bounds ``(a, b)`` on its time share."""


def _options(problem: Problem, m: Model, types: list, weights: dict[str, tuple[float, float]]) -> list[_Option]:
    """The slot types that hold ``m`` and can serve it, as the closed form prices them."""
    opts = []
    for st in types:
        if m.memory_gb > st.memory_gb + 1e-9:
            continue
        co = _coefficients(problem, m, st, 0.0, math.inf)
        if co is None:
            continue
        cap, shares = co
        wf, wm = weights[st.key]
        opts.append((st.pool.cost_per_gpu_hour, wf, wm, m.memory_gb / st.memory_gb, cap, shares))
    return opts


def _model_floor(problem: Problem, opts: list[_Option], n_lb: int, peak: float, lam: float, mu: float) -> float:
    """What one model must pay at weighting ``(lam, mu)`` (``closed_form``'s argument): its least
    replicas' fixed parts plus its peak at the least per-rps part, or its peak at the least cost
    per rps of a replica at capacity, the larger."""
    best_fixed = best_rate = best_unit = math.inf
    for price, wf, wm, memf, cap, shares in opts:
        w = price * (lam * wf + (1 - lam) * wm)
        if w <= 0:
            best_fixed = best_rate = best_unit = 0.0
            break
        mem_part = (1 - mu) * memf
        # share >= a + b r for each (a, b): per replica w (mu (a + b r) / u + mem_part)
        fixed = [w * (mu * a / problem.u + mem_part) for a, _ in shares]
        rate = [w * mu * b / problem.u for _, b in shares]
        best_fixed = min(best_fixed, min(fixed))
        best_rate = min(best_rate, min(rate))
        if peak > 0:
            best_unit = min(best_unit, max(f / cap + r for f, r in zip(fixed, rate)))
    by_parts = n_lb * best_fixed + peak * best_rate
    by_unit = peak * best_unit if peak > 0 else 0.0
    return max(by_parts, by_unit if math.isfinite(by_unit) else 0.0)


def whole_gpus(pools: list[tuple[float, int]], target: float, max_steps: int = 1_000_000) -> float:
    """The cheapest purchase of whole GPUs (``(price, at most)`` per pool) costing ``target`` or more.

    Every plan pays for whole GPUs, so a bound between two purchasable costs rises to the upper one
    (multilingual: 1 A100 + 6 L4 = 8.90 is purchasable; long-tail's 25.37 rises to 3 A100 + 18 L4 =
    25.41). Returns ``target`` itself when the search would take more than ``max_steps``.
    """
    pools = [(p, n) for p, n in pools if n > 0 and p > 0]
    if target <= 0 or not pools:
        return target
    pools.sort(key=lambda pn: pn[1])
    *rest, (p_last, n_last) = pools
    if math.prod(n + 1 for _, n in rest) > max_steps:
        return target
    best = math.inf
    for combo in itertools.product(*(range(n + 1) for _, n in rest)):
        c = sum(k * p for k, (p, _) in zip(combo, rest))
        need = target - 1e-6 - c
        k = max(0, math.ceil(need / p_last)) if need > 0 else 0
        if k <= n_last:
            best = min(best, c + k * p_last)
    return best if math.isfinite(best) and best >= target - 1e-6 else target


def _class_bounds(problem: Problem, k: int) -> list[float]:
    """A partition of duty cycles (ms) into at most ``k`` classes, cut at the models' own limits.

    A slot's cycle is at most its tightest member's limit. The first cuts go into the widest gaps
    between the models' limits (log scale), which separate groups that cannot share a slot, such as
    streaming models (cycles of ms) and batch models (seconds); the rest at quantiles.
    """
    if k <= 1:
        return [0.0, math.inf]
    his = sorted(m.slo_ms - sum(latency_scale(m, st)) for m in problem.shared_models for st in problem.all_types()
                 if problem.capacity(m, st) > 0)
    if not his:
        return [0.0, math.inf]
    gaps = sorted(((math.log(b / a), math.sqrt(a * b)) for a, b in zip(his, his[1:]) if a > 0 and b > 2 * a),
                  reverse=True)
    cuts = {c for _, c in gaps[: max(1, (k - 1) // 2)]}
    for i in range(1, k):
        if len(cuts) >= k - 1:
            break
        cuts.add(his[min(len(his) - 1, int(len(his) * i / k))])
    return [0.0] + sorted(cuts) + [math.inf]


def _coefficients(problem: Problem, m, st, lo: float, hi: float) -> tuple[float, list[tuple[float, float]]] | None:
    """What a replica of ``m`` on slot type ``st`` with its duty cycle in ``[lo, hi]`` can serve,
    and the linear lower bounds ``(a, b)`` on its share of the cycle at rate ``r`` (rps):
    share >= a + b r for each. None where no cycle in that range serves the model.

    The one statement of the slot maths this relaxation relies on (``docs/planner.md``): a member
    at rate ``r`` with cycle ``d`` takes at least ``A / d + per r`` of it (one batch of its mean
    arrivals), ``d`` is at most the class's upper end, ``slo / (1 + u)`` and the SLO limit, and
    a request costs at least ``base / max_batch + per``. Each is a bound linear in ``r`` that
    every group the truthful slot maths admits satisfies (turns included).
    """
    cap = duty_capacity(m, st, problem.u)
    lone = lone_capacity(m, st, problem.u)
    if max(cap, lone) <= 0:
        return None
    base, per = latency_scale(m, st)
    A = base + per
    M = m.max_batch
    # Per request at least base / M + per (a batch holds at most M): true of every replica, and
    # at most u for one served alone as its requests come (its rate is within u of M / l(M)).
    per_request = (0.0, base / (M * 1000.0) + per / 1000.0)
    # Every member's cycle is at most slo / (1 + u) (the cut plus a round within the SLO), and at
    # least A / u (one batch of at least one request fits the round); packer/slot.py.
    c_lo, c_hi = max(lo, A / problem.u), min(hi, m.slo_ms - A, m.slo_ms / (1.0 + problem.u))
    cap_c = 0.0
    shares = [per_request]
    if cap > 0 and c_lo <= c_hi and c_hi > 0:
        # The most one replica can serve with its cycle in [c_lo, c_hi]: its capacity alone, the SLO
        # (d + its run <= slo, its run at least base + per (1 + r d)) and the round (its share <= u).
        # A window over max_batch is served in several turns, so max_batch caps no rate by itself.
        cap_c = cap
        if per > 0:
            cap_c = min(cap_c, 1000.0 * min((m.slo_ms - A) / c_lo - 1 if c_lo > 0 else math.inf,
                                            problem.u - A / c_hi) / per)
        # Shares of the cycle: one batch a cycle of at least its mean arrivals; the SLO side.
        shares = [(A / c_hi, per / 1000.0),
                  (A / (m.slo_ms - A), (m.slo_ms / (m.slo_ms - A)) * (per / 1000.0)), per_request]
    if lone > cap_c:
        # A replica alone, served as its requests come (packer/queue.py), has no cycle: its slot
        # may count in any class, and holds it whole, so its share there is at most u. Each line is
        # replaced by the chord of min(line, u) over the rates up to cap_c: below both, since that
        # is concave, and at most u.
        cap_c = lone
        shares = [(min(a, problem.u), (min(a + b * cap_c, problem.u) - min(a, problem.u)) / cap_c)
                  for a, b in shares]
    if cap_c <= 0:
        return None
    return cap_c, shares


@dataclass
class _Aggregate:
    """The aggregate relaxation as it is built: the solver, its variable kind (integer in the MIP),
    and the per-(slot type, class) terms the capacity rows sum."""

    solver: pywraplp.Solver
    var: Callable[..., pywraplp.Variable]
    N: dict = field(default_factory=dict)
    """Slot type -> instances (from layouts); (type, class) -> slots in that class."""
    mem_terms: dict[tuple[str, int], list] = field(default_factory=lambda: defaultdict(list))
    time_terms: dict[tuple[str, int], list] = field(default_factory=lambda: defaultdict(list))


def _solve(problem: Problem, time_limit: float, *, integer: bool, max_classes: int) -> tuple[float, str] | None:
    """The aggregate LP (or MIP, ``integer``) over ``max_classes`` duty classes, as the module
    docstring states it: layouts, each model's replicas and rate per slot type and class, then
    each class's memory and time; the optimum (or a MIP's proven bound) and how it was found."""
    solver = _linear_solver(time_limit, integer=integer)
    if solver is None:  # pragma: no cover - OR-Tools always ships both
        return None
    agg = _Aggregate(solver, solver.IntVar if integer else solver.NumVar)
    cost = _layout_rows(problem, agg)
    bounds = _class_bounds(problem, max_classes)
    for m in problem.shared_models:
        _model_rows(problem, agg, m, bounds)
    _capacity_rows(problem, agg)
    solver.Minimize(cost)
    with quiet_stdout():  # HiGHS's MIP can print a debugging line past its output flag (mip.run_quiet)
        status = solver.Solve()
    name = ("aggregate MIP" if integer else "aggregate LP") + (f", {max_classes} duty classes" if max_classes > 1 else "")
    if status == pywraplp.Solver.OPTIMAL:
        # A MIP stops within its gap tolerance of its incumbent: only its best bound is a bound.
        value = min(solver.Objective().Value(), solver.Objective().BestBound()) if integer else solver.Objective().Value()
        return value, f"{name} (optimal)"
    if integer and status == pywraplp.Solver.FEASIBLE:
        bound = solver.Objective().BestBound()
        if math.isfinite(bound):
            return max(0.0, bound), f"{name} (proven bound at time limit)"
    return None


def _linear_solver(time_limit: float, *, integer: bool) -> pywraplp.Solver | None:
    """HiGHS, quiet, with the time limit (simplex for the LPs: it keeps to the limit)."""
    backend = MIP_SOLVER if integer else LP_SOLVER
    solver = pywraplp.Solver.CreateSolver(backend)
    if solver is None:  # pragma: no cover - OR-Tools always ships both
        return None
    solver.SuppressOutput()
    if backend == "HIGHS":
        # Simplex, whose time limit holds. Interior point ran the duty-class LPs until the end
        # whatever the limit: family-13100399-mixed-221's 5-class LP, given 1 s, took 16-18 s (and
        # the plan 36.6 s, over issue 14's 30 s), where simplex solves it in 6.9 s; long-tail's in
        # 1.7 s against 3.2 s (interior point was the faster at 8 classes, fifth session).
        solver.SetSolverSpecificParametersAsString("output_flag=false\nlog_to_console=false\n")
    solver.SetTimeLimit(int(time_limit * 1000))
    return solver


def _layout_rows(problem: Problem, agg: _Aggregate) -> Any:
    """Variables ``z[p, L]`` within each pool's size, and ``N`` per slot type from them; returns
    the GPU cost, the objective."""
    cost = 0
    for p in problem.fleet.pools:
        layouts = _layouts(problem, p.name)
        zs = []
        for lname, cnt, _ in layouts:
            zv = agg.var(0, p.max_gpus, f"z[{p.name},{lname}]")
            zs.append((zv, cnt))
            cost += p.cost_per_gpu_hour * zv
        agg.solver.Add(sum(zv for zv, _ in zs) <= p.max_gpus)
        for st in problem.types[p.name]:
            agg.N[st.key] = sum(cnt[st.profile] * zv for zv, cnt in zs if cnt[st.profile])
    return cost


def _model_rows(problem: Problem, agg: _Aggregate, m: Model, bounds: list[float]) -> None:
    """One model's replicas ``q`` and rate ``v`` per slot type and duty class: its whole peak
    served, at least its least replica count, each class's share of the cycle ``t``."""
    solver, N, inf = agg.solver, agg.N, agg.solver.infinity()
    peak = m.traffic.peak_rps
    caps = {st.key: (st, problem.capacity(m, st)) for st in problem.all_types()}
    caps = {k: v for k, v in caps.items() if v[1] > 0 and k in N}
    capmax = max((c for _, c in caps.values()), default=0.0)
    n_lb = max(m.min_replicas, 1 if peak > 0 else 0)
    if peak > 0 and capmax > 0:
        n_lb = max(n_lb, math.ceil(peak / capmax - 1e-9))
    if n_lb == 0:
        return
    qs, vs = [], []
    for key, (st, cap) in caps.items():
        for j in range(len(bounds) - 1):
            # Classes are one partition of all cycles, shared by every model, so a slot is
            # counted in exactly one class whoever its members are.
            co = _coefficients(problem, m, st, bounds[j], bounds[j + 1])
            if co is None:
                continue
            cap_c, shares = co
            # In any plan a replica count and a slot count are whole numbers.
            q = agg.var(0, inf, f"q[{m.name},{key},{j}]")
            v = solver.NumVar(0, inf, f"v[{m.name},{key},{j}]")
            solver.Add(v <= cap_c * q)
            if (key, j) not in N:
                N[(key, j)] = agg.var(0, inf, f"N[{key},{j}]")
            solver.Add(q <= N[(key, j)])
            # A replica at rate r with cycle d takes A / d + per r of it; d <= c_hi, and d is
            # below the SLO and max_batch limits, each linear in r (module docstring).
            t = solver.NumVar(0, inf, f"t[{m.name},{key},{j}]")
            for a, b in shares:
                solver.Add(t >= a * q + b * v)
            agg.mem_terms[(key, j)].append(m.memory_gb * q)
            agg.time_terms[(key, j)].append(t)
            qs.append(q)
            vs.append(v)
    solver.Add(sum(vs) >= peak)
    solver.Add(sum(qs) >= n_lb)


def _capacity_rows(problem: Problem, agg: _Aggregate) -> None:
    """Slots of a type are split over duty classes; each class holds its members' memory and time."""
    solver, N = agg.solver, agg.N
    by_type: dict[str, list] = defaultdict(list)
    mem_of = {st.key: st.memory_gb for st in problem.all_types()}
    for k in [k for k in N if isinstance(k, tuple)]:
        by_type[k[0]].append(N[k])
        solver.Add(sum(agg.mem_terms[k]) <= mem_of[k[0]] * N[k])
        solver.Add(sum(agg.time_terms[k]) <= problem.u * N[k])
    for k, parts in by_type.items():
        solver.Add(sum(parts) <= N[k])
