"""From slots to GPUs to nodes: choose each GPU's MIG layout and each GPU's node.

Slots of one pool are packed onto GPUs first-fit by size, keeping each GPU's set of MIG profiles
a sub-multiset of a valid layout and never putting two replicas of one model on one GPU. Each GPU
then takes the maximal layout that contains its profiles; the instances nobody uses stay as empty
slots for later moves. GPUs go to nodes so that replicas of a model with ``min_replicas >= 2``
land on different nodes where the pool has several.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from ortools.sat.python import cp_model

from packer.catalog import MigLayout, gpu_type
from packer.fleet import Model, Pool
from packer.planner.model import Problem, Slot, layout_counters, valid_multiset
from packer.errors import UserError
from packer.slot import WHOLE


@dataclass
class Gpu:
    pool: Pool
    slots: list[Slot] = field(default_factory=list)
    layout: MigLayout | None = None
    multi: tuple[Model, int] | None = None
    """For a ``gpus_per_replica > 1`` replica: (model, replica index); its GPUs are whole."""
    width: int = 1
    """GPUs this entry stands for: 1, or gpus_per_replica of a multi-GPU replica."""
    node: int = 0
    index: int = 0
    pinned: bool = False
    """Node and index come from the current plan and must not change."""

    def models(self) -> set[str]:
        if self.multi:
            return {self.multi[0].name}
        return {r.model.name for s in self.slots for r in s.reps}

    @property
    def mig(self) -> bool:
        return any(s.type.profile != WHOLE for s in self.slots)


def to_gpus(problem: Problem, slots: list[Slot]) -> list[Gpu]:
    """Pack slots onto GPUs per pool and fix each MIG GPU's layout and instance offsets."""
    gpus: list[Gpu] = []
    for pool in problem.fleet.pools:
        mine = [s for s in slots if s.type.pool.name == pool.name and s.reps]
        for s in mine:
            if s.type.profile == WHOLE:
                gpus.append(Gpu(pool, [s]))
        mig = [s for s in mine if s.type.profile != WHOLE]
        mig.sort(key=lambda s: (-s.type.compute_fraction, -s.type.memory_gb, s.type.profile))
        # First fit over the GPUs opened so far, in order, each GPU keeping the profiles it can still
        # take and leaving the scan once it takes none: testing every GPU's layouts for every slot
        # took 7 of family-500020-mixed-228's 38 s (2,155 GPUs). The same GPUs are chosen.
        profiles = sorted({p.name for p in gpu_type(pool.gpu).mig_profiles}) if pool.mig else []
        open_: list[Gpu] = []
        room: list[tuple[Gpu, Counter, set[str]]] = []  # the open GPUs with room, their instances and what fits
        for s in mig:
            for i, (g, have, can) in enumerate(room):
                if s.type.profile in can and not (s.models() & g.models()):
                    g.slots.append(s)
                    now = have + Counter([s.type.profile])
                    if more := _fits(pool, profiles, now):
                        room[i] = (g, now, more)
                    else:
                        del room[i]
                    break
            else:
                g = Gpu(pool, [s])
                open_.append(g)
                one = Counter([s.type.profile])
                if more := _fits(pool, profiles, one):
                    room.append((g, one, more))
        for g in open_:
            _fix_layout(g)
        gpus.extend(open_)
    return gpus


def _fits(pool: Pool, profiles: list[str], have: Counter) -> set[str]:
    """The ``profiles`` a GPU of ``pool`` whose instances are ``have`` can still take, one more each."""
    return {p for p in profiles if valid_multiset(pool, have + Counter([p]))}


FEWEST_CELLS = 10_000
"""Most slot-on-GPU choices (a pool's MIG GPUs times their slots) :func:`fewest_gpus` gives CP-SAT."""


