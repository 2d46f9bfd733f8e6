"""The CP-SAT packing model, solved whole for small fleets and as LNS windows for large ones.

It reads like the maths (``docs/planner.md``):

* data: replicas (with a choice of replica count where the whole model is in the window), pools,
  their valid MIG layouts;
* variables: ``z[p, L]`` GPUs of pool ``p`` cut to layout ``L``; ``a[s]`` slot ``s`` (an instance
  of some profile) is in use; ``c[s, d]`` slot ``s`` runs duty-cycle class ``d``; ``x[i, s]``
  replica ``i`` sits in slot ``s``; ``y[m, n]`` model ``m`` runs ``n`` replicas;
* constraints: instances used <= instances the layouts provide; memory; at duty class ``d`` the
  members' batches fit in ``u * d`` and every member's SLO allows ``d``; one replica of a model per
  slot; mixed workload kinds only where the pool time-slices; pool size;
* objective: GPU cost, then fewer slots.

A slot's duty cycle is one of its candidate members' largest admissible cycles ``hi``: a group is
feasible at some cycle exactly when it is feasible at its tightest member's ``hi`` (a batch's share
``A / d + B`` only falls as ``d`` grows), so choosing among these values loses nothing and keeps
every capacity constraint linear. (An earlier version rounded cycles down to a 1.2 grid; that lost
up to a sixth of a slot and hid a cheaper llm-platform plan.) GPU identities are left out of the
model (they are symmetric); ``realise`` deals the chosen instances out to GPUs afterwards.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from ortools.sat.python import cp_model

from packer.catalog import MigLayout, mig_layouts
from packer.fleet import Pool
from packer.planner.assemble import Gpu, assign_starts, to_gpus
from packer.planner.model import Problem, Rep, Slot
from packer.slot import WHOLE, SlotType

SCALE = 1000  # capacity units per duty cycle
COST_SCALE = 1000  # cost in thousandths

SEARCH = "a CP-SAT search"
"""The stage ``Problem.past`` names where the wall clock ends a search before its deterministic time."""


def _layouts(problem: Problem, pool_name: str) -> list[tuple[str, Counter, MigLayout | None]]:
    pool = problem.fleet.pool(pool_name)
    out: list[tuple[str, Counter, MigLayout | None]] = [(WHOLE, Counter({WHOLE: 1}), None)]
    if pool.mig and problem.settings.use_mig:
        # A layout of one full-GPU instance (7g) is a whole GPU with less memory: never better.
        out += [(l.name, Counter(l.profiles), l) for l in mig_layouts(pool.gpu) if len(l.instances) > 1]
    return out


@dataclass
class _Window:
    """The CP-SAT model of one window: its data and variables, filled in by the steps below in
    a fixed order (CP-SAT's search depends on the order variables and constraints are added)."""

    problem: Problem
    m: cp_model.CpModel
    u_cap: int
    """A slot's usable capacity per duty cycle, in ``SCALE`` units."""
    reps: list[tuple[Rep, cp_model.IntVar | int]] = field(default_factory=list)
    """Every replica the window may place, with 1 (fixed) or its replica-count option's literal."""
    y: dict[tuple[str, int], cp_model.IntVar] = field(default_factory=dict)
    """``y[m, n]``: model ``m`` runs ``n`` replicas."""
    pools: list[Pool] = field(default_factory=list)
    z: dict[tuple[str, str], cp_model.IntVar] = field(default_factory=dict)
    """``z[p, L]``: GPUs of pool ``p`` cut to layout ``L``."""
    slots: list[tuple[SlotType, int]] = field(default_factory=list)
    """Slot templates: the ``j``-th slot of each slot type."""
    active_of: dict[str, list[cp_model.IntVar]] = field(default_factory=dict)
    """``a[s]`` per slot type, in order: slot ``j + 1`` in use implies slot ``j`` is."""
    x: dict[tuple[int, int], cp_model.IntVar] = field(default_factory=dict)
    """``x[i, s]``: replica ``i`` sits in slot ``s`` (only where it fits alone)."""
    by_slot: dict[int, list[int]] = field(default_factory=lambda: defaultdict(list))
    class_of: dict[int, tuple[dict[float, cp_model.IntVar], dict]] = field(default_factory=dict)
    """Per slot, ``c[s, d]`` per duty-cycle class ``d`` and its candidate members' items."""
    used: list[cp_model.IntVar] = field(default_factory=list)
    """The ``a[s]`` of slots with any candidate member: the objective counts them."""


def solve_window(problem: Problem, *, free_models: dict[str, list[int]], fixed_reps: list[Rep],
                 gpu_limit: dict[str, int], hint: list[Gpu] | None, upper_cost: float | None,
                 time_limit: float, seed: int, spent: list[float] | None = None,
                 concentrate: bool = False) -> tuple[list[Gpu], float, str] | None:
    """Pack a window of replicas onto new GPUs as cheaply as possible.

    Returns (gpus, cost, status) or None when no solution cheaper than ``upper_cost`` was found.
    With ``concentrate``, a solution at ``upper_cost`` is allowed too, and among equally cheap
    ones the solver packs load into the first slots of each type: the last ones empty out, so a
    later window can drop them. The solver's deterministic time is appended to ``spent``, so a
    caller can budget a search in units that do not depend on the machine's load.

    The steps follow the module docstring's maths: data and variables, constraints, objective,
    hint, solve, then the GPUs read back from the solution.
    """
    w = _Window(problem, cp_model.CpModel(), int(math.floor(SCALE * problem.u)))
    _replicas(w, free_models, fixed_reps)
    _slot_templates(w, gpu_limit, _gpu_bar(upper_cost, hint))
    if not _assignment(w):
        return None
    for si in range(len(w.slots)):
        _slot_constraints(w, si)
    _spread(w)
    _objective(w, upper_cost, concentrate)
    if hint:
        _add_hint(w, hint)
    solver = cp_model.CpSolver()
    # Deterministic for a seed: one worker and a deterministic-time budget; the wall clock is only
    # a guard for a much slower machine. (Interleaved multi-worker search would also be
    # deterministic, but OR-Tools 9.15 aborts on it with a solution hint: "Check failed:
    # heuristics.fixed_search != nullptr".)
    problem.cp_limits(solver, time_limit, 2 * time_limit + 1)
    solver.parameters.num_workers = 1
    solver.parameters.random_seed = seed
    st_code = solver.Solve(w.m)
    problem.cp_stopped(solver, SEARCH)
    if spent is not None:
        spent.append(solver.deterministic_time)
    if st_code not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None
    gpus = _solution(w, solver)
    # The model bounds a model's replicas in a pool by the pool's GPUs, not per GPU: it may put two
    # on slices of one MIG GPU, and realise's fallback then opens a GPU the model did not buy, past
    # the pool's size (found by tests/test_planner_family.py: 6 GPUs in a pool of 5). Not a packing.
    used = Counter()
    for g in gpus:
        used[g.pool.name] += g.width
    if any(n > gpu_limit.get(p, 0) for p, n in used.items()):
        return None
    total = sum(g.pool.cost_per_gpu_hour for g in gpus)
    return gpus, total, "optimal" if st_code == cp_model.OPTIMAL else "feasible"


def _replicas(w: _Window, free_models: dict[str, list[int]], fixed_reps: list[Rep]) -> None:
    """Data: the fixed replicas, and per free model one option per replica count (exactly one
    chosen, ``y``), each option's replicas present only if it is."""
    w.reps = [(r, 1) for r in fixed_reps]
    for name, options in sorted(free_models.items()):
        model = w.problem.fleet.model(name)
        lits = []
        for n in options:
            v = w.m.NewBoolVar(f"y[{name},{n}]")
            w.y[(name, n)] = v
            lits.append(v)
            w.reps += [(Rep(model, k, n), v) for k in range(n)]
        w.m.AddExactlyOne(lits)


def _gpu_bar(upper_cost: float | None, hint: list[Gpu] | None) -> float | None:
    """No better plan uses more GPUs of a pool than the incumbent's cost (or the hint's) buys."""
    if upper_cost is not None:
        return upper_cost
    return sum(g.pool.cost_per_gpu_hour for g in hint) if hint else None


def _slot_templates(w: _Window, gpu_limit: dict[str, int], bar: float | None) -> None:
    """Variables ``z`` (layouts per pool, within the pool's GPU bound) and ``a`` (slot templates
    per slot type, as many as replicas fit alone and the layouts could provide); constraint:
    slots in use <= the instances the chosen layouts provide."""
    m, problem = w.m, w.problem
    w.pools = [p for p in problem.fleet.pools if gpu_limit.get(p.name, 0) > 0]
    for p in w.pools:
        g_max = gpu_limit[p.name]
        if bar is not None:
            g_max = min(g_max, int(bar / p.cost_per_gpu_hour + 1e-9))
        if g_max <= 0:
            continue
        layouts = _layouts(problem, p.name)
        for lname, _, _ in layouts:
            w.z[(p.name, lname)] = m.NewIntVar(0, g_max, f"z[{p.name},{lname}]")
        m.Add(sum(w.z[(p.name, l)] for l, _, _ in layouts) <= g_max)
        for st in problem.types[p.name]:
            fit = sum(1 for r, _ in w.reps if problem.fits_alone(r, st))
            if not fit:
                continue
            per_gpu = max(c[st.profile] for _, c, _ in layouts)
            if per_gpu == 0:
                continue
            k_max = min(fit, g_max * per_gpu)
            active = [m.NewBoolVar(f"a[{st.key},{j}]") for j in range(k_max)]
            for j in range(k_max - 1):
                m.AddImplication(active[j + 1], active[j])  # symmetry: slots of a type fill in order
            m.Add(sum(active) <= sum(c[st.profile] * w.z[(p.name, l)] for l, c, _ in layouts))
            for j in range(k_max):
                w.slots.append((st, j))
            w.active_of[st.key] = active


def _assignment(w: _Window) -> bool:
    """Variables ``x``; constraint: every present replica sits in exactly one slot. False when a
    fixed replica fits no slot of the window (no packing)."""
    for si, (st, j) in enumerate(w.slots):
        for ri, (r, _) in enumerate(w.reps):
            if w.problem.fits_alone(r, st):
                w.x[(ri, si)] = w.m.NewBoolVar("")
                w.by_slot[si].append(ri)
    for ri, (r, present) in enumerate(w.reps):
        terms = [w.x[(ri, si)] for si in range(len(w.slots)) if (ri, si) in w.x]
        if not terms:
            if isinstance(present, int):
                return False
            w.m.Add(present == 0)
            continue
        w.m.Add(sum(terms) == present)
    return True


def _slot_constraints(w: _Window, si: int) -> None:
    """One slot's constraints: in use if anyone sits in it; memory; one replica of a model;
    workload kinds apart where the pool does not time-slice; one duty-cycle class ``c`` when in
    use, each member's load at that class within ``u * d``."""
    m, reps, x = w.m, w.reps, w.x
    st, j = w.slots[si]
    a = w.active_of[st.key][j]
    members = w.by_slot.get(si, [])
    if not members:
        m.Add(a == 0)
        return
    w.used.append(a)
    for ri in members:
        m.AddImplication(x[(ri, si)], a)
    # memory
    m.Add(sum(int(round(reps[ri][0].model.memory_gb * 1000)) * x[(ri, si)] for ri in members)
          <= int(math.floor(st.memory_gb * 1000)))
    # one replica of a model per slot
    per_model: dict[str, list[int]] = defaultdict(list)
    for ri in members:
        per_model[reps[ri][0].model.name].append(ri)
    for ris in per_model.values():
        if len(ris) > 1:
            m.AddAtMostOne(x[(ri, si)] for ri in ris)
    # workload kinds
    if not st.pool.time_slicing:
        kinds = {reps[ri][0].model.kind for ri in members}
        if len(kinds) > 1:
            kb = m.NewBoolVar("")  # 1: batch slot, 0: streaming slot
            for ri in members:
                if reps[ri][0].model.kind == "batch":
                    m.AddImplication(x[(ri, si)], kb)
                else:
                    m.AddImplication(x[(ri, si)], kb.Not())
    # duty classes
    items = {ri: w.problem.item(reps[ri][0], st) for ri in members}
    # The slot runs at its tightest member's cycle: one class per distinct member limit.
    classes = sorted({it.hi for it in items.values() if it.hi > 0})
    cvars = {d: m.NewBoolVar("") for d in classes}
    w.class_of[si] = (cvars, items)
    m.Add(sum(cvars.values()) == a)
    for ri, it in items.items():
        ok = [cvars[d] for d in classes if d <= it.hi and SCALE * it.load(d) / d <= w.u_cap]
        if not ok:
            m.Add(x[(ri, si)] == 0)
        else:
            m.Add(x[(ri, si)] <= sum(ok))
    for d, cv in cvars.items():
        terms = []
        for ri, it in items.items():
            if d <= it.hi:
                wt = int(math.ceil(SCALE * it.load(d) / d))
                if wt <= w.u_cap:
                    terms.append(wt * x[(ri, si)])
        if terms:
            m.Add(sum(terms) <= w.u_cap).OnlyEnforceIf(cv)


def _spread(w: _Window) -> None:
    """Replicas of one model spread over distinct GPUs of a pool: at most as many as GPUs."""
    for p in w.pools:
        if not any(k[0] == p.name for k in w.z):
            continue
        gpus_p = sum(v for (pn, _), v in w.z.items() if pn == p.name)
        per_model: dict[str, list] = defaultdict(list)
        for (ri, si), v in w.x.items():
            if w.slots[si][0].pool.name == p.name:
                per_model[w.reps[ri][0].model.name].append(v)
        for vs in per_model.values():
            if len(vs) > 1:
                w.m.Add(sum(vs) <= gpus_p)


def _objective(w: _Window, upper_cost: float | None, concentrate: bool) -> None:
    """GPU cost (below ``upper_cost``, or at it when concentrating), then fewer slots; or, when
    concentrating, load packed into the first slots of each type."""
    cost = sum(int(round(w.problem.fleet.pool(pn).cost_per_gpu_hour * COST_SCALE)) * v for (pn, _), v in w.z.items())
    if upper_cost is not None:
        w.m.Add(cost <= int(round(upper_cost * COST_SCALE)) - (0 if concentrate else 1))
    if concentrate:
        # A replica's size (_size) in slot j of a type weighs j: load moves to low j, high j empties.
        pos = []
        for si, (st, j) in enumerate(w.slots):
            for ri in w.by_slot.get(si, []):
                pos.append(j * _size(w.problem, w.reps[ri][0], st) * w.x[(ri, si)])
        big = 1 + sum(j * 1000 * len(w.by_slot.get(si, [])) for si, (st, j) in enumerate(w.slots))
        w.m.Minimize(cost * big + sum(pos))
    else:
        w.m.Minimize(cost * (len(w.used) + 1) + sum(w.used))


def _solution(w: _Window, solver: cp_model.CpSolver) -> list[Gpu]:
    """The slots in use with their members, dealt out to GPUs of the chosen layouts."""
    chosen: list[Slot] = []
    for si, (st, j) in enumerate(w.slots):
        members = [w.reps[ri][0] for ri in w.by_slot.get(si, []) if solver.Value(w.x[(ri, si)])]
        if members:
            chosen.append(Slot(st, members))
    layouts_chosen: dict[str, list[tuple[str, Counter, MigLayout | None]]] = defaultdict(list)
    for p in w.pools:
        for lname, cnt, lay in _layouts(w.problem, p.name):
            if (p.name, lname) in w.z:
                layouts_chosen[p.name] += [(lname, cnt, lay)] * solver.Value(w.z[(p.name, lname)])
    return realise(w.problem, chosen, layouts_chosen)


def _size(problem: Problem, rep: Rep, st: SlotType) -> int:
    """A replica's size in a slot (thousandths): its memory or compute fraction, the larger; the
    compute at its own cycle limit, the least it can take."""
    it = problem.item(rep, st)
    mem = rep.model.memory_gb / st.memory_gb
    comp = it.load(it.hi) / (it.hi * problem.u) if it.hi > 0 else 1.0
    return int(round(1000 * min(1.0, max(mem, comp))))


def realise(problem: Problem, slots: list[Slot],
            layouts: dict[str, list[tuple[str, Counter, MigLayout | None]]]) -> list[Gpu]:
    """Deal the chosen slots out to concrete GPUs of the chosen layouts.

    Replicas of one model must sit on different GPUs: slots are placed most-constrained first,
    each onto the GPU with a free instance of its profile that holds none of its models. If that
    fails (rare), the first-fit assembly in ``assemble.to_gpus`` is used instead.
    """
    gpus: list[Gpu] = []
    free: list[Counter] = []
    for pool_name, ls in sorted(layouts.items()):
        pool = problem.fleet.pool(pool_name)
        for lname, cnt, lay in ls:
            gpus.append(Gpu(pool, [], lay))
            free.append(Counter(cnt))
    for s in sorted(slots, key=lambda s: (-len(s.reps), -s.type.compute_fraction, s.type.key)):
        for gi, g in enumerate(gpus):
            if g.pool.name == s.type.pool.name and free[gi][s.type.profile] > 0 and not (s.models() & g.models()):
                g.slots.append(s)
                free[gi][s.type.profile] -= 1
                break
        else:
            return to_gpus(problem, slots)
    used = [g for g in gpus if g.slots]
    for g in used:
        if g.layout is not None:
            assign_starts(g)
    return used


def _add_hint(w: _Window, hint: list[Gpu]) -> None:
    """A complete hint (every assignment, slot and class variable), so CP-SAT starts from the hint
    instead of spending its budget completing a partial one; the replica-count options as the
    hint chose them."""
    m, z, slots, reps, x, active_of, class_of = w.m, w.z, w.slots, w.reps, w.x, w.active_of, w.class_of
    counts: Counter = Counter()
    for g in hint:
        lname = g.layout.name if g.layout is not None else WHOLE
        counts[(g.pool.name, lname)] += 1
    for k, v in z.items():
        m.AddHint(v, counts.get(k, 0))
    # Slot-level hints: the j-th slot of each type gets the j-th hinted slot of that type.
    rep_index = {(r.model.name, r.index, r.count): ri for ri, (r, _) in enumerate(reps)}
    seen: Counter = Counter()
    slot_index = {(st.key, j): si for si, (st, j) in enumerate(slots)}
    ones: set[tuple[int, int]] = set()
    for g in hint:
        for s in g.slots:
            if not s.reps:
                continue
            j = seen[s.type.key]
            seen[s.type.key] += 1
            si = slot_index.get((s.type.key, j))
            if si is None:
                continue
            members = []
            for r in s.reps:
                ri = rep_index.get((r.model.name, r.index, r.count))
                if ri is not None and (ri, si) in x:
                    ones.add((ri, si))
                    members.append(ri)
            if si in class_of and members:
                cvars, items = class_of[si]
                tight = min(items[ri].hi for ri in members)
                for d, cv in cvars.items():
                    m.AddHint(cv, 1 if d == tight else 0)
    for key, v in x.items():
        if key not in ones:
            m.AddHint(v, 0)
    for key, active in active_of.items():
        for j, a in enumerate(active):
            m.AddHint(a, 1 if j < seen[key] else 0)
    for si, (cvars, _) in class_of.items():
        st, j = slots[si]
        if j >= seen[st.key]:
            for cv in cvars.values():
                m.AddHint(cv, 0)
    hinted = Counter((r.model.name, r.count) for g in hint for s in g.slots for r in s.reps)
    for (name, n), v in w.y.items():
        m.AddHint(v, 1 if hinted[(name, n)] else 0)