def fewest_gpus(problem: Problem, slots: list[Slot], seconds: float) -> list[Gpu]:
    """:func:`to_gpus`, with each pool's MIG slots on the fewest GPUs CP-SAT finds in ``seconds``
    (deterministic time) where first fit opened more: each GPU one maximal layout or none, its
    slots a sub-multiset of it, one replica of a model per GPU. First fit by size misses packings
    that fill layouts to the last instance (family-300014-multilingual-16: three A100s where two
    hold the same eight slots). A pool whose MIG GPUs times their slots pass ``FEWEST_CELLS`` keeps
    first fit: CP-SAT's model takes seconds to build there, and its deterministic second ran to
    1.3-3.7 s of wall clock on family-300028-mixed-32 (109 slots on 71 A100s: 66 GPUs in 1.3 s;
    83 on 36: 29 in 2.4 s, 28 in 7.2 s for 2.2 deterministic seconds)."""
    first = to_gpus(problem, slots)
    out: list[Gpu] = []
    for pool in problem.fleet.pools:
        mine = [g for g in first if g.pool.name == pool.name]
        mig = [g for g in mine if g.mig]
        mig_slots = [s for g in mig for s in g.slots]
        fewer = None
        if 1 < len(mig) and len(mig) * len(mig_slots) <= FEWEST_CELLS:
            # The same slots, in the same order, give CP-SAT the same model and the same answer
            # (one worker, a deterministic limit): asked again, it is looked up. The two dives and
            # the master often deal the same slots: family-3800115-mixed-41 dealt its 24 A100s to
            # 17 twice, 2.6 s each.
            key = (pool.name, len(mig), seconds,
                   tuple((s.type.profile, tuple(r.model.name for r in s.reps)) for s in mig_slots))
            if key not in problem.fewest:
                problem.fewest[key] = _fewest_mig(problem, pool, mig_slots, len(mig), seconds)
            groups = problem.fewest[key]
            if groups is not None:
                fewer = [Gpu(pool, [mig_slots[i] for i in group]) for group in groups]
                for g in fewer:
                    _fix_layout(g)
        out += [g for g in mine if not g.mig] + (fewer if fewer is not None else mig)
    return out


def _fewest_mig(problem: Problem, pool: Pool, slots: list[Slot], most: int, seconds: float) -> list[list[int]] | None:
    """MIG ``slots`` of ``pool`` on fewer than ``most`` GPUs (CP-SAT): the slots' indices on each
    GPU used, or None."""
    layouts = [c for c, _ in layout_counters(pool)]
    cp = cp_model.CpModel()
    use = [cp.new_bool_var(f"use[{g}]") for g in range(most)]
    at = {(i, g): cp.new_bool_var(f"at[{i},{g}]") for i in range(len(slots)) for g in range(most)}
    cut = {(g, k): cp.new_bool_var(f"cut[{g},{k}]") for g in range(most) for k in range(len(layouts))}
    for i in range(len(slots)):
        cp.add_exactly_one(at[i, g] for g in range(most))
    profiles = sorted({s.type.profile for s in slots})
    for g in range(most):
        cp.add(sum(cut[g, k] for k in range(len(layouts))) == use[g])
        for prof in profiles:
            cp.add(sum(at[i, g] for i, s in enumerate(slots) if s.type.profile == prof)
                   <= sum(c[prof] * cut[g, k] for k, c in enumerate(layouts)))
        holders: dict[str, list] = defaultdict(list)
        for i, s in enumerate(slots):
            for r in s.reps:
                holders[r.model.name].append(at[i, g])
        for lits in holders.values():
            if len(lits) > 1:
                cp.add_at_most_one(lits)
        if g:
            cp.add_implication(use[g], use[g - 1])  # GPUs are alike: the used ones come first
    cp.add(sum(use) <= most - 1)
    cp.minimize(sum(use))
    solver = cp_model.CpSolver()
    problem.cp_limits(solver, max(0.1, seconds), max(1.0, 4 * seconds))  # the clock: a much slower machine's guard
    solver.parameters.num_workers = 1
    code = solver.solve(cp)
    problem.cp_stopped(solver, "the dealing of MIG slots onto GPUs")
    if code not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None
    on: dict[int, list[int]] = defaultdict(list)
    for (i, g), lit in at.items():
        if solver.value(lit):
            on[g].append(i)
    return [on[g] for g in sorted(on)]


def _fix_layout(g: Gpu) -> None:
    """Choose the maximal layout holding the GPU's profiles, preferring large spare instances."""
    have = Counter(s.type.profile for s in g.slots)
    best, best_key = None, None
    for cnt, layout in layout_counters(g.pool):
        if all(cnt[k] >= v for k, v in have.items()):
            spare = cnt - have
            key = (-sum(v for v in spare.values()), layout.name)  # fewest, so largest, spare instances
            if best_key is None or key < best_key:
                best, best_key = layout, key
    assert best is not None, f"no layout holds {dict(have)}"
    g.layout = best
    assign_starts(g)


def assign_starts(g: Gpu) -> None:
    """Give each MIG slot of the GPU the offset of a free instance of its profile in the layout."""
    assert g.layout is not None
    free = list(g.layout.instances)
    for s in sorted(g.slots, key=lambda s: s.type.profile):
        for i, (p, start) in enumerate(free):
            if p == s.type.profile:
                s.start = start
                free.pop(i)
                break


def spare_slots(problem: Problem, gpus: list[Gpu]) -> list[Slot]:
    """Empty MIG instances of the chosen layouts: room a later move may use at no extra cost."""
    out = []
    for g in gpus:
        if g.layout is None:
            continue
        used = Counter((s.type.profile, s.start) for s in g.slots)
        for p, start in g.layout.instances:
            if used[(p, start)]:
                used[(p, start)] -= 1
                continue
            st = next(t for t in problem.types[g.pool.name] if t.profile == p)
            s = Slot(st, [], start=start)
            g.slots.append(s)
            out.append(s)
    return out


def assign_nodes(problem: Problem, gpus: list[Gpu]) -> list[str]:
    """Give every GPU a node and an index; returns warnings for spread that could not be met."""
    for pool in problem.fleet.pools:
        mine = [g for g in gpus if g.pool.name == pool.name]
        if not mine:
            continue
        for g, n, i in _place_pool(problem, gpus, pool, mine):
            g.node, g.index = n, i
    _spread_by_swaps(problem, gpus)
    _spread_exactly(problem, gpus)
    return _spread_warnings(problem, gpus) + _spot_warnings(problem, gpus)


def _place_pool(problem: Problem, gpus: list[Gpu], pool: Pool, mine: list[Gpu]) -> list[tuple[Gpu, int, int]]:
    """(GPU, node, index) for the pool's GPUs ``mine``: on the fewest nodes that hold them and
    spread the models that ask for it, kept GPUs where they are when the rest still fit."""
    need = sum(g.width for g in mine)
    spread = {m.name for m in problem.fleet.models if m.min_replicas >= 2}
    if pool.spot:  # a spot node can go at any time: one node should take as few replicas of a model as it can
        spread |= {m.name for m in problem.fleet.models}
    nodes_n = max(math.ceil(need / pool.gpus_per_node),
                  min(pool.max_nodes, 2) if any(g.models() & spread for g in mine) else 1)
    if pool.spot:  # a spot floor survives one node when each node holds at most L of the model (Model.spot_replicas)
        nodes_n = max([nodes_n] + [math.ceil(sum(1 for g in mine if m in g.models()) / lose)
                                   for m, lose in _spot_spread(problem, gpus).items()])
    nodes_n = min(nodes_n, pool.max_nodes)
    nodes_n = max([nodes_n] + [g.node + 1 for g in mine if g.pinned])
    order = sorted((g for g in mine if not g.pinned), key=lambda g: (-g.width, -len(g.models())))
    spots = _spot_spread(problem, gpus) if pool.spot else {}
    try:
        best = _fill_spread_or_not(pool, mine, order, nodes_n, spread, need)
    except UserError:
        if not any(g.pinned for g in mine):
            raise
        # A re-plan keeps the current plan's GPUs where they are; the holes they leave can
        # lack the adjacent GPUs a new 2-GPU replica needs (bench/spot.py, llm-platform at
        # floor 0.25: "16 GPUs do not fit in 2 nodes" on 16 GPUs). Then the pool is laid out
        # afresh and the migration moves what changed, make before break.
        for g in mine:
            g.pinned = False
        order = sorted(mine, key=lambda g: (-g.width, -len(g.models())))
        best = _fill_spread_or_not(pool, mine, order, nodes_n, spread, need)
    if spots and _over(best, spots):
        best = _other_orders(pool, mine, order, nodes_n, spread, need, spots, best)
    return best


def _fill_spread_or_not(pool: Pool, mine: list[Gpu], order: list[Gpu], nodes_n: int, spread: set[str],
                        need: int) -> list[tuple[Gpu, int, int]]:
    """:func:`_fill`, spreading ``spread``'s replicas over nodes where the GPUs then still fit;
    else without spreading (the plan then warns). Spreading first can split the nodes' room:
    four 3-GPU replicas of a two-replica model spread over three 6-GPU nodes, then three 2-GPU
    replicas of another found 1 GPU free on each, and the fleet was refused ("18 GPUs do not fit
    in 3 nodes") where [3, 3], [3, 3], [2, 2, 2] fits."""
    try:
        return _fill(pool, mine, order, nodes_n, spread, need)
    except UserError as e:
        first = e
    if spread:
        try:
            return _fill(pool, mine, order, nodes_n, set(), need)
        except UserError:
            pass
    found = _bins(pool, mine)
    if found is None:
        raise first
    return found


BIN_STEPS = 200_000
"""Most steps of :func:`_bins`' search (a few milliseconds per thousand)."""


def _bins(pool: Pool, mine: list[Gpu]) -> list[tuple[Gpu, int, int]] | None:
    """The pool's multi-GPU replicas dealt to its nodes by a search (bin packing, largest first,
    backtracking, an empty node tried once), the single GPUs in the room left; None where it
    finds none within ``BIN_STEPS`` or a GPU is pinned (a re-plan's). The greedy fill,
    largest first onto the fullest node, can strand room: replicas of 4, 3, 3, 2, 2 and 2 GPUs on
    two 8-GPU nodes fit as [4, 2, 2], [3, 3, 2], which it missed."""
    if any(g.pinned for g in mine):
        return None
    size, nodes = pool.gpus_per_node, pool.max_nodes
    wide = sorted((g for g in mine if g.width > 1), key=lambda g: -g.width)
    singles = [g for g in mine if g.width == 1]
    if sum(g.width for g in mine) > size * nodes:
        return None
    load = [0] * nodes
    where = [0] * len(wide)
    steps = [0]

    def place(k: int) -> bool:
        if k == len(wide):
            return True
        steps[0] += 1
        if steps[0] > BIN_STEPS:
            return False
        tried_empty = False
        for n in range(nodes):
            if load[n] + wide[k].width > size or (load[n] == 0 and tried_empty):
                continue
            tried_empty = tried_empty or load[n] == 0
            load[n] += wide[k].width
            where[k] = n
            if place(k + 1):
                return True
            load[n] -= wide[k].width
        return False

    if not place(0):
        return None
    out, next_free = [], [0] * nodes
    for g, n in zip(wide, where):
        out.append((g, n, next_free[n]))
        next_free[n] += g.width
    for g in singles:  # the fullest node with room first, as the greedy fill does
        n = max((n for n in range(nodes) if next_free[n] < size), key=lambda n: (next_free[n], -n))
        out.append((g, n, next_free[n]))
        next_free[n] += 1
    used = sorted({n for _, n, _ in out})
    renumber = {n: i for i, n in enumerate(used)}  # nodes in use first, as the greedy fill numbers them
    return [(g, renumber[n], i) for g, n, i in out]


def _other_orders(pool: Pool, mine: list[Gpu], order: list[Gpu], nodes_n: int, spread: set[str], need: int,
                  spots: dict[str, int], best: list[tuple[Gpu, int, int]]) -> list[tuple[Gpu, int, int]]:
    """Multi-GPU replicas first can fill one node with them and leave the last GPUs, two replicas
    of one model, to the other (llm-platform at floor 0.25): other orders, seeded, until one
    keeps every spot node within its models' floors."""
    rng = random.Random(len(mine))
    for _ in range(SPOT_ORDERS):
        order = order[:]
        rng.shuffle(order)
        try:
            other = _fill(pool, mine, sorted(order, key=lambda g: -g.width) if _ % 2 else order,
                          nodes_n, spread, need)
        except UserError:
            continue
        if _over(other, spots) < _over(best, spots):
            best = other
        if not _over(best, spots):
            break
    return best


def _spread_warnings(problem: Problem, gpus: list[Gpu]) -> list[str]:
    """Every model with min_replicas >= 2 spans that many nodes where its replicas allow; a
    warning, with the fix, for each that does not."""
    warnings = []
    nodes_of, count = _spans(gpus)
    for m in problem.fleet.models:
        want = min(m.min_replicas, count.get(m.name, 0))
        have = len(nodes_of.get(m.name, ()))
        if want >= 2 and have < want:
            pools = sorted({p for p, _ in nodes_of[m.name]})
            full = [p for p in pools if len({g.node for g in gpus if g.pool.name == p})
                    >= problem.fleet.pool(p).max_nodes]
            if full:
                fix = f"raise max_nodes of pool {full[0]} to spread them"
            else:
                fix = (f"no dealing of pool {pools[0]}'s GPUs to its nodes that the planner tried (up to "
                       f"{EXTRA_NODES} more than they fill) spreads these replicas; a re-plan keeps running GPUs "
                       "where they are")
            warnings.append(f"{m.name}: {count[m.name]} replicas on {have} node(s), fewer than min_replicas "
                            f"{m.min_replicas}; {fix}")
    return warnings


def _spot_warnings(problem: Problem, gpus: list[Gpu]) -> list[str]:
    """A warning per spot pool where losing one node would leave a model below its floor."""
    warnings = []
    spots = _spot_spread(problem, gpus)
    for pool in (p for p in problem.fleet.pools if p.spot):
        over = _over([(g, g.node, g.index) for g in gpus if g.pool.name == pool.name], spots)
        if over:
            warnings.append(f"pool {pool.name}: {over} replica(s) share a spot node with more replicas of their "
                            "model than its on_demand_floor allows, so losing that node leaves the model below "
                            "its floor; raise max_nodes of the pool or lower on_demand_floor")
    return warnings


SPOT_ORDERS = 40
"""Placement orders a spot pool tries when the first leaves a node with more replicas of a model
than its floor allows; each is a greedy pass over the pool's GPUs (microseconds at a few dozen)."""


def pinned_nodes(mine: list[Gpu], nodes_n: int) -> tuple[list[int], list[set[int]], list[set[str]]]:
    """Per node, what the pinned GPUs of ``mine`` (kept from the current plan) already hold: GPUs
    used, their indices, and their models. Where :func:`_fill` starts."""
    used = [0] * nodes_n
    taken: list[set[int]] = [set() for _ in range(nodes_n)]
    on_node: list[set[str]] = [set() for _ in range(nodes_n)]
    for g in mine:
        if g.pinned:
            taken[g.node] |= set(range(g.index, g.index + g.width))
            used[g.node] += g.width
            on_node[g.node] |= g.models()
    return used, taken, on_node


def _fill(pool: Pool, mine: list[Gpu], order: list[Gpu], nodes_n: int, spread: set[str],
          need: int) -> list[tuple[Gpu, int, int]]:
    """(GPU, node, index) for the pool's unpinned GPUs, placed greedily in ``order``: a node
    without the GPU's models that need spreading first, then the fullest node (the emptiest when
    there are more nodes than GPUs)."""
    used, taken, on_node = pinned_nodes(mine, nodes_n)
    # Each node's first free run per width, kept until the node takes a GPU: asking every node for
    # every GPU took 9 of family-13100408-mixed-471's 35 s (3,779 GPUs on up to 1,000 nodes).
    free: list[dict[int, int | None]] = [{} for _ in range(nodes_n)]

    def first(n: int, width: int) -> int | None:
        if width not in free[n]:
            free[n][width] = _first_free(taken[n], width, pool.gpus_per_node)
        return free[n][width]

    out = []
    for g in order:
        while not any(used[n] + g.width <= pool.gpus_per_node for n in range(nodes_n)) \
                and nodes_n < pool.max_nodes:
            nodes_n += 1
            used.append(0)
            taken.append(set())
            on_node.append(set())
            free.append({})
        room = [n for n in range(nodes_n) if first(n, g.width) is not None]
        if not room:
            raise UserError(f"pools: the fleet does not fit: pool {pool.name}: {need} GPUs do not fit in "
                            f"{pool.max_nodes} nodes. Fix: raise max_nodes of a pool, add a pool, or lower headroom")
        # Prefer a node that does not yet run a replica of a model that still needs spreading.
        models = g.models()
        spreading = models & spread
        fuller = need > nodes_n
        if spreading:
            n = min(room, key=lambda n: (len(spreading & on_node[n]), -used[n] if fuller else used[n], n))
        else:
            n = min(room, key=lambda n: (-used[n] if fuller else used[n], n))
        i = first(n, g.width)
        out.append((g, n, i))
        taken[n] |= set(range(i, i + g.width))
        free[n].clear()
        used[n] += g.width
        on_node[n] |= models
    return out


def _over(placed: list[tuple[Gpu, int, int]], spots: dict[str, int]) -> int:
    """Replicas past a model's per-node allowance ``L`` (:func:`_spot_spread`), summed over nodes."""
    per: Counter = Counter()
    for g, n, _ in placed:
        for m in g.models() & spots.keys():
            per[(m, n)] += 1
    return sum(max(0, k - spots[m]) for (m, _), k in per.items())


def _spot_spread(problem: Problem, gpus: list[Gpu]) -> dict[str, int]:
    """Models whose floor must survive one spot node -> the replicas one node may take, ``L`` of
    ``Model.spot_replicas`` (a model never has two replicas on one GPU: its GPUs are its replicas)."""
    out = {}
    for m in problem.fleet.models:
        if 0 < m.on_demand_floor < 1 and m.spot_loss == "node":
            n = sum(1 for g in gpus if m.name in g.models())
            out[m.name] = max(1, math.floor((1.0 - m.on_demand_floor) * n + 1e-9))
    return out


def _spread_by_swaps(problem: Problem, gpus: list[Gpu], max_swaps: int = 1000) -> None:
    """Swap GPUs of equal width between nodes of a pool until no swap spreads more replicas.

    The greedy above fills nodes fullest GPU first, so the last GPUs go wherever room is left: on
    the multilingual example two replicas of three punct models ended on one of two L4 nodes. A
    swap is kept when it lowers the total shortfall, over models with ``min_replicas >= 2``, of
    nodes spanned against ``min(min_replicas, replicas)``.
    """
    want = _spread_wants(problem, gpus)
    per_node: dict[str, Counter] = defaultdict(Counter)
    for g in gpus:
        for m in g.models() & want.keys():
            per_node[m][(g.pool.name, g.node)] += 1

    def short(m: str) -> int:
        c = per_node[m]
        return max(0, min(want[m], sum(c.values())) - len(+c))

    def move(g: Gpu, node: int, sign: int) -> None:
        for m in g.models() & want.keys():
            per_node[m][(g.pool.name, node)] += sign

    for _ in range(max_swaps):
        bad = [m for m in sorted(want) if short(m)]
        if not bad:
            return
        done = False
        for m in bad:
            for a in gpus:
                if a.pinned or m not in a.models() or per_node[m][(a.pool.name, a.node)] < 2:
                    continue
                for b in gpus:
                    if (b is a or b.pinned or b.pool.name != a.pool.name or b.width != a.width
                            or b.node == a.node or per_node[m][(b.pool.name, b.node)] > 0):
                        continue
                    touched = (a.models() | b.models()) & want.keys()
                    before = sum(short(k) for k in touched)
                    na, nb = a.node, b.node
                    move(a, na, -1), move(b, nb, -1), move(a, nb, +1), move(b, na, +1)
                    if sum(short(k) for k in touched) < before:
                        a.node, a.index, b.node, b.index = nb, b.index, na, a.index
                        done = True
                        break
                    move(a, nb, -1), move(b, na, -1), move(a, na, +1), move(b, nb, +1)
                if done:
                    break
            if done:
                break
        if not done:
            return


SPREAD_S = 1.0
"""Deterministic seconds CP-SAT may take per pool to spread what the swaps could not."""


def _spread_wants(problem: Problem, gpus: list[Gpu], spots: dict[str, int] | None = None) -> dict[str, int]:
    """Nodes each model should span: ``min_replicas`` where it is 2 or more, every replica on a
    node of its own for a spot floor that must survive a node (as far as the nodes allow).
    ``spots``: :func:`_spot_spread` where the caller has it."""
    want = {m.name: m.min_replicas for m in problem.fleet.models if m.min_replicas >= 2}
    return want | {m: len(gpus) for m in (_spot_spread(problem, gpus) if spots is None else spots)}


def _spans(gpus: list[Gpu]) -> tuple[dict[str, set[tuple[str, int]]], Counter]:
    """Per model, the (pool, node)s its replicas are on, and its replicas."""
    nodes: dict[str, set[tuple[str, int]]] = defaultdict(set)
    count: Counter = Counter()
    for g in gpus:
        for m in g.models():
            nodes[m].add((g.pool.name, g.node))
            count[m] += 1
    return nodes, count


EXTRA_NODES = 2
"""Nodes beyond those a pool uses that :func:`_spread_exactly` may open to spread replicas."""
SPREAD_VARS = 20_000
"""Most GPU-and-node pairs of :func:`_spread_exactly`'s model. A pool past it is dealt anew only on
the nodes of its unspread models and the roomiest others: family-3500115-mixed-484's 1,975 T4s on
494 nodes, one model short a node, made 980,000 of them, 13 s and 1.7 GB before the solver's
second began.

``SPREAD_NEAR``: the other nodes dealt with those of its unspread models there, roomiest first: a
swap partner or room is what a short model needs, and on a pool of full nodes CP-SAT found no
deal of 69 of them within ``SPREAD_S``."""
SPREAD_NEAR = 8


def _spread_exactly(problem: Problem, gpus: list[Gpu]) -> None:
    """Where single swaps leave a pool's replicas unspread, the pool's GPUs dealt anew to the nodes
    it uses and up to ``EXTRA_NODES`` more within ``max_nodes`` (a bin packing of their widths,
    by CP-SAT within ``SPREAD_S``; an extra node only where it spreads more: the plan is priced by
    the GPU, so a partly used node costs nothing), kept where fewer nodes are short. On
    family-500030-multilingual-16 four A100s on two nodes could not spread asr-2, asr-1, asr-3
    and the punctuation models at once, and a third node does. Swaps exchange GPUs of one width,
    so a pool of multi-GPU replicas whose nodes are full cannot move its few single GPUs: on
    family-900030-llm-40's spot pool (40 GPUs on five full nodes, 36 of them in 2- and 4-GPU
    replicas) two chat models kept both replicas on one node, and the plan told the user to raise
    max_nodes. No model ends less spread than it was (a spot floor's per-node allowance
    included). Pools with a pinned GPU (a re-plan's) are left to the swaps. A pool too large for
    one model (``SPREAD_VARS``) is dealt anew on some of its nodes (:func:`_spread_nodes`), the
    others left as they are."""
    spots = _spot_spread(problem, gpus)
    want = _spread_wants(problem, gpus, spots)
    for pool in problem.fleet.pools:
        mine = [g for g in gpus if g.pool.name == pool.name]
        spans, count = _spans(mine)
        short_of = {m: max(0, min(want[m], count[m]) - len(spans[m])) for m in count if m in want}
        before = sum(short_of.values())
        used = sorted({g.node for g in mine})
        # Up to EXTRA_NODES more nodes within max_nodes, each opened only where it spreads more.
        more = [n for n in range(pool.max_nodes) if n not in used][:EXTRA_NODES]
        if before == 0 or len(used + more) < 2 or any(g.pinned for g in mine):
            continue
        whole = len(mine) * len(used + more) <= SPREAD_VARS
        kept = set(used) if whole else _spread_nodes(mine, spans, short_of, len(more))
        sub = [g for g in mine if g.node in kept]
        nodes = sorted(kept) + more
        if len(nodes) < 2:
            continue
        cp = cp_model.CpModel()
        x = {(i, n): cp.new_bool_var("") for i in range(len(sub)) for n in nodes}
        for i in range(len(sub)):
            cp.add_exactly_one(x[i, n] for n in nodes)
        for n in nodes:
            cp.add(sum(g.width * x[i, n] for i, g in enumerate(sub)) <= pool.gpus_per_node)
        opened = []
        for n in more:
            o = cp.new_bool_var("")
            for i in range(len(sub)):
                cp.add_implication(x[i, n], o)
            opened.append(o)
        short = []
        for m in sorted({m for g in sub for m in g.models() & want.keys()}):
            holders = [i for i, g in enumerate(sub) if m in g.models()]
            outside = {n for _, n in spans[m]} - kept  # nodes left as they are
            replicas = count[m]
            spanned = []
            for n in nodes:
                on = cp.new_bool_var("")
                cp.add(on <= sum(x[i, n] for i in holders))
                spanned.append(on)
            now = min(want[m], replicas) - len(outside) - len({sub[i].node for i in holders})
            gap = cp.new_int_var(0, max(0, now), "")  # no model less spread than it is
            cp.add(gap >= min(want[m], replicas) - len(outside) - sum(spanned))
            short.append(gap)
        for m, allowed in spots.items():  # a spot floor's allowance per node kept
            holders = [i for i, g in enumerate(sub) if m in g.models()]
            if not holders:
                continue
            now = sum(max(0, k - allowed) for k in Counter(sub[i].node for i in holders).values())
            excess = [cp.new_int_var(0, len(holders), "") for _ in nodes]
            for e, n in zip(excess, nodes):
                cp.add(e >= sum(x[i, n] for i in holders) - allowed)
            cp.add(sum(excess) <= now)
        # A replica spread is worth more than any number of extra nodes: they cost no GPU.
        cp.minimize((len(more) + 1) * sum(short) + sum(opened))
        if not whole:  # where the GPUs are now: a deal to start from
            for (i, n), v in x.items():
                cp.add_hint(v, sub[i].node == n)
        solver = cp_model.CpSolver()
        solver.parameters.max_deterministic_time = SPREAD_S
        solver.parameters.num_workers = 1
        solver.parameters.random_seed = problem.settings.seed
        dealt = {m for g in sub for m in g.models()}
        untouched = sum(k for m, k in short_of.items() if m not in dealt)
        if (solver.solve(cp) not in (cp_model.OPTIMAL, cp_model.FEASIBLE)
                or untouched + sum(solver.value(v) for v in short) > before - 0.5):
            continue
        on_node: dict[int, list[Gpu]] = defaultdict(list)
        for i, g in enumerate(sub):
            on_node[next(n for n in nodes if solver.value(x[i, n]))].append(g)
        # The whole pool's nodes numbered from 0 again; part of it keeps the nodes' numbers.
        for k, n in enumerate(sorted(on_node)):
            index = 0
            for g in sorted(on_node[n], key=lambda g: -g.width):  # wide replicas first, on adjacent GPUs
                g.node, g.index = (k if whole else n), index
                index += g.width


def _spread_nodes(mine: list[Gpu], spans: dict[str, set[tuple[str, int]]], short_of: dict[str, int],
                  extra: int) -> set[int]:
    """The nodes :func:`_spread_exactly` deals anew in a pool too large for one model: those of
    the models short of nodes (``short_of``, their nodes in ``spans``: :func:`_spans`), then the
    others with the most room free (fewest GPUs first), at most ``SPREAD_NEAR`` of those, while
    the GPUs on them times the nodes (with ``extra`` more) stay within ``SPREAD_VARS``."""
    on: dict[int, list[Gpu]] = defaultdict(list)
    for g in mine:
        on[g.node].append(g)
    kept = {n for m, k in short_of.items() if k > 0 for _, n in spans[m]}
    gpus, others = sum(len(on[n]) for n in kept), 0
    for n in sorted(set(on) - kept, key=lambda n: (sum(g.width for g in on[n]), n)):
        if others == SPREAD_NEAR or (gpus + len(on[n])) * (len(kept) + 1 + extra) > SPREAD_VARS:
            break
        kept.add(n)
        gpus, others = gpus + len(on[n]), others + 1
    return kept


def _first_free(taken: set[int], width: int, size: int) -> int | None:
    for i in range(size - width + 1):
        if not taken & set(range(i, i + width)):
            return i
    return None


def copy_gpus(gpus: list[Gpu]) -> list[Gpu]:
    """Fresh GPUs and slots holding the same replicas: the search mutates the slots it is given."""
    return [Gpu(g.pool, [Slot(s.type, list(s.reps), start=s.start) for s in g.slots], g.layout, g.multi,
                g.width) for g in gpus]


def fits_nodes(problem: Problem, gpus: list[Gpu]) -> bool:
    """Whether :func:`assign_nodes` places these GPUs on the pools' nodes (tried on a copy)."""
    try:
        assign_nodes(problem, copy_gpus(gpus))
    except (ValueError, UserError):
        return False
    return True
