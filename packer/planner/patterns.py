"""A lower bound from the pattern (configuration) LP, solved by column generation.

The aggregate relaxation (``bound.py``) pools the time and memory of many slots, so it never sees
that a slot's cycle is its tightest member's, that its batches are provisioned at a quantile, or
that a replica is indivisible. Here a column is a whole *pattern*: a group of replicas that
``packer.slot.feasible`` admits on one slot type. The LP over patterns:

* ``z[p, L]`` GPUs of pool ``p`` with layout ``L`` (``N_t = sum_L cnt_L(t) z[p, L]`` slots of type
  ``t``), ``sum_L z[p, L] <= max_gpus(p)``;
* ``x[P]`` slots running pattern ``P``: ``sum_(P of type t) x[P] <= N_t``;
* ``y[m, n]`` the share of model ``m`` run with ``n`` replicas, ``n`` one of the counts the planner
  offers (``Problem.replica_options``): ``sum_n y[m, n] >= 1`` and, per count, the patterns hold
  its replicas, ``sum_(P holds (m, n)) x[P] >= n y[m, n]``;
* minimise ``sum c_p z[p, L]``.

Each replica of ``(m, n)`` serves ``peak / n`` (even routing), so its demand on slot type ``t`` is
``Problem.item(Rep(m, 0, n), t)``: the same ``Item`` the planner packs. Every plan the planner can
make (any packing of replicas at those counts into groups that ``feasible`` admits, on GPUs with
valid layouts, within the pools' sizes) is an integer solution, so the LP's optimum is a bound on
all of them. Dropped: one replica of a model per GPU, integrality.

*Column generation.* The restricted LP starts from every replica alone on every slot type that
holds it (and the start packing's groups); its duals ``mu[m, n]`` (per replica covered) and
``pi_t`` (per slot) price new patterns: a pattern of type ``t`` helps when its replicas' ``mu``
sum above ``pi_t``. The pricing problem (a knapsack in memory and time whose time weights depend
on the group's tightest cycle) is solved by a greedy heuristic, so the restricted LP's value is
not itself a bound. The bound comes from Lagrangian duality instead, valid for *any* ``mu >= 0``:

    L(mu) = sum_m min_n n mu[m, n] - max { sum_p (w_p - c_p) Z_p : 0 <= Z_p <= max_gpus(p),
                                            sum_p c_p Z_p <= U }

where ``w_p`` is the most the duals of one GPU's slots can be worth, from ``V_t``, an *upper
bound* on the best pattern of type ``t`` (``pattern_value_bound``: the LP relaxation of the
pricing knapsack over a geometric grid of cycles). ``U`` is what a plan may cost at most to be
of interest (the greedy plan's cost): any plan dearer than ``U`` is above ``min(L, U)`` anyway.
Scaling ``mu`` by ``s < 1`` (Farley's bound) is tried too; the best is the bound.

*The pools' caps.* ``w_p Z_p`` charges every GPU at the best layout of the best groups, as if each
GPU could run them; no plan does where a pool holds many, since a model has at most ``n``
replicas, one a GPU. For the pools where the inner problem buys GPUs, the last bound charges
``Z_p`` GPUs ``min(w_p Z_p, A_p + lam_p (Z_p - S_p))`` instead (:meth:`Patterns.pool_caps`):
``A_p`` is what ``S_p`` of the pool's GPUs can hold together at ``mu`` (an LP over its layouts,
its slots per cell of cycles and the replicas in them, each slot at most its cell's best group,
each model at one count and one replica a GPU), and ``lam_p`` its GPU row's dual: the tangent at
``S_p`` of a concave function, so a bound for any ``Z_p``. ``S_p`` is where the inner problem
puts the pool's GPUs, its size where it fills the pool, and then where the capped problem moves
them (``CAP_TANGENTS``). generated-500's last bound 123.10 -> 126.15/h: its 100 L4s were charged
127.0/h and hold at most 123.9/h.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import highspy
import numpy as np
from ortools.linear_solver import pywraplp

from packer.planner.cpsat import _layouts
from packer.planner.knapsack import EXTRA_FROM, branch_and_bound, cell_lps, grid_bound, warm
from packer.planner.mip import highs, knapsack_mip, run_exported, run_quiet
from packer.planner.model import Problem, Rep, multi_replicas, on_demand_replicas, slot_price
from packer.slot import WHOLE, SlotType, feasible

GRID = 1.01
"""Ratio of the cycle grid in the pricing bound: a member's share ``A / d + B`` is charged at the
top of its cell, at most 5 % below what it is; finer grids cost time and gain little."""
LAMBDAS = (0.0, 0.15, 0.3, 0.5, 0.7, 0.85, 1.0)
"""Weights of time against memory in the pricing bound's one-constraint relaxations: each is an
upper bound, the least of them is used."""
EXACT_CELLS = 400
"""Up to this many distinct ``hi`` values on a slot type, each is a cell of its own: the pricing
bound is then exact up to the branch and bound's node limit."""
BOUND_CELLS = 2000
"""Up to this many distinct ``hi`` values on a slot type, the pricing *bound* takes each as a cell
of its own (the search for columns keeps ``EXACT_CELLS``): charged at the top of a 1 % run, sets
whose tightest member sits lower in the run inflate the bound. family-100007-mixed-401 (903
distinct cycles), converged: 934.05/h on runs against an LP of 1,023.97/h, 1,016.28/h on cells of
their own. The evaluations during column generation keep the runs (six of them took 6.5 s there)."""
PRICE_CELLS, PRICE_GRID = 400, 1.01
"""Over ``EXACT_CELLS`` distinct ``hi`` values, the pricing searches runs of them within
``PRICE_GRID`` as one cell (time charged at the run's bottom, so every group found is admitted):
only the search for columns, never the bound, uses them."""
COARSE_GRID, COARSE_WORK, COARSE_LAMBDAS = 1.05, 200_000, (0.0, 0.5, 1.0)
"""Where the pricing's cell LPs are large (over ``COARSE_WORK`` cells times items, summed over
slot types), column generation prices on cells 5 % wide with three weightings first, then on
the fine cells once those find nothing: family-0-long-tail-194 (339 distinct cycles, 650 items on
its A100 slot) spent 8 deterministic s a round on the fine cells; coarse first, it converges in
41 rounds and 35 s (bound 469.5/h, where 60 s of fine pricing reached 459.8)."""
NODE_S, CALL_S, ITEM_S = 8e-7, 6e-6, 1e-7
"""Deterministic seconds per node of the pricing's branch and bound (``knapsack.py``, compiled),
per search and per item handed to a search: measured on this project's 2-core machine (0.4-0.9 µs,
12 µs and 0.1 µs on generated-500, long-tail and family-0-long-tail-194), rounded up. With the
search's set-up compiled too (``knapsack._search``) a search costs less than its 20 µs of
before: over 10 counted s of pricing, searches took 3.3 s for 5.5 counted
(family-100007-mixed-401, 126,000 searches), 3.5 for 4.2 (family-600025-long-tail-326), 3.6 for
5.6 (family-900003-mixed-251) and 0.4 for 0.7 (long-tail); at 6 µs a search those count 3.6,
3.1, 4.8 and 0.6 s."""
STEP_S, NO_EXTRA = 4e-9, 2 ** 62
"""Deterministic seconds per step of the node bounds in time alone and memory alone
(``knapsack.EXTRA_FROM``: an item marked or scanned; 1e-8 to 3.8e-9 on generated-500 and the
family's large fleets), and the node count from which the searches for columns use them: never.
The bound's searches do (:meth:`Patterns.pattern_value_bound`), where closing a cell is the point;
in the searches for columns, their cost took rounds from column generation and the columns made
dearer plans (of 48 family fleets, 4 dearer, family-900027-long-tail-82 by 7.8 %)."""
GRID_UNITS, GRID_S = 200, 1e-9
"""Units of each constraint in the pricing bound's dynamic programme (``knapsack.grid_bound``,
where a branch and bound does not close: weights rounded down, so a group may gain under 1/200 of
a slot per member), and its deterministic seconds per item and unit squared (measured 6e-10)."""
CELL_S, ITER_S, ROUND_S = 1e-8, 1e-4, 5e-3
"""Deterministic seconds per cell-item-lambda of the pricing LPs, per simplex iteration of the
restricted master (with ``SOLVE_COL_S``), and per round (what the rest of a round costs). The
master's were 3.5e-4 an iteration, and counted three to five times its wall clock where the
pricing's counted about its own: on family-1300046-mixed-474, 7.18 counted s for 1.40 s of wall
against the searches' 3.77 for 3.27, so two fifths of the column generation's budget was time
not spent (family-1500050-mixed-493: 5.12 for 1.28, generated-500: 8.11 for 3.15). A fit over 385
GLOP solves on eight fleets of 200-500 models gives 6.3e-5 s an iteration and 5.4e-6 s a column
a solve (the columns priced each solve: late rounds take few iterations and most of their time
there); in the pricing's counted seconds (0.84-0.94 wall per counted on the same runs) 7.3e-5 and
6.3e-6, rounded up. The cell LPs, compiled (``knapsack.cell_lps``), took
3.2e-9 (family-100007-mixed-401), 5.4e-9 (family-600025-long-tail-326), 9.6e-9 (long-tail) and
1.6e-8 (family-4-mixed-33, small cells, the call's own cost) a cell-item-lambda; 7e-8 in NumPy.
1e-8 covers the large fleets, where cells are a share of the time; on family-4-mixed-33 they
counted 0.02 s for 0.07 s of wall in 10 counted seconds."""
CELL_ITEM_S, CELL_LP_S, CELL_CALL_S = 3e-9, 1.1e-8, 1e-4
"""Deterministic seconds of the pricing's cell LPs (``knapsack.cell_lps``) per cell and item
(each item's cycle is tested against the cell's bottom), per item and weighting of the LPs
themselves (the items a cell admits), and per call. They were counted at ``CELL_S`` per cell,
item and weighting, as if every item were in every cell: family-3700122-mixed-421 (four pools,
three with MIG, 14,837 columns) counted 10.9 s for 1.9 s of wall, two thirds of its column
generation's share, whose bound was then the aggregate LP's (1,356.94/h, gap 25.5 %). A
least-squares fit over 4,106 calls on seven fleets of 200-484 models (``pattern_bound`` at 12
counted s): per fleet 0.8-1.3 times the wall, except where cells are small (long-tail: 0.05 s
counted for 0.02 s of wall)."""
SOLVE_COL_S = 7e-6
"""Deterministic seconds per column of the restricted master, each GLOP solve (``ITER_S``)."""
INTERIOR_FROM = 600
"""Shared models from which the restricted master is solved by HiGHS's interior point method
(without crossover) instead of GLOP's warm-started simplex. GLOP's rounds grow with the fleet: on
generated-2000 4,500 to 18,400 iterations a round (11.6 s for the twelfth), where the interior
point method solves the same LP cold in 1.7 s; its central duals also steady the pricing (the LP
fell to 497.0/h in 12 rounds where GLOP's fell to 521.4/h). Below, GLOP's warm start is the
cheaper (generated-500: 450 iterations a round, converged in 34 rounds; its plan and bound were
the same within 0.4 % either way), and the interior duals' long tail of tiny improvements costs
rounds (a 214-model fleet: 170 rounds to converge against 50). Measured with ``bench/plan.py``'s
generated fleets, plan/bound per hour, GLOP then interior (with the last bound at both duals,
below): 750 models 204.17/149.99 and 195.60/175.04; 1000 models 268.11/196.51 and 259.60/224.30;
and the family's family-3100098-mixed-865 860.73/809.25 and 860.34/823.29,
family-3100100-long-tail-1665 495.58/436.04 and 483.25/436.04."""
IPM_S, IPM_S2, EXPORT_S = 1.2e-7, 8e-12, 1.5e-6
"""Deterministic seconds per interior point iteration of the restricted master, per non-zero and
per non-zero squared (the factorisation fills in), and per non-zero of each solve for exporting
the model to HiGHS: measured 2.2e-7 a non-zero-iteration at 10,000 non-zeros
(family-3100098-mixed-865), 2.1e-7 at 14,600, 2.9e-7 at 27,000 and 7.2e-7 at 65,000 (generated
fleets); the export 1.5e-6 a non-zero."""
DISJOINT = 30
"""Most follow-up searches a slot type gets each round, each among the models the groups found so
far this round leave out (reusing the round's cell LPs, which stay upper bounds)."""
WALL_FACTOR = 2.0
"""Wall-clock seconds allowed per deterministic second before column generation is cut short:
only a much slower or much busier machine than the one measured gets different columns."""
COLUMN_GENERATION = "column generation"
"""The stage ``Problem.past`` names where the wall clock (``WALL_FACTOR``) ends it before its count."""
BOUND_NODES = 40_000
"""Node limit of each branch and bound in the bound's pricing: where one does not finish, its cell's
LP stands, and an excess of the pricing bound over a slot's dual is charged on every GPU the
budget allows (family-100005-multilingual-80: 4,000 nodes left the A100 slot at 3.76 against its
dual 3.33 and the bound at 40.6/h; 40,000 finish in 0.5 s and the bound meets the LP, 46.5/h)."""
FINAL_BOUND_NODES, FINAL_GRID_UNITS = 400_000, 800
"""Node limit and grid (``BOUND_NODES`` and ``GRID_UNITS`` elsewhere) of the last bound's pricing
where column generation converged. Where a branch and bound does not close, either can be what
inflates a slot's pricing bound. family-100003-multilingual-80's L4 slot needs 400,000 nodes to
close at 200 units (0.51 against 0.569 at 40,000; bound 35.03 -> 39.08/h, the LP's optimum);
family-7-multilingual-80 needs them at 800 units too (102.94/h at 40,000 nodes, 104.90/h, the LP's
optimum). generated-500's cells close at neither, and 800 units give what nodes do not, on one set
of duals: 119.93/h at 400,000 nodes and 200 units (4.1 counted s), 122.89/h at 400,000 nodes and
800 units (6.0 s). A grid of ``units`` squared cells per item: 800 costs 16 times 200 per cell left
open. With the node bounds in time alone and memory alone (``knapsack.EXTRA_FROM``) its L4 cells
close within 400,000 nodes (not within 100,000), and the plan's last bound is 123.10/h, not
120.97. Only the slot types priced above their dual get the deeper search
(:meth:`Patterns.last_values`)."""
LAST_GRID_UNITS = 400
"""The grid of the last bound where the deeper one (``FINAL_GRID_UNITS``) does not run: twice as
fine as the evaluations' during the search, which are many. generated-500, same duals at 40,000
nodes: 119.89/h at 200 units (0.69 counted s), 122.11/h at 400 (1.18 s); generated-2000's last
bound 0.16 s either way."""
FINAL_COST = 10.0
"""The deeper last bound runs only where this many times the cost of the last evaluation during
the search (none: nothing to say it does not fit) still fits in the time limit: on generated-500,
converged at 13.5 of 15.2 counted seconds, it took 3.4 s (one at 40,000 nodes 0.5 s) and gave
the same bound, 117.36/h, past the plan's share. Column generations that converge before their
first evaluation (family-100003-multilingual-80, the purchases ruled out one by one) keep it.
Now generated-500 converges at about 9.7 counted s of 15.2; its last evaluation during the search
took 0.32 s, and the deeper last bound 4.9 s on the slot types above their duals
(:meth:`Patterns.last_values`; 6.5 s on every slot type)."""
FINAL_DEAR = 0.1
"""The last bound, at the duals after the first (the mean's where column generation stopped short,
then the last duals, then the vertex's), is not taken where the one before it took more than this
share of the time limit and as much again would end past it: on family-3900118-mixed-441 each
took 10 counted s (62,000 cells' branch and bound), the bound 32 counted s of its 14.2, and the
plan's packing from the columns was left no time before the wall-clock cap (``solve.WALL_CAP``):
the greedy plan, 244.85/h, or 229.41/h where the machine was a little faster. Now its last bound is
taken at the mean duals alone (198.40/h, 9.8 counted s), the bound 22.6 counted s in all, and the
plan is 224.04/h in 25.6 s. Cheap ones are all taken: over 105 family fleets no bound moved, and
the plans took 985 s where they took 1,129 s (the thirty-eighth session's runs)."""
AVERAGE_LAST = 3
"""Where column generation stops short, the last bound is also taken at the mean of the duals of
its last this many rounds (``L`` is concave, and any duals ``>= 0`` bound): stopped short, the last
duals swing from round to round, and their mean sits nearer the LP's. family-1500050-mixed-493 (16
of the 49 rounds it needs): 123.41/h at the last duals, 146.96/h at the mean of three; generated-750
174.07 -> 176.95/h. At the mean of two: 137.47 and 175.76; of six: 143.68 and 177.38; where one
does worse (family-1300046-mixed-474: 62.81/h at three, 73.96/h at the last) the better stands.
Those were measured with the master counted at 3.5e-4 s an iteration (``ITER_S``); counted as it
runs, column generation gets further in the same budget (family-1500050: 29 rounds in the plan,
its bound 162.54/h) and the mean gains less: family-1500050 alone at 14 counted s, 130.10/h at the
last duals and 127.77/h at the mean of three, 135.25/h at the mean of five."""
EVAL_EVERY, EVAL_SHARE = 0.15, 0.2
"""Share of the time limit between two evaluations of the Lagrangian bound during the search, and
the most of it they may take together (the last evaluation, after the search, is always made).
Each costs about what the one before it did; on family-900003-mixed-346 (5,000 columns, MIG
pools) one took 2.3 of the 17.5 counted seconds, evaluations took 7.5 in all, and column
generation stopped at round 27 with a bound of 138.4/h (LP 212/h). Capped, the plan's bound is
153.5/h (gap 36.0 -> 29.5 %); of 48 family fleets and the 500- and 2000-model rows, two plans
moved by 0.2 % (family-100007-mixed-401 cheaper, family-600025-long-tail-326 dearer)."""
OTHER_WEIGHTINGS = (1.0, 0.0, 0.3)
"""Weights of time against memory that order the pricing's searches once those at each cell's own
weighting (the LP bound's least) find nothing, before column generation is called converged. The
order matters where the searches stop at a node limit: at family-1700086-long-tail-342's
"converged" duals an L4 cell's search finds 0.5493 at its own weighting of 0.7 (0.5801 in 200,000
nodes) and 0.6275 at 1.0, 0.0 or 0.3 in 300 nodes, against the slot's dual of 0.56; HiGHS's best
L4 group there is worth 0.6585."""
PRICE_NODES = 300
"""Node limit of each branch and bound that looks for columns: a good group is found in a few
hundred nodes, proving it the best takes thousands (the bound's searches get ``4000``)."""
TOP_EVERY, TOP_GAIN, TOP_MORE = 4, 1e-3, 2.0
"""Slot types priced on runs of cycles are also searched at the runs' top (``Patterns.search``)
on every ``TOP_EVERY``-th round of pricing, and on every round while the last such search found
a group whose gain over the slot's dual was more than ``TOP_GAIN`` of the dual and ``TOP_MORE``
times the gain of the best group found at the runs' bottom. The bottom misses groups tight in
time, and column generation stopped on the duals they leave: family-3700122-mixed-421 after 18
rounds, the L40S slot's dual 1.84, the best group found at the bottom 1.9517, at the top 2.1429
(HiGHS's best). Its bound went 1,542.26 -> 1,698.13/h (gap 14.8 -> 6.8 %) and
family-3700127-mixed-476's 374.53 -> 391.36/h (14.6 -> 9.7 %); over 105 fleets of the family
the bound rose on 11 and fell on 6 (at most 1.8 %, family-3700117-mixed-259), the time the same
(README, thirty-seventh session). On every round for every slot type (the thirty-sixth session)
it took 11 % more time and moved bounds both ways; kept on wherever the top found any more
(``TOP_GAIN`` alone), it left family-3900136-mixed-311 unconverged at 124 rounds where it had
converged at 103, and mixed-476's bound fell to 357.33/h."""
DEEP_NODES = 20_000
"""Node limit of the searches for columns in :func:`refine`, after column generation converged at
``PRICE_NODES``."""
SLACK = 1e-7
"""Relative slack on the pricing bound's capacities, so that rounding never excludes a group that
``feasible`` (which allows 1e-9) admits."""
ALONE_ALL = 4000
"""Up to this many (replica, slot type) pairs, column generation starts from each replica alone on
each slot type; past it, alone on the cheapest slot type of each pool. Pricing finds any other
such column it needs; the rest only slowed the restricted LP (generated-500: 7,029 of its first
columns, 60 % of its last, where the LP takes about 0.1 s a solve)."""
TOGETHER_TERMS, TOGETHER_ITERATIONS = 10_000, 20_000
"""The most replica-and-cell terms :meth:`Patterns.pool_caps` gives its LP, and the most simplex
iterations it may take (a pool past either gets no cap): on generated-500's 100 L4s, 4,312 terms
and 136-452 iterations a solve (0.05-0.08 s); an A100 pool's MIG layouts at 22,429 terms took
1,600-3,700 iterations and 0.8-1.9 s a solve."""
CAP_TANGENTS, CAP_MOVE, CAP_GAIN = 2, 0.1, 0.01
"""Tangents per pool the last bound's caps try (:meth:`Patterns.lagrangian`): the first where the
inner problem puts the pool's GPUs uncapped, the next where the capped one moves them, by more
than this share (each kept only where it raises the bound). Taken only at the pools' sizes, where
the inner problem filled them, the caps left the pools the budget stops short uncapped:
family-3700123-long-tail-438's 170 L4s (all of 93.5/h of budget) were charged 0.596 a GPU, and
the last duals' bound was 83.20/h; tangents at 170 and 100 GPUs give 85.10/h. Planned (default
budget): long-tail-438 83.60 -> 84.70/h (gap 10.6 -> 9.4 %, 21.0 -> 23.7 s),
family-3300101-long-tail-214 91.77 -> 92.23/h. A purchase's pattern LP (``Patterns.sizes``)
keeps the tangents at its sizes alone: there the extra LPs took the seconds of the search that
rules purchases out (``purchases.rule_out``), and family-3600109-llm-30 ruled out none of the 17
purchases it had (bound 482.10 -> 472.13/h). Nor where the bound without caps is within
``CAP_GAIN`` of the restricted LP (the most the caps could add): family-3300116-multilingual-80's
two tangents on its A100 MIG pool took 1.9 s of a 2.4-s plan and raised its bound by 0.05/h."""
TOGETHER_SOLVES = 4
"""Most solves of that LP, each after branch and bound on the cells the last one used: generated-500's
L4 pool took 4 (123.90/h; 124.32 on the cells' knapsack LPs alone)."""
TOGETHER_S, TOGETHER_ITER_S = 2e-6, 4e-8
"""Deterministic seconds per term of the LP (building it) and per simplex iteration and term
(measured 2.2e-8 to 4.1e-8 on those LPs)."""
MAX_PURCHASES, MAX_PURCHASE_LPS = 200_000, 400
"""Most purchases :meth:`Patterns.cheapest_purchase` lists, and tests one LP each (multi-GPU
models; about 2 ms an LP)."""


@dataclass
class TypeItems:
    """The replicas that fit one slot type, as arrays: the pricing problem's data."""

    st: SlotType
    keys: list[int] = field(default_factory=list)
    """Index into ``Patterns.reps`` of each item, ascending (the items are made in replica-class
    order: :meth:`Patterns.worth` bisects them)."""
    A: np.ndarray | None = None
    B: np.ndarray | None = None
    hi: np.ndarray | None = None
    mem: np.ndarray | None = None
    model: np.ndarray | None = None
    streaming: np.ndarray | None = None
    floor_row: np.ndarray | None = None
    """Per item, the index in the duals of its floor row on this slot type's pool (a spot floor or
    the spread rule's, ``Patterns.floor_rows``), or -1."""
    spread_row: np.ndarray | None = None
    """Per item of a MIG slot type, its spread row (``Patterns.spread_rows``); None elsewhere."""


@dataclass
class PatternBound:
    value: float
    """The Lagrangian bound on the cost of every plan (multi-GPU replicas included); with the
    spread rule's rows (``Patterns.apart_rows``), of every plan that keeps the rule."""
    lp: float
    """The restricted LP's optimum when column generation stopped (not a bound)."""
    columns: int
    rounds: int
    converged: bool
    """True when the heuristic pricing found no improving pattern."""
    seconds: float
    patterns: "Patterns | None" = field(default=None, repr=False)
    """The columns generated, for a packing from them (``colplan.integer_master``)."""
    master: "_Master | None" = field(default=None, repr=False)
    """The restricted LP, kept so that :func:`refine` can go on from where this one stopped."""
    spent: float = 0.0
    """Deterministic seconds the column generation took (``NODE_S``, ``ITER_S``, ``ROUND_S``)."""


class Patterns:
    """The pattern LP of one problem: items, columns, the restricted master and its bound."""

    def __init__(self, problem: Problem, counts: dict[str, set[int]] | None = None,
                 only: dict[str, frozenset] | None = None, apart: bool = False) -> None:
        self.problem = problem
        self.apart = apart
        """With rows that keep a replica of every ``min_replicas >= 2`` model off each pool of one
        node (:meth:`_floor_row`): the LP, and its bound, are then over the plans that obey the
        planner's spread rule (``solve._spread_kept``), not over every plan."""
        self.apart_rows: set[tuple[int, str]] = set()
        """Those rows' (replica class, pool) (none: the LP and its bound are over every plan)."""
        self.u = problem.u
        self.reps: list[tuple[str, int]] = []  # (model, count) per replica class
        self.models: list[str] = []
        self.model_index: dict[str, int] = {}
        """Position of each model in ``models``: ``TypeItems.model`` holds these."""
        self.model_reps: dict[str, list[int]] = defaultdict(list)
        self.floor_rows: list[tuple[int, str, int]] = []
        """Spot floors and, with :attr:`apart`, the spread rule, as rows of the LP: (replica class,
        pool, most of its replicas there). Their duals follow the covering rows' in the duals
        vector (``len(reps) + row``)."""
        self._floor_index: dict[tuple[int, str], int] = {}
        types = problem.all_types()
        per_type: dict[str, list[tuple]] = defaultdict(list)
        for m in problem.shared_models:
            opts = sorted({n for n in count_options(problem, m) if n > 0} | (counts or {}).get(m.name, set()))
            if only is not None and m.name in only:
                opts = [n for n in opts if n in only[m.name]]
            if not opts:
                continue
            self.model_index[m.name] = len(self.models)
            self.models.append(m.name)
            for n in opts:
                k = len(self.reps)
                self.reps.append((m.name, n))
                self.model_reps[m.name].append(k)
                # The last replica: on a spot pool it is the first allowed there (model.allowed), so
                # the LP lets every replica go where any may, a relaxation of the spot floors.
                rep = Rep(m, n - 1, n)
                fits = [st for st in types if problem.fits_alone(rep, st)]
                pools = {st.pool.name for st in fits}
                for st in fits:
                    it = problem.item(rep, st)
                    per_type[st.key].append((k, it.A, it.B, it.hi, m.memory_gb, len(self.models) - 1,
                                             m.kind == "streaming",
                                             self._floor_row(k, m, n, st.pool, len(pools - {st.pool.name}) > 0)))
        self.types: dict[str, TypeItems] = {}
        for st in types:
            rows = per_type.get(st.key)
            if not rows:
                continue
            ti = TypeItems(st, [r[0] for r in rows])
            cols = list(zip(*rows))
            ti.A, ti.B, ti.hi, ti.mem = (np.array(c, dtype=float) for c in cols[1:5])
            ti.model = np.array(cols[5], dtype=int)
            ti.streaming = np.array(cols[6], dtype=bool)
            ti.floor_row = np.array(cols[7], dtype=int)
            self.types[st.key] = ti
        self.layouts = {p.name: [(cnt, p) for _, cnt, _ in _layouts(problem, p.name)] for p in problem.fleet.pools}

        self.multi: list[tuple[str, dict[str, int]]] = []
        """Per multi-GPU model, the GPUs its replicas take in each pool that can run it, each pool
        alone (the LP mixes them: a plan may split its replicas over two, ``spot.multi_options``)."""
        for m in problem.multi_models:
            where = {p.name: n * m.gpus_per_replica for p in problem.fleet.pools
                     if (n := multi_replicas(problem, m, p)) is not None and n > 0}
            if where:
                self.multi.append((m.name, where))
        self.multi_shares: dict[str, dict[str, float]] = {}
        """The restricted LP's last ``u[m, p]`` per multi-GPU model and pool: where it puts them."""
        self.work = 0.0
        """Deterministic seconds spent (``NODE_S``, ``CELL_S``, ``ITER_S``): what the column
        generation's budget counts, so that the same problem gets the same columns on a busy
        machine as on an idle one, and the plan built from them is the same for a seed."""
        self.duals: tuple[np.ndarray, dict[str, float]] | None = None
        """The restricted LP's last duals (``mu``, ``pi``): which columns a dive keeps."""
        self.shares: np.ndarray | None = None
        """The restricted LP's last ``y[m, n]``, per replica class: the counts the LP leans to."""
        self.grid = COARSE_GRID if self.cell_work() > COARSE_WORK else 0.0
        """Width of the pricing's cells while it prices coarse (``COARSE_GRID``); 0 once it prices
        on the fine cells."""
        self.best_duals: tuple[float, float, dict[str, float], list[float], dict[str, tuple[float, float, int]]] = (
            -math.inf, 0.0, {}, [1.0], {})
        """The best Lagrangian so far and its parts: ``sum_m min_n n mu``, what one GPU of each
        pool can be worth, the scalings of ``mu`` tried and the pools' caps (:meth:`pool_caps`;
        :meth:`cheapest_purchase` uses them)."""
        self.columns: list[tuple[str, tuple[int, ...]]] = []
        self._seen: set[tuple[str, tuple[int, ...]]] = set()
        self.sizes: dict[str, int] | None = None
        """GPUs per pool in place of the pools' sizes (a purchase; pools left out have none), in the
        restricted LP and the Lagrangian: columns generated for a cheaper purchase
        (``purchases.py``), and a bound over the plans that fit in it."""
        self.spread_rows: list[tuple[int, str]] = []
        """Where set (:meth:`spread`): per replica class and MIG-capable pool, the row "its replicas
        in the pool's MIG slots are at most the pool's MIG GPUs" (one replica of a model a GPU).
        Their duals follow the floor rows' in the duals vector."""
        self._spread_index: dict[tuple[int, str], int] = {}
        self.rounds_priced = 0
        """Rounds of pricing at the cells' own weightings so far (``TOP_EVERY``)."""
        self.top_useful: dict[str, bool] = {}
        """Per slot type, whether its last search at the runs' top found more than at their
        bottom (``TOP_EVERY``): searched there every round while it does."""

    def _floor_row(self, k: int, m, n: int, pool, elsewhere: bool = True) -> int:
        """The row ``at most n - floor replicas of (m, n) on the spot pool`` (created on first use),
        as an index into the duals; -1 where no row applies there. With :attr:`apart`, on a
        pool of one node a ``min_replicas >= 2`` model's ``n >= 2`` replicas have at most
        ``n - 1`` there: family-3800121-multilingual-32's bound (39.27/h) was a plan with both
        replicas of two ASR models on its one A100 node, which the planner does not make
        (52.36/h, gap 25.0 %). Only where another pool holds the model (``elsewhere``): one that
        no other pool holds has every replica on the one node in every plan."""
        most = n
        if pool.spot:
            floor = on_demand_replicas(m, n, pool)
            if floor >= n:
                return -1  # none of its replicas may go there (no item on this pool)
            most = n - max(0, floor)
        if self.apart and elsewhere and pool.max_nodes == 1 and m.min_replicas >= 2 and n >= 2:
            most = min(most, n - 1)
            self.apart_rows.add((k, pool.name))
        if most >= n:
            return -1
        key = (k, pool.name)
        if key not in self._floor_index:
            self._floor_index[key] = len(self.floor_rows)
            self.floor_rows.append((k, pool.name, most))
        return self._floor_index[key]

    def apart_binding(self) -> list[str]:
        """``model on pool <name>`` for each spread-rule row (:attr:`apart`) the last duals price:
        where the rule keeps the LP from a cheaper mix."""
        if self.duals is None:
            return []
        mu = self.duals[0]
        return sorted({f"{self.reps[k][0]} on pool {pool}" for k, pool in self.apart_rows
                       if mu[len(self.reps) + self._floor_index[k, pool]] > 1e-9})

    def values(self, ti: "TypeItems", duals: np.ndarray) -> np.ndarray:
        """Per item of a slot type, what its place in a group is worth at ``duals``: its covering
        row's dual less its floor row's and its spread row's (none where ``duals`` holds only
        the covering rows)."""
        v = duals[ti.keys]
        if duals.size > len(self.reps) and ti.floor_row is not None and (ti.floor_row >= 0).any():
            sigma = duals[len(self.reps) + np.maximum(ti.floor_row, 0)]
            v = v - np.where(ti.floor_row >= 0, sigma, 0.0)
        first = len(self.reps) + len(self.floor_rows)
        if duals.size > first and ti.spread_row is not None:
            v = v - duals[first + ti.spread_row]
        return v

    def spread(self) -> None:
        """Adds the spread rows (``spread_rows``): a relaxation of the rule that a GPU runs one
        replica of a model, which the pattern LP otherwise leaves to the dealing. Without them, the
        columns generated for a purchase with one MIG GPU put two replicas of a model in two of
        its slots, and no packing deals from them (family-800039-long-tail-34, an H100)."""
        index: dict[tuple[int, str], int] = {}
        for ti in self.types.values():
            if ti.st.profile == WHOLE:
                continue
            ti.spread_row = np.array([index.setdefault((k, ti.st.pool.name), len(index)) for k in ti.keys], dtype=int)
        self.spread_rows = sorted(index, key=index.__getitem__)
        self._spread_index = index

    def mig_worth(self, duals: np.ndarray, pool: str) -> float:
        """What one MIG GPU of ``pool`` adds to the spread rows at ``duals``: the sum of their
        duals there (each row's right-hand side counts the pool's MIG GPUs)."""
        first = len(self.reps) + len(self.floor_rows)
        if duals.size <= first:
            return 0.0
        return float(sum(duals[first + r] for (_, p), r in self._spread_index.items() if p == pool))

    def fixed_part(self, duals: np.ndarray) -> float:
        """The Lagrangian's part from the replica counts: ``sum_m min_n (n mu[m, n] - sum over
        its floor rows of (replicas allowed on the pool) sigma)``."""
        per = np.array([self.reps[k][1] * duals[k] for k in range(len(self.reps))], dtype=float)
        if duals.size > len(self.reps):
            for r, (k, _, most) in enumerate(self.floor_rows):
                per[k] -= most * duals[len(self.reps) + r]
        return float(sum(min(per[k] for k in self.model_reps[name]) for name in self.models))

    def cell_work(self) -> int:
        """Distinct ``hi`` values times items, summed over slot types: the size of the pricing's
        cell LPs at fine cells."""
        return sum(int(np.unique(ti.hi).size) * len(ti.keys) for ti in self.types.values())

    # --- the pricing problem -------------------------------------------------------------

    def _bnb(self, *args) -> tuple[float, list[int], float]:
        """:func:`knapsack.branch_and_bound`, its nodes and node-bound steps counted as work."""
        val, chosen, upper, nodes, steps = branch_and_bound(*args)
        self.work += nodes * NODE_S + CALL_S + args[0].size * ITEM_S + steps * STEP_S
        return val, chosen, upper

    @staticmethod
    def _cells(his: np.ndarray, exact: int = 0, grid: float = 0.0) -> list[tuple[float, float]]:
        """Cells ``[h_lo, h_hi]`` of the distinct ``hi`` values (sorted): each value its own cell
        when there are at most ``exact``, else runs whose ends are within ``grid`` of each other."""
        exact, grid = exact or EXACT_CELLS, grid or GRID
        if his.size <= exact:
            return [(float(h), float(h)) for h in his]
        cells, first = [], float(his[0])
        last = first
        for h in his[1:]:
            h = float(h)
            if h > first * grid:
                cells.append((first, last))
                first = h
            last = h
        cells.append((first, last))
        return cells

    def _cell_problems(self, ti: TypeItems, v: np.ndarray, at_top: bool, exact: int = 0) -> list[tuple]:
        """Per kind group and cell: (LP bound, lambda, a function giving the cell's values, time
        and memory weights, models and item positions), best LP first. Time weights are charged at
        the cell's top (a relaxation: for bounds) or at its bottom (every set found is a group
        ``feasible`` admits: for columns). The LPs of all cells are computed in one compiled pass
        (``knapsack.cell_lps``); a cell's items are found again only when it is searched."""
        pos = v > 1e-12
        groups = [pos] if ti.st.pool.time_slicing else [pos & ti.streaming, pos & ~ti.streaming]
        cap = 1.0 + SLACK if at_top else 1.0
        out: list[tuple] = []
        for g in groups:
            if not g.any():
                continue
            where = np.flatnonzero(g)
            A, B, hi, mem, val, mdl = (ti.A[g], ti.B[g], ti.hi[g], ti.mem[g] / ti.st.memory_gb, v[g],
                                       ti.model[g])
            if at_top:
                cells, lams = self._cells(np.unique(hi), exact), LAMBDAS
            elif self.grid:
                cells, lams = self._cells(np.unique(hi), 1, self.grid), COARSE_LAMBDAS
            else:
                cells, lams = self._cells(np.unique(hi), PRICE_CELLS, PRICE_GRID), LAMBDAS
            lo = np.array([c[0] for c in cells])
            d = np.array([c[1] if at_top else c[0] for c in cells])
            floor = lo * (1 - SLACK) if at_top else lo
            least, lam_of, start, items = cell_lps(val, A, B, mem, hi, floor, d, lams, self.u, cap)
            self.work += lo.size * val.size * CELL_ITEM_S + int(start[-1]) * len(lams) * CELL_LP_S + CELL_CALL_S
            for r in np.flatnonzero(start[1:] > start[:-1]):
                def make(m=items[start[r]:start[r + 1]], dr=float(d[r]), A=A, B=B, val=val, mem=mem, mdl=mdl,
                         where=where) -> tuple:
                    return val[m], (A[m] / dr + B[m]) / self.u, mem[m], mdl[m], where[m]
                out.append((float(least[r]), float(lam_of[r]), make))
        out.sort(key=lambda t: -t[0])
        return out

    def pattern_value_bound(self, key: str, mu: np.ndarray, node_limit: int = 4000,
                            exact: int = BOUND_CELLS, units: int = GRID_UNITS) -> float:
        """An upper bound on ``sum mu`` over the groups ``feasible`` admits on slot type ``key``.

        A group's cycle ``d`` is its tightest member's ``hi`` (``slot.duty_window``), one of the
        items' ``hi`` values; take the cell ``[h_lo, h_hi]`` of those values that holds it. Every
        member has ``hi >= h_lo`` and ``sum (A / h_hi + B) <= sum (A / d + B) <= u``, and the
        memory fits: a knapsack in two constraints (exact where each value is its own cell). Per
        cell, a non-negative combination of the two constraints gives a one-constraint knapsack
        whose LP (by ratio, the last item cut) is above it; cells whose LP cannot beat the best so
        far are skipped, the others are solved by branch and bound (one replica per model), and
        where that runs past ``node_limit`` nodes, the least of the LPs left open and the optimum
        on a grid of ``units`` (``knapsack.grid_bound``) stands. Pools that do not time-slice
        take the larger of their two kinds alone.
        """
        ti = self.types[key]
        best = 0.0
        for least, lam, make in self._cell_problems(ti, self.values(ti, mu), at_top=True, exact=exact):
            if least <= best + 1e-12:
                break
            vv, w, mm, md, _ = make()
            best = max(best, min(least, self._cell_upper(vv, w, mm, md, lam, best, node_limit, units)))
        return best

    def best_group(self, key: str, mu: np.ndarray, nodes: int = 1000) -> tuple[float, tuple[int, ...], float]:
        """The best group on slot type ``key`` at ``mu`` by HiGHS's MIP (``mip.knapsack_mip``, at
        most ``nodes`` nodes a cell), cells best LP first until a cell's LP is no more than the
        bound so far: (the worth of the best group found that ``feasible`` admits, its replicas,
        an upper bound on every group's worth). A check on the pricing's search, not a part of
        column generation (``bench/converge.py --pricing``): at family-1300046-mixed-474's
        "converged" duals it finds an A100 group worth 4.98 against the slot's dual of 4.76, where
        the 300-node search finds 4.73 and a 20,000-node one 4.88."""
        ti = self.types[key]
        best, group, upper = 0.0, (), 0.0
        for least, _, make in self._cell_problems(ti, self.values(ti, mu), at_top=True, exact=BOUND_CELLS):
            if least <= upper + 1e-12:
                break  # this cell and every later one: their LPs are below the bound so far
            v, w, mm, model, where = make()
            found, x, bound = knapsack_mip(v, w, mm, model, 1.0 + SLACK, nodes)
            upper = max(upper, min(least, bound))
            if x is not None and found > best:
                reps = tuple(int(ti.keys[i]) for i in where[x])
                if self._admits(key, reps):
                    best, group = found, reps
        return best, group, upper

    def _cell_upper(self, v: np.ndarray, w: np.ndarray, mm: np.ndarray, model: np.ndarray, lam: float,
                    floor: float, node_limit: int, units: int) -> float:
        """An upper bound on one cell's best group (values ``v``, time ``w`` and memory ``mm`` as
        shares of the slot): the branch and bound's with its node bounds (``EXTRA_FROM``) above
        ``floor``, and where it does not close, the least of that and the optimum on a grid of
        ``units`` (``knapsack.grid_bound``)."""
        found, _, upper = self._bnb(v, w, mm, model, lam, 1.0 + SLACK, floor, node_limit, EXTRA_FROM)
        if upper > found + 1e-12:  # the search did not close: the optimum on a grid of weights
            upper = min(upper, self._grid(v, w, mm, model, 1.0 + SLACK, units))
        return upper

    def _grid(self, v: np.ndarray, w: np.ndarray, mm: np.ndarray, model: np.ndarray, cap: float,
              units: int) -> float:
        """:func:`knapsack.grid_bound`, counted as work."""
        self.work += v.size * units ** 2 * GRID_S
        return grid_bound(v, w, mm, model, cap, units)

    def exact_cells(self, key: str, mu: np.ndarray) -> bool:
        """Whether the pricing searches ``key`` on cells of one ``hi`` each (``EXACT_CELLS``)."""
        ti = self.types[key]
        return self._exact(ti, self.values(ti, mu))

    def _exact(self, ti: TypeItems, v: np.ndarray) -> bool:
        return not self.grid and np.unique(ti.hi[v > 1e-12]).size <= EXACT_CELLS

    def search(self, key: str, mu: np.ndarray, floor: float = 0.0, max_cols: int = 8,
               node_limit: int = PRICE_NODES, cells: list | None = None,
               skip: np.ndarray | None = None, top: bool = False,
               weighting: float | None = None) -> tuple[list[tuple[int, ...]], list | None]:
        """Columns: groups on slot type ``key`` worth more than ``floor`` at ``mu`` (the last
        ``max_cols`` found, best last), and the cell problems searched (None where cells are
        coarse), for follow-up searches.

        Where each distinct ``hi`` is a cell of its own (``EXACT_CELLS``), time is charged at the
        cell's ``hi``, below no member's, so every set found is an admitted group; cells are
        searched best LP first, each for a group beating the best so far. Otherwise the cells are
        coarser than a group's cycle and time is charged at their bottom, so again every set found is admitted.

        ``top``: cells of runs of ``hi`` with time charged at their top, as the bound's are; a set
        found there may be no group (a member's ``hi`` below the run's top), so each is tested and
        only an admitted one counts. Where bottom-charged cells find nothing, groups tight in time
        are still there: family-100007-mixed-401 (903 distinct cycles) "converged" with A100 groups
        worth 3.44 and 3.63 against the slot's dual of 3.27, all admitted.

        ``cells``: the cell problems of an earlier search at the same ``mu``, and ``skip``: models
        (indices) to leave out; their LPs, computed with those models in, are still upper bounds,
        so a follow-up search needs no new cell LPs (on 650 items and 340 cells those cost 0.2 s
        a search).

        ``weighting``: the weight of time against memory that orders the branch and bound, in place
        of each cell's own (the one whose LP is least, right for a bound, not always for a search:
        ``OTHER_WEIGHTINGS``).
        """
        ti = self.types[key]
        v = self.values(ti, mu)
        exact = self._exact(ti, v)
        if cells is None:
            cells = self._cell_problems(ti, v, at_top=exact or top)
        cap = 1.0 + SLACK if exact or top else 1.0
        best = floor if exact else floor + 1e-9
        found: list[tuple[int, ...]] = []
        skipped = np.zeros(len(self.models), dtype=bool)
        if skip is not None:
            skipped[skip] = True
        for least, lam, make in cells:
            if least <= best + 1e-12:
                break
            lam = lam if weighting is None else weighting
            vv, w, mm, md, at = make()
            if skip is not None:
                keep = ~skipped[md]
                if not keep.any():
                    continue
                vv, w, mm, md, at = vv[keep], w[keep], mm[keep], md[keep], at[keep]
            val, chosen, _ = self._bnb(vv, w, mm, md, lam, cap, best, node_limit, NO_EXTRA)
            if chosen and val > best + 1e-12:
                col = tuple(sorted(ti.keys[int(at[j])] for j in chosen))
                if top and not exact and not self._admits(key, col):
                    # Not a group: search the cell again with time charged at its least cycle,
                    # where every set found is one.
                    val, chosen, _ = self._bnb(vv, (ti.A[at] / ti.hi[at].min() + ti.B[at]) / self.u, mm, md, lam,
                                               1.0, best, node_limit, NO_EXTRA)
                    col = tuple(sorted(ti.keys[int(at[j])] for j in chosen))
                    if not chosen or val <= best + 1e-12 or not self._admits(key, col):
                        continue
                found.append(col)
                best = val
        if not exact and not top:
            # A replica alone is a group (a slot type's items are the replicas that fit it alone),
            # but charged at its cell's bottom a replica near its slot's capacity alone fits no
            # cell: family-3500115-mixed-484's one-replica models on a whole H200 were in no column
            # the fill could find, every pass stuck with 27 of them left, and the plan was the
            # dedicated baseline's (18.3 % above its bound).
            alone = np.where(skipped[ti.model], 0.0, v)
            j = int(np.argmax(alone)) if alone.size else -1
            if j >= 0 and alone[j] > best + 1e-12:
                found.append((int(ti.keys[j]),))
        return [c for c in found[-max_cols:] if self._admits(key, c)], cells

    def _admits(self, key: str, reps: tuple[int, ...]) -> bool:
        """The planner's own test of a group (``slot.feasible``), on the planner's items."""
        st = self.types[key].st
        items = [self.problem.item(Rep(self.problem.fleet.model(self.reps[k][0]), 0, self.reps[k][1]), st)
                 for k in reps]
        return feasible(items, st.memory_gb, self.u)

    def worth(self, key: str, mu: np.ndarray, groups: list[tuple[int, ...]]) -> float:
        """The most any of ``groups`` on slot type ``key`` is worth at ``mu`` (its items' values;
        0 with none). A slot type's items are in replica-class order, so a class's item is found by
        bisection."""
        ti = self.types[key]
        v = self.values(ti, mu)
        return max((float(v[np.searchsorted(ti.keys, g)].sum()) for g in groups), default=0.0)

    def add(self, key: str, reps: tuple[int, ...]) -> bool:
        col = (key, tuple(sorted(reps)))
        if col in self._seen or not reps:
            return False
        self._seen.add(col)
        self.columns.append(col)
        return True

    # --- the bound -----------------------------------------------------------------------

    def last_values(self, mu: np.ndarray, deep: bool = False) -> dict[str, float]:
        """The pricing bounds of the last evaluation (per slot type, at ``mu``): at ``BOUND_NODES``
        and ``LAST_GRID_UNITS``, and where ``deep``, again at ``FINAL_BOUND_NODES`` and
        ``FINAL_GRID_UNITS`` on the slot types whose bound is above their dual in the restricted
        LP (``duals``; the least of the two stands, both being bounds). A slot type priced at or
        below its dual costs the Lagrangian nothing that a deeper search would win back: on
        generated-500's plan, converged, the last bound took 6.5 counted s with the deeper searches
        on every slot type and takes 4.9 for the same bound (123.10/h); at one unconverged round's
        duals, 6.7 and 3.0. Branch and bound always runs: past the time limit it was skipped,
        to be cheaper, but the grids it left on every cell cost more (family-3800119-long-tail-1002
        at its vertex's duals: 9.8 counted s, where with it 1.4)."""
        V = {key: self.pattern_value_bound(key, mu, node_limit=BOUND_NODES, units=LAST_GRID_UNITS)
             for key in self.types}
        pi = self.duals[1] if self.duals is not None else {}
        if deep:
            for key in self.types:
                if V[key] > pi.get(key, 0.0) + 1e-9:
                    V[key] = min(V[key], self.pattern_value_bound(key, mu, node_limit=FINAL_BOUND_NODES,
                                                                  units=FINAL_GRID_UNITS))
        return V

    def lagrangian(self, mu: np.ndarray, upper: float, V: dict[str, float] | None = None,
                   cells: int = BOUND_CELLS, caps: bool = False, lp: float = math.inf) -> float:
        """``L(mu)`` of the module docstring, the best over a few scalings of ``mu``. ``V``: the
        pricing bounds at ``mu`` where the caller has them (the last bound's,
        :meth:`last_values`); else those of :meth:`pattern_value_bound` at ``BOUND_NODES`` on
        ``cells`` (the evaluations during the search). ``caps``: with each pool's GPUs capped
        by what its replicas can be worth together (:meth:`pool_caps`); ``lp``: the restricted
        LP's value at ``mu``, which says whether the tangents below the pools' sizes can be worth
        their LPs (``CAP_TANGENTS``)."""
        fixed = self.fixed_part(mu)
        if V is None:
            V = {key: self.pattern_value_bound(key, mu, node_limit=BOUND_NODES, exact=cells) for key in self.types}
        worth = {}
        for p in self.problem.fleet.pools:
            mig = self.mig_worth(mu, p.name) if self.spread_rows else 0.0
            worth[p.name] = max((sum(n * V.get(f"{p.name}/{prof}", 0.0) for prof, n in cnt.items())
                                 + (mig if WHOLE not in cnt else 0.0) for cnt, _ in self.layouts[p.name]), default=0.0)
        scales = {1.0} | {p.cost_per_gpu_hour / worth[p.name] for p in self.problem.fleet.pools
                          if worth[p.name] > p.cost_per_gpu_hour > 0}

        def at_scales(cap: dict[str, tuple[float, float, int]]) -> float:
            return max(s * fixed + self._pools_part({k: s * w for k, w in worth.items()}, upper, caps=_scaled(cap, s))
                       for s in sorted(scales))
        cap: dict[str, tuple[float, float, int]] = {}
        best = at_scales(cap)
        if caps:
            # Tangents where the inner problem puts each pool's GPUs (its size where it fills the
            # pool, what it buys where the budget limits it), then again where the first tangents
            # move them: the capped value is concave in the GPUs, so a tangent anywhere bounds
            # every count (CAP_TANGENTS).
            at: dict[str, int] = {}
            size = {q.name: q.max_gpus if self.sizes is None else self.sizes.get(q.name, 0)
                    for q in self.problem.fleet.pools}
            for _ in range(CAP_TANGENTS):
                chosen: dict[str, float] = {}
                self._pools_part(worth, upper, caps=cap, chosen=chosen)
                where = {name: min(size[name], math.ceil(z - 1e-6)) for name, z in chosen.items() if z >= 1.0 - 1e-6}
                if self.sizes is not None or best >= lp * (1 - CAP_GAIN):
                    # A purchase's (its sizes), or within CAP_GAIN of the LP: at the sizes alone.
                    where = {name: z for name, z in where.items() if z >= size[name]}
                where = {name: z for name, z in where.items()
                         if name not in at or abs(z - at[name]) > CAP_MOVE * at[name]}
                if not where:
                    break
                at.update(where)
                trial = {**cap, **self.pool_caps(mu, worth, where)}
                value = at_scales(trial)
                if value > best:
                    best, cap = value, trial
        if best > self.best_duals[0]:
            self.best_duals = (best, fixed, worth, sorted(scales), cap)
        return best

    def pool_caps(self, mu: np.ndarray, worth: dict[str, float],
                  at: dict[str, int]) -> dict[str, tuple[float, float, int]]:
        """Per pool of ``at`` whose GPUs are worth more than they cost at ``mu`` (``worth``), a
        bound on what ``Z`` of its GPUs can hold together in any plan: ``A + lam (Z - size)``, as
        ``(A, lam, size)``, the tangent at ``size`` GPUs, ``at``'s count for the pool.

        The Lagrangian charges every GPU of a pool at its best layout of best groups, as if each
        ran those; in a plan a model has at most ``n`` replicas, one a GPU. An LP over the pool
        (:meth:`_together`): GPUs per layout, slots of each type per cell of cycles (as
        :meth:`pattern_value_bound` cuts them: a slot's group is in the cell of its tightest
        member), the replicas of each class there, with their time at the cell's top and memory
        within the slots, each slot worth at most the cell's best group; per model one count and
        at most its replicas, one a slot and one a GPU. Its optimum ``A`` bounds what
        ``size`` GPUs hold in any plan; as a function of the GPUs ``Z`` (the right-hand side of
        its GPU row) it is concave, so it lies below its tangent at any ``size``, ``A + lam (Z -
        size)`` with ``lam`` that row's dual: valid for every ``Z``, so for every purchase. The
        Lagrangian charges ``Z`` GPUs ``min(worth Z, A + lam (Z - size))``. On generated-500's
        converged duals the L4 pool's 100 GPUs are charged 1.27 each (127.0/h) and hold 123.9/h
        together."""
        out: dict[str, tuple[float, float, int]] = {}
        for p in self.problem.fleet.pools:
            if p.name not in at or worth.get(p.name, 0.0) <= p.cost_per_gpu_hour * (1 + 1e-9) or at[p.name] <= 0:
                continue
            together = self._together(p.name, mu, at[p.name])
            if together is not None:
                out[p.name] = (*together, at[p.name])
        return out

    @staticmethod
    def _terms(hi: np.ndarray, cells: list[tuple[float, float]]) -> int:
        """Replica-and-cell terms of :meth:`_together`'s LP on these cells: per cell, the items
        whose ``hi`` is at least its bottom."""
        lows = np.array([lo * (1 - SLACK) for lo, _ in cells])
        return int((hi.size - np.searchsorted(np.sort(hi), lows, side="left")).sum())

    def _together(self, pool: str, mu: np.ndarray, size: int) -> tuple[float, float] | None:
        """The LP of :meth:`pool_caps` on ``pool`` at ``size`` GPUs: its optimum and the dual of
        its GPU row. Each cell's items are those that fit its slot alone at its top
        (``knapsack.cell_lps``); a slot of a cell is worth at most its best group, bounded first
        by the cell's knapsack LP and, for the cells the optimum uses, by branch and bound as in
        :meth:`pattern_value_bound` (then solved again, until the cells it uses are all bounded
        so, at most ``TOGETHER_SOLVES`` solves). On runs of cycles 5 % wide where cells of their
        own would pass ``TOGETHER_TERMS`` terms; None where those do too, or HiGHS does not solve
        it."""
        values = {key: self.values(ti, mu) for key, ti in self.types.items() if ti.st.pool.name == pool}
        parts, terms = [], 0  # per slot type and kind: its items and cells; their terms in all
        for key, v in values.items():
            ti = self.types[key]
            pos = v > 1e-12
            for g in [pos] if ti.st.pool.time_slicing else [pos & ti.streaming, pos & ~ti.streaming]:
                where = np.flatnonzero(g)
                if where.size == 0:
                    continue
                his = np.unique(ti.hi[where])
                runs = self._cells(his, BOUND_CELLS)
                more = self._terms(ti.hi[where], runs)
                if more > TOGETHER_TERMS:
                    runs = self._cells(his, 1, COARSE_GRID)  # runs 5 % wide, charged at their top
                    more = self._terms(ti.hi[where], runs)
                terms += more
                if terms > TOGETHER_TERMS:
                    return None
                parts.append((key, where, runs))
        cells: list[tuple] = []  # per cell: (slot type, item positions, top, bound on a slot's group, lam)
        for key, where, runs in parts:
            ti, v = self.types[key], values[key]
            lows = np.array([c[0] for c in runs]) * (1 - SLACK)
            tops = np.array([c[1] for c in runs])
            self.work += lows.size * where.size * len(LAMBDAS) * CELL_S
            least, lam_of, start, items = cell_lps(v[where], ti.A[where], ti.B[where], ti.mem[where] / ti.st.memory_gb,
                                                   ti.hi[where], lows, tops, LAMBDAS, self.u, 1.0 + SLACK)
            for r in range(lows.size):
                if start[r + 1] > start[r]:
                    cells.append((key, where[items[start[r]:start[r + 1]]], float(tops[r]), float(least[r]),
                                  float(lam_of[r])))
        if not cells:
            return 0.0, 0.0
        bounded = [False] * len(cells)
        for solve in range(TOGETHER_SOLVES):
            solved = self._together_lp(pool, mu, values, cells, size)
            if solved is None:
                return None
            value, lam, used = solved
            new = [c for c in np.flatnonzero(used).tolist() if not bounded[c]]
            if not new or solve + 1 == TOGETHER_SOLVES:
                return value, lam  # any of its solves is a bound: unbounded cells keep their LPs'
            for c in new:
                bounded[c] = True
                key, at, top, most, weight = cells[c]
                ti = self.types[key]
                upper = self._cell_upper(values[key][at], (ti.A[at] / top + ti.B[at]) / self.u,
                                         ti.mem[at] / ti.st.memory_gb, ti.model[at], weight, 0.0, BOUND_NODES,
                                         LAST_GRID_UNITS)
                cells[c] = (key, at, top, min(most, upper), weight)
        return None  # not reached: the last solve returns

    def _together_lp(self, pool: str, mu: np.ndarray, values: dict[str, np.ndarray], cells: list[tuple],
                     size: int) -> tuple[float, float, np.ndarray] | None:
        """:meth:`_together`'s LP (HiGHS, built from arrays): its optimum, the dual of its GPU
        row and which cells its optimum uses; ``values``: per slot type, its items' values at
        ``mu``. Columns: GPUs per layout, slots per cell, then
        replicas per item and cell; rows: per cell its time, memory and worth, per model and cell
        one replica a slot, per slot type its slots within the layouts', per model one count and
        one replica a GPU, and the GPUs."""
        layouts = [cnt for cnt, _ in self.layouts[pool]]
        mig = self.mig_worth(mu, pool) if self.spread_rows else 0.0
        types = sorted({c[0] for c in cells})
        L, C = len(layouts), len(cells)
        at = np.concatenate([c[1] for c in cells])
        cell = np.repeat(np.arange(C), [c[1].size for c in cells])
        T = at.size
        self.work += T * TOGETHER_S
        counts = {key: np.array([self.reps[k][1] for k in self.types[key].keys], dtype=float) for key in types}
        ti_of = [self.types[c[0]] for c in cells]
        A_, B_, mem_, v_, n_, model_ = (np.concatenate(z) for z in zip(*[
            (ti.A[c[1]], ti.B[c[1]], ti.mem[c[1]] / ti.st.memory_gb, values[c[0]][c[1]], counts[c[0]][c[1]],
             ti.model[c[1]])
            for ti, c in zip(ti_of, cells)]))
        tops = np.array([c[2] for c in cells])
        most = np.array([c[3] for c in cells])
        slot_col = L + np.arange(C)  # columns: z per layout, N per cell, x per term
        x = L + C + np.arange(T)
        rows, cols, vals = [], [], []

        def add(r: np.ndarray, c: np.ndarray, a: np.ndarray) -> None:
            rows.append(np.asarray(r))
            cols.append(np.asarray(c))
            vals.append(np.asarray(a, dtype=float))
        slack = -(1.0 + SLACK) * np.ones(C)
        add(cell, x, (A_ / tops[cell] + B_) / self.u)  # rows 0 .. C - 1: time
        add(np.arange(C), slot_col, slack)
        add(C + cell, x, mem_)  # C .. 2C - 1: memory
        add(C + np.arange(C), slot_col, slack)
        add(2 * C + cell, x, v_)  # 2C .. 3C - 1: worth, at most the cell's best group a slot
        add(2 * C + np.arange(C), slot_col, -np.where(np.isfinite(most), most, 0.0))
        width = int(model_.max()) + 1
        pair, pair_row = np.unique(cell * width + model_, return_inverse=True)
        first = 3 * C
        add(first + pair_row, x, np.ones(T))  # per model and cell: one replica a slot
        add(first + np.arange(pair.size), L + pair // width, -np.ones(pair.size))
        first += pair.size
        type_of = np.array([types.index(c[0]) for c in cells])
        add(first + type_of, slot_col, np.ones(C))  # per slot type: its slots within the layouts'
        for t, key in enumerate(types):
            prof = self.types[key].st.profile
            ls = [i for i, cnt in enumerate(layouts) if cnt.get(prof)]
            add(np.full(len(ls), first + t), np.array(ls, dtype=int), [-float(layouts[i][prof]) for i in ls])
        first += len(types)
        models, model_row = np.unique(model_, return_inverse=True)
        add(first + model_row, x, 1.0 / n_)  # per model: one count, at most its replicas
        count_rows = first
        first += models.size
        add(first + model_row, x, np.ones(T))  # per model: one replica a GPU
        add(np.repeat(first + np.arange(models.size), L), np.tile(np.arange(L), models.size), -np.ones(L * models.size))
        first += models.size
        gpu_row = first
        add(np.full(L, gpu_row), np.arange(L), np.ones(L))
        n_rows, n_cols = gpu_row + 1, L + C + T
        upper = np.zeros(n_rows)
        upper[2 * C:3 * C] = np.where(np.isfinite(most), 0.0, np.inf)
        upper[count_rows:count_rows + models.size] = 1.0
        upper[gpu_row] = float(size)
        r, c, a = (np.concatenate(z) for z in (rows, cols, vals))
        order = np.lexsort((c, r))
        r, c, a = r[order], c[order], a[order]
        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = n_cols, n_rows
        lp.col_cost_ = np.concatenate([[mig if WHOLE not in cnt else 0.0 for cnt in layouts], np.zeros(C), v_])
        lp.col_lower_ = np.zeros(n_cols)
        lp.col_upper_ = np.concatenate([np.full(L + C, np.inf), n_])  # the GPU row alone limits GPUs
        lp.row_lower_ = np.full(n_rows, -np.inf)
        lp.row_upper_ = upper
        lp.sense_ = highspy.ObjSense.kMaximize
        lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
        lp.a_matrix_.num_col_, lp.a_matrix_.num_row_ = n_cols, n_rows
        lp.a_matrix_.start_ = np.searchsorted(r, np.arange(n_rows + 1)).astype(np.int32)
        lp.a_matrix_.index_ = c.astype(np.int32)
        lp.a_matrix_.value_ = a
        h = highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("threads", 1)
        h.setOptionValue("simplex_iteration_limit", TOGETHER_ITERATIONS)
        h.passModel(lp)
        run_quiet(h)
        self.work += int(h.getInfo().simplex_iteration_count) * T * TOGETHER_ITER_S
        if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            return None
        sol = h.getSolution()
        used = np.array(sol.col_value[L:L + C]) > 1e-9
        return float(h.getInfo().objective_function_value), abs(float(sol.row_dual[gpu_row])), used

    def cheapest_purchase(self, lo: float, hi: float, max_purchases: int = MAX_PURCHASES,
                          max_lps: int = MAX_PURCHASE_LPS) -> float:
        """The cheapest purchase of whole GPUs, costing ``lo`` or more, that the Lagrangian of the
        best duals does not rule out; ``hi`` when every purchase below ``hi`` is ruled out.

        A plan buys some purchase ``P`` (GPUs per pool) and costs exactly ``cost(P)``. The
        Lagrangian with the pools' sizes set to ``P`` (``L_P``, no budget row) bounds every plan
        that fits in ``P``, so ``L_P > cost(P)`` says no plan fits in ``P``, nor in a smaller
        purchase. Purchases are tried cheapest first from ``lo`` (a bound already); the first not
        ruled out is the bound. Rounding ``L`` up to the next purchase (``bound.whole_gpus``) is
        the weakest case of this, where ``L_P = L`` for every ``P``; here a purchase with too few
        GPUs of a pool the duals need is ruled out: llm-platform needs 19 GPUs and its spot pool
        holds 16, so its bound rises from 78.40/h (8 H100 on demand) to the plan's 83.80/h.
        Gives ``lo`` where purchases are too many to list (``max_purchases``); where multi-GPU
        models make each test a small LP, at most ``max_lps`` are tested and the next purchase's
        cost is the bound."""
        value, fixed, worth, scales, caps = self.best_duals
        pools = [p for p in self.problem.fleet.pools if p.max_gpus > 0]
        if not math.isfinite(value) or not pools or hi <= lo:
            return lo
        buys = purchases_between([(p.cost_per_gpu_hour, p.max_gpus) for p in pools], lo, hi, max_purchases)
        if buys is None:
            return lo
        counts, costs = buys
        order = np.argsort(costs, kind="stable")
        counts, costs = counts[order], costs[order]
        need = self.least_gpus()
        short = (counts < np.array([need.get(p.name, 0) for p in pools])).any(axis=1)
        counts, costs = counts[~short], costs[~short]
        if not self.multi:
            ruled = (purchase_lagrangians(counts, pools, fixed, worth, scales, caps=caps)
                     > costs + 1e-6 * np.maximum(1.0, costs))
            free = np.flatnonzero(~ruled)
            return float(costs[free[0]]) if free.size else hi
        for k in range(min(costs.size, max_lps)):
            sizes = {p.name: int(n) for p, n in zip(pools, counts[k])}
            best = max(sc * fixed + self._pools_part({n: sc * x for n, x in worth.items()}, math.inf, sizes,
                                                     _scaled(caps, sc))
                       for sc in scales)
            if best <= costs[k] + 1e-6 * max(1.0, costs[k]):
                return float(costs[k])
        return float(costs[max_lps]) if costs.size > max_lps else hi

    def least_gpus(self) -> dict[str, int]:
        """GPUs every plan has in a pool: a model whose replicas fit only that pool's slot types
        has its fewest replicas there, one a GPU (the planner never puts two replicas of a model
        on one GPU). The LP can run such a model on a sliver of a MIG GPU; a purchase cannot buy
        the sliver (multilingual-meetings: a model only the A100 holds)."""
        pools_of: dict[str, set[str]] = defaultdict(set)
        for key, ti in self.types.items():
            for k in ti.keys:
                pools_of[self.reps[k][0]].add(ti.st.pool.name)
        need: dict[str, int] = defaultdict(int)
        for name, where in pools_of.items():
            if len(where) == 1:
                (pool,) = where
                need[pool] = max(need[pool], min(self.reps[k][1] for k in self.model_reps[name]))
        return dict(need)

    def _pools_part(self, worth: dict[str, float], upper: float, sizes: dict[str, int] | None = None,
                    caps: dict[str, tuple[float, float, int]] | None = None,
                    chosen: dict[str, float] | None = None) -> float:
        """The Lagrangian's GPU part: ``min sum_p (c_p - worth_p) Z_p + the multi-GPU replicas'
        cost`` over GPUs within the pools' sizes (multi-GPU replicas take whole GPUs there, each
        such model in one pool or a mix, fractionally) and a total cost of at most ``upper``;
        ``sizes``: GPUs per pool in place of the pools' sizes (a purchase; pools left out have
        none); ``caps``: per pool, ``(A, lam, size)``, a bound ``A + lam (Z - size)`` on what
        ``Z`` of its GPUs hold together (:meth:`pool_caps`, scaled as ``worth``); ``chosen`` gets
        the GPUs per pool of its optimum, where it solves. A small LP;
        infinite when nothing fits (then no plan costs ``upper`` or less, or none fits in the
        purchase)."""
        solver = pywraplp.Solver.CreateSolver("GLOP")
        pools = self.problem.fleet.pools
        sizes = self.sizes if sizes is None else sizes
        size = {p.name: p.max_gpus if sizes is None else sizes.get(p.name, 0) for p in pools}
        caps = caps or {}
        Z = {p.name: solver.NumVar(0.0, float(size[p.name]), f"Z[{p.name}]") for p in pools}
        used = {p.name: [Z[p.name]] for p in pools}
        # A worth equal to the price up to rounding (converged duals price a pool's GPU at its
        # cost) leaves a coefficient of 1e-16, on which GLOP gives up as ABNORMAL.
        coef = {p.name: _snap(p.cost_per_gpu_hour - worth[p.name], p.cost_per_gpu_hour) for p in pools}
        obj = sum(coef[p.name] * Z[p.name] for p in pools if p.name not in caps)
        for name, (A, lam, full) in caps.items():
            # Z GPUs hold at most min(worth Z, A + lam (Z - full)) together.
            held = solver.NumVar(0.0, solver.infinity(), f"T[{name}]")
            solver.Add(held <= worth[name] * Z[name])
            solver.Add(held <= A + lam * (Z[name] - full))
            obj += self.problem.fleet.pool(name).cost_per_gpu_hour * Z[name] - held
        spend = sum(p.cost_per_gpu_hour * Z[p.name] for p in pools)
        for name, where in self.multi:
            us = []
            for pname, gpus in where.items():
                uv = solver.NumVar(0.0, 1.0, f"u[{name},{pname}]")
                price = self.problem.fleet.pool(pname).cost_per_gpu_hour * gpus
                obj += price * uv
                spend += price * uv
                used[pname].append(gpus * uv)
                us.append(uv)
            solver.Add(sum(us) >= 1)
        for p in pools:
            solver.Add(sum(used[p.name]) <= size[p.name])  # the pool's size (or the purchase's)
        if math.isfinite(upper):
            solver.Add(spend <= upper)  # only plans that cost at most upper matter
        solver.Minimize(obj)
        # An iteration cap: on a degenerate one GLOP cycles with no end, and the plan hangs (the
        # L4 cap of family-3300112-long-tail-109 at the duals one trial pricing reached, its worth
        # and its tangent's slope both 1.06 to 1e-7: minutes in ``refine``); HiGHS then solves it,
        # in a millisecond.
        solver.SetSolverSpecificParametersAsString(f"max_number_of_iterations: {POOLS_PART_ITERATIONS}")
        status = solver.Solve()
        if status == pywraplp.Solver.INFEASIBLE:
            return math.inf
        value: float | None = solver.Objective().Value() if status == pywraplp.Solver.OPTIMAL else None
        if value is not None and chosen is not None:
            chosen.update({name: z.solution_value() for name, z in Z.items()})
        if value is None:
            solved = _highs_solve(solver)
            if solved[0] == highspy.HighsModelStatus.kInfeasible:
                return math.inf
            if solved[0] == highspy.HighsModelStatus.kOptimal:
                value = solved[1]
                if chosen is not None:
                    chosen.update({name: float(solved[2][z.index()]) for name, z in Z.items()})
        if value is None:
            # A weaker minimum that needs no solver: the budget row dropped, each pool at its size
            # where its GPUs are worth more than they cost, each multi-GPU model at its cheapest.
            # It was -inf: family-7-multilingual-4's converged pattern LP (7.45/h) bounded nothing.
            return (-sum(float(_gain(p.cost_per_gpu_hour, worth[p.name], caps.get(p.name), np.array([size[p.name]]))[0])
                         for p in pools)
                    + sum(min(self.problem.fleet.pool(pn).cost_per_gpu_hour * g for pn, g in where.items())
                          for _, where in self.multi))
        return value


POOLS_PART_ITERATIONS = 10_000
"""Most simplex iterations GLOP gets on the Lagrangian's GPU part (``Patterns._pools_part``, a few
variables a pool: tens of iterations), a count so that where it cycles the plan does not hang on
it and the same LP goes to HiGHS on any machine."""


def _highs_solve(solver: pywraplp.Solver) -> tuple[object, float, np.ndarray]:
    """A small ``pywraplp`` LP solved again by HiGHS's simplex (``mip.run_exported``, one thread):
    (its model status, objective, column values)."""
    h, _ = run_exported(solver, (("output_flag", False), ("threads", 1), ("solver", "simplex")))
    return (h.getModelStatus(), float(h.getInfo().objective_function_value),
            np.asarray(h.getSolution().col_value, dtype=float))


def _snap(x: float, scale: float) -> float:
    """``x``, or 0 where it is rounding noise against ``scale``."""
    return 0.0 if abs(x) <= 1e-9 * max(1.0, abs(scale)) else x


def count_options(problem: Problem, m) -> set[int]:
    """Every replica count the planner may give ``m``: per slot type, the fewest replicas that hold
    its peak, alone or shared, unfiltered. ``Problem.replica_options`` keeps a few of these, and the greedy
    baseline's whole-GPU problem others (a fresh ``Problem`` does not know them), so the bound
    takes them all, within ``max_replicas`` and the GPUs the pools hold."""
    out = set(problem.replica_options(m))
    for st in problem.all_types():
        for n in {problem.least_replicas(m, st), problem.least_replicas(m, st, shared=True)} - {None}:
            if (m.max_replicas is None or n <= m.max_replicas) and n <= problem.gpu_limit:
                out.add(n)
    return out


def purchases_between(pools: list[tuple[float, int]], lo: float, hi: float,
                      most: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Every purchase of whole GPUs (``(price, at most)`` per pool) costing at least ``lo`` and
    less than ``hi``: counts per pool (rows) and costs; None when there are more than ``most``.

    The counts of all pools but the largest are grown pool by pool, each partial purchase kept
    only while it costs less than ``hi``; the largest pool's counts are a range per partial one.
    A full grid of the smaller pools' counts was listed before: family-4-mixed-33's four pools
    gave 74,925 of them, over the limit, where 1,547 purchases lie between its bound and plan."""
    if any(p <= 0 for p, _ in pools):
        return None
    order = sorted(range(len(pools)), key=lambda i: pools[i][1])
    *rest, last = order
    heads = np.zeros((1, 0))
    head_cost = np.zeros(1)
    for i in rest:
        price, size = pools[i]
        # Per partial purchase, the counts 0 .. k - 1 of this pool keep it below hi: a run each.
        runs = np.clip(np.ceil((hi - 1e-6 - head_cost) / price), 0, size + 1).astype(int)
        if int(runs.sum()) > most:
            return None
        rows = np.repeat(np.arange(head_cost.size), runs)
        ks = (np.arange(rows.size) - (np.cumsum(runs) - runs)[rows]).astype(float)
        heads = np.column_stack([heads[rows], ks])
        head_cost = head_cost[rows] + price * ks
    p_last, n_last = pools[last]
    k_lo = np.clip(np.ceil((lo - 1e-6 - head_cost) / p_last), 0, n_last + 1).astype(int)
    k_hi = np.clip(np.ceil((hi - 1e-6 - head_cost) / p_last) - 1, -1, n_last).astype(int)  # cost < hi
    size = np.maximum(0, k_hi - k_lo + 1)
    if int(size.sum()) > most:
        return None
    rows = np.repeat(np.arange(head_cost.size), size)
    # Within each head's run, k_lo, k_lo + 1, ...: the position in the run added to its k_lo.
    starts = np.cumsum(size) - size
    ks = k_lo[rows] + np.arange(rows.size) - starts[rows]
    counts = np.zeros((rows.size, len(pools)))
    for j, i in enumerate(rest):
        counts[:, i] = heads[rows, j]
    counts[:, last] = ks
    costs = counts @ np.array([p for p, _ in pools])
    keep = (costs >= lo - 1e-6) & (costs < hi - 1e-6)
    return counts[keep], costs[keep]


def purchase_lagrangians(buys: np.ndarray, pools: list, fixed: float, worth: dict[str, float],
                         scales: list[float], multi: list[tuple[str, dict[str, int]]] = (),
                         caps: dict[str, tuple[float, float, int]] | None = None) -> np.ndarray:
    """Per purchase (rows of ``buys``, GPUs per pool of ``pools``), the Lagrangian of one set of
    duals (``Patterns.best_duals``' ``fixed``, ``worth`` and scalings) at the purchase's sizes,
    for every purchase at once: ``max_s s fixed + sum_p P_p min(0, c_p - s w_p)``. With
    multi-GPU models (``Patterns.multi``) a lower bound on it: each model at its cheapest pool,
    its GPUs charged ``max(c_p, s w_p)`` (GPUs it takes are ones the pool part cannot count;
    whether they fit is dropped), so it stays linear in the purchase. ``caps``: per pool, a bound
    on what its GPUs hold together (:meth:`Patterns.pool_caps`)."""
    prices = np.array([p.cost_per_gpu_hour for p in pools])
    caps = caps or {}
    w = np.array([worth.get(p.name, 0.0) for p in pools])
    out = np.full(buys.shape[0], -np.inf)
    for sc in scales:
        extra = sum(min(g * max(prices[j], sc * w[j]) for j, p in enumerate(pools) if (g := where.get(p.name)))
                    for _, where in multi if any(p.name in where for p in pools))
        cap_s = _scaled(caps, sc)
        gain = sum(_gain(prices[j], sc * w[j], cap_s.get(p.name), buys[:, j]) for j, p in enumerate(pools))
        out = np.maximum(out, sc * fixed + extra - gain)
    return out


def _scaled(caps: dict[str, tuple[float, float, int]], s: float) -> dict[str, tuple[float, float, int]]:
    """:meth:`Patterns.pool_caps`' bounds at the duals scaled by ``s`` (linear in them)."""
    return {name: (s * A, s * lam, full) for name, (A, lam, full) in caps.items()}


def _gain(c: float, w: float, cap: tuple[float, float, int] | None, most: np.ndarray) -> np.ndarray:
    """Per entry of ``most`` (GPUs of a pool), ``max min(w Z, A + lam (Z - full)) - c Z`` over
    ``0 <= Z <= most`` (``cap`` is ``(A, lam, full)``; None: ``max (w - c) Z``). Concave and
    piecewise linear in ``Z``: its most is at 0, at ``most`` or where the two lines cross."""
    if cap is None:
        return np.maximum(0.0, w - c) * most
    A, lam, full = cap

    def f(z: np.ndarray) -> np.ndarray:
        return np.minimum(w * z, A + lam * (z - full)) - c * z
    cross = (A - lam * full) / (w - lam) if w > lam else np.inf
    return np.maximum.reduce([np.zeros_like(most, dtype=float), f(most.astype(float)),
                              f(np.clip(cross, 0.0, most).astype(float))])


def _best_gain(pools: list[tuple[float, float, int]], s: float, upper: float) -> float:
    """``max sum (s w_p - c_p) Z_p`` over ``0 <= Z_p <= max_gpus``, ``sum c_p Z_p <= upper``: the
    pools whose GPUs are worth more than they cost, best value per unit of cost first."""
    gain, budget = 0.0, upper
    for c, w, n in sorted(pools, key=lambda t: -(s * t[1] - t[0]) / t[0] if t[0] > 0 else -math.inf):
        g = s * w - c
        if g <= 0:
            break
        if c <= 0:
            return math.inf
        take = min(float(n), budget / c)
        gain += g * take
        budget -= take * c
        if budget <= 1e-12:
            break
    return gain


class _Master:
    """The restricted master LP of :func:`pattern_bound` (data -> variables -> constraints ->
    objective, as the OR-Tools samples build a model): GPUs per layout, the columns so far, each
    model's share per replica count, the spot floors' rows and the multi-GPU replicas. The
    build is one linear model, row family after row family: clearer whole."""

    def __init__(self, problem: Problem, pat: Patterns, upper: float) -> None:
        self.pat, self.problem, self.upper = pat, problem, upper
        self.iterations = 0
        self.work = 0.0
        """Deterministic seconds of the solves so far (``ITER_S``, ``IPM_S``)."""
        self.interior = len(pat.models) >= INTERIOR_FROM
        self._build()

    def _build(self) -> None:
        """The LP without the generated columns (:meth:`add_columns` adds them)."""
        problem, pat, upper = self.problem, self.pat, self.upper
        solver = self.solver = pywraplp.Solver.CreateSolver("GLOP")
        inf = solver.infinity()
        big = upper if math.isfinite(upper) else sum(p.cost_per_gpu_hour * p.max_gpus for p in problem.fleet.pools)
        big = 10.0 * max(big, 1.0)
        obj = self.obj = solver.Objective()
        # Slots of each type the layouts provide, against slots used.
        self.slot_row = {key: solver.Constraint(0.0, inf, f"slots[{key}]") for key in pat.types}
        pool_rows = {}
        mig_z: dict[str, list] = defaultdict(list)
        for p in problem.fleet.pools:
            size = p.max_gpus if pat.sizes is None else pat.sizes.get(p.name, 0)
            pool_row = pool_rows[p.name] = solver.Constraint(-inf, float(size), f"pool[{p.name}]")
            for i, (cnt, _) in enumerate(pat.layouts[p.name]):
                z = solver.NumVar(0.0, inf, f"z[{p.name},{i}]")
                obj.SetCoefficient(z, p.cost_per_gpu_hour)
                pool_row.SetCoefficient(z, 1.0)
                if WHOLE not in cnt:
                    mig_z[p.name].append(z)
                for prof, n in cnt.items():
                    key = f"{p.name}/{prof}"
                    if key in self.slot_row:
                        self.slot_row[key].SetCoefficient(z, float(n))
        # Each model runs at one of its counts (an artificial, dear variable keeps the LP feasible
        # while the columns cannot yet hold everything within the pools' sizes).
        self.cover = [solver.Constraint(0.0, inf, f"cover[{k}]") for k in range(len(pat.reps))]
        self.y_of: dict[int, object] = {}  # y[m, n] per replica class
        y_of = self.y_of
        for name in pat.models:
            row = solver.Constraint(1.0, inf, f"one[{name}]")
            art = solver.NumVar(0.0, inf, f"art[{name}]")
            obj.SetCoefficient(art, big)
            row.SetCoefficient(art, 1.0)
            for k in pat.model_reps[name]:
                y = solver.NumVar(0.0, inf, f"y[{k}]")
                row.SetCoefficient(y, 1.0)
                self.cover[k].SetCoefficient(y, -float(pat.reps[k][1]))
                y_of[k] = y
        # Floor rows (spot floors, the spread rule): at most ``most`` of the replicas of (m, n) on a
        # pool, per share y[m, n].
        self.floor_rows = []
        for k, _, most in pat.floor_rows:
            row = solver.Constraint(-inf, 0.0, "")
            row.SetCoefficient(y_of[k], -float(most))
            self.floor_rows.append(row)
        # Spread rows (Patterns.spread): a class's replicas in a pool's MIG slots, at most its MIG GPUs.
        self.spread_rows = []
        for _, pool in pat.spread_rows:
            row = solver.Constraint(-inf, 0.0, "")
            for z in mig_z[pool]:
                row.SetCoefficient(z, -1.0)
            self.spread_rows.append(row)
        # Multi-GPU replicas: whole GPUs of one pool per model (a mix in the LP); an artificial
        # as above, where a purchase's sizes cannot hold them (the Lagrangian then says so).
        self.u_of: dict[tuple[str, str], object] = {}
        for name, where in pat.multi:
            row = solver.Constraint(1.0, inf, f"multi[{name}]")
            art = solver.NumVar(0.0, inf, f"art[multi,{name}]")
            obj.SetCoefficient(art, big)
            row.SetCoefficient(art, 1.0)
            for pname, gpus in where.items():
                uv = self.u_of[(name, pname)] = solver.NumVar(0.0, inf, f"u[{name},{pname}]")
                obj.SetCoefficient(uv, problem.fleet.pool(pname).cost_per_gpu_hour * gpus)
                pool_rows[pname].SetCoefficient(uv, float(gpus))
                row.SetCoefficient(uv, 1.0)
        obj.SetMinimization()
        self.added = 0

    def add_columns(self) -> None:
        """The columns generated since the last call, as variables."""
        pat, inf = self.pat, self.solver.infinity()
        for key, reps in pat.columns[self.added:]:
            x = self.solver.NumVar(0.0, inf, "")
            self.slot_row[key].SetCoefficient(x, -1.0)
            pool = pat.types[key].st.pool.name
            for k in reps:
                self.cover[k].SetCoefficient(x, 1.0)
                r = pat._floor_index.get((k, pool))
                if r is not None:
                    self.floor_rows[r].SetCoefficient(x, 1.0)
                r = pat._spread_index.get((k, pool)) if pat.types[key].spread_row is not None else None
                if r is not None:
                    self.spread_rows[r].SetCoefficient(x, 1.0)
        self.added = len(pat.columns)

    def solve(self, seconds: float, vertex: bool = False) -> tuple[float, np.ndarray, dict[str, float]] | None:
        """The LP's optimum, the duals of the covering and floor rows (``mu``, as the pricing and
        the Lagrangian take them) and of the slot rows; None where the solver stops short. The
        shares per replica count (``Patterns.shares``, ``multi_shares``) are kept for the dive,
        except at ``vertex``: an interior master's duals at a vertex (crossover), not central, for
        the last bound only."""
        self.add_columns()
        if self.interior:
            solved = self._solve_interior(seconds, vertex)
        else:
            iterations = self.iterations
            solved = self._solve_glop(seconds)
            self.work += (self.iterations - iterations) * ITER_S + SOLVE_COL_S * self.solver.NumVariables()
        if solved is None:
            return None
        objective, dual_of, value_of = solved
        mu = np.array([max(0.0, dual_of(c)) for c in self.cover]
                      + [max(0.0, -dual_of(r)) for r in self.floor_rows + self.spread_rows])
        if not vertex:
            self.pat.shares = np.array([value_of(self.y_of[k]) for k in range(len(self.pat.reps))])
            self.pat.multi_shares = defaultdict(dict)
            for (name, pname), uv in self.u_of.items():
                self.pat.multi_shares[name][pname] = value_of(uv)
        return objective, mu, {key: max(0.0, dual_of(row)) for key, row in self.slot_row.items()}

    def _solve_glop(self, seconds: float) -> tuple[float, Callable, Callable] | None:
        """:meth:`solve` by GLOP, warm-started from the last basis: the optimum, and a row's dual
        and a variable's value by its pywraplp object."""
        self.solver.SetTimeLimit(int(max(0.1, seconds) * 1000))
        start = time.monotonic()
        status = self.solver.Solve()
        if status == pywraplp.Solver.ABNORMAL and time.monotonic() - start < 0.5 * seconds:
            # GLOP warm-starts from the last basis, and that basis can go singular as columns
            # arrive: family-900003-mixed-346 stopped at round 133 of 165 with its primal
            # infeasibility at 1e19, after 0 iterations, and its bound at 191.6/h where the
            # converged LP gives 204.7/h. The same LP built anew solves in 0.3 s.
            self._build()
            self.add_columns()
            self.solver.SetTimeLimit(int(max(0.1, seconds - (time.monotonic() - start)) * 1000))
            status = self.solver.Solve()
        if status != pywraplp.Solver.OPTIMAL:
            return None
        self.iterations += self.solver.iterations()
        return self.obj.Value(), lambda row: row.dual_value(), lambda var: var.solution_value()

    def _solve_interior(self, seconds: float, vertex: bool) -> tuple[float, Callable, Callable] | None:
        """:meth:`solve` by HiGHS's interior point method, cold, on the model GLOP holds (exported:
        one LP, two ways to solve it; ``INTERIOR_FROM`` says why): as :meth:`_solve_glop`."""
        h, lp = run_exported(self.solver, (("output_flag", False), ("threads", 1), ("solver", "ipm"),
                                           ("run_crossover", "on" if vertex else "off"),
                                           ("time_limit", float(max(0.1, seconds)))))
        nnz = int(lp.a_matrix_.start_[-1])
        self.work += nnz * (EXPORT_S + int(h.getInfo().ipm_iteration_count) * (IPM_S + IPM_S2 * nnz))
        if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            return None
        sol = h.getSolution()
        dual, value = np.asarray(sol.row_dual), np.asarray(sol.col_value)
        return (float(h.getInfo().objective_function_value), lambda row: float(dual[row.index()]),
                lambda var: float(value[var.index()]))


def _first_columns(pat: Patterns, seeds: list[tuple[str, list[tuple[str, int]]]]) -> None:
    """Every replica alone on every slot type that holds it (past ``ALONE_ALL`` such columns, on
    the cheapest one of each pool), and the known packing's groups."""
    index = {rc: k for k, rc in enumerate(pat.reps)}
    alone = [(key, k) for key, ti in pat.types.items() for k in ti.keys]
    if len(alone) > ALONE_ALL:
        cheapest: dict[tuple[int, str], tuple[float, str]] = {}
        for key, k in alone:
            st = pat.types[key].st
            price = slot_price(st)
            if price < cheapest.get((k, st.pool.name), (math.inf, ""))[0]:
                cheapest[(k, st.pool.name)] = (price, key)
        kept = {(key, k) for (k, _), (_, key) in cheapest.items()}
        alone = [c for c in alone if c in kept]
    for key, k in alone:
        pat.add(key, (k,))
    for key, members in seeds:
        ks = tuple(index[rc] for rc in members if rc in index)
        if key in pat.types and len(ks) == len(members) and pat._admits(key, ks):
            pat.add(key, ks)


def _pricing_round(pat: Patterns, mu: np.ndarray, pi: dict[str, float], out_of_time,
                   top: bool = False, nodes: int = PRICE_NODES, weighting: float | None = None) -> tuple[int, int]:
    """One round of pricing at the duals: per slot type, the best group worth more than the
    slot's dual, then again among the models the groups found so far leave out (``DISJOINT``
    follow-ups, a packing at these duals one group at a time: long-tail converges in 40 rounds
    instead of 365, 5.8 deterministic s instead of 20). ``top``: only the slot types priced on
    runs of cycles, searched at the runs' top (``Patterns.search``): the check before column
    generation is called converged. ``weighting``: the searches' order of time against memory
    (``Patterns.search``). A round at the cells' own weightings also searches the runs' top where
    ``TOP_EVERY`` says. Returns (columns added, types priced)."""
    new, priced = 0, 0
    for key in pat.types:
        if out_of_time():
            break
        if top and pat.exact_cells(key, mu):
            priced += 1
            continue
        cols, cells = pat.search(key, mu, floor=pi[key], top=top, node_limit=nodes, weighting=weighting)
        priced += 1
        if (not top and weighting is None and not pat.exact_cells(key, mu)
                and (pat.rounds_priced % TOP_EVERY == 0 or pat.top_useful.get(key, False))):
            at_top, _ = pat.search(key, mu, floor=pi[key], top=True, node_limit=nodes)
            bottom = pat.worth(key, mu, cols) - pi[key]
            gain = pat.worth(key, mu, at_top) - pi[key]
            pat.top_useful[key] = gain > max(TOP_GAIN * pi[key], TOP_MORE * bottom)
            for col in at_top:
                new += pat.add(key, col)
        for col in cols:
            new += pat.add(key, col)
        skip: list[int] = []
        for _ in range(DISJOINT):
            if not cols or out_of_time():
                break
            skip += [pat.model_index[pat.reps[k][0]] for k in cols[-1]]
            cols, _ = pat.search(key, mu, floor=pi[key], cells=cells, skip=np.array(skip), top=top,
                                 node_limit=nodes, weighting=weighting)
            for col in cols:
                new += pat.add(key, col)
    if not top and weighting is None:
        pat.rounds_priced += 1
    return new, priced


def _other_weightings(pat: Patterns, mu: np.ndarray, pi: dict[str, float], out_of_time,
                      nodes: int = PRICE_NODES) -> tuple[int, int]:
    """Where a round at the cells' own weightings found nothing: rounds at ``OTHER_WEIGHTINGS``,
    until one finds columns. (columns added, types priced) of the last."""
    new, priced = 0, len(pat.types)
    for weighting in OTHER_WEIGHTINGS:
        new, priced = _pricing_round(pat, mu, pi, out_of_time, nodes=nodes, weighting=weighting)
        if new or priced < len(pat.types):
            break
    return new, priced


def pattern_bound(problem: Problem, time_limit: float, upper: float = math.inf,
                  seeds: list[tuple[str, list[tuple[str, int]]]] = (),
                  counts: dict[str, set[int]] | None = None, sizes: dict[str, int] | None = None,
                  spread: bool = False, stop_above: float = math.inf,
                  only: dict[str, frozenset] | None = None, apart: bool = False) -> PatternBound | None:
    """Column generation on the pattern LP within about ``time_limit`` seconds; the Lagrangian
    bound of its last duals (module docstring) on the cost of every plan, multi-GPU replicas
    included. ``upper``: any cost (the best plan's so far is best); ``min(L, upper)`` is returned.
    ``seeds`` are groups (slot type key, [(model, count)]) of a known packing, added as first
    columns; ``counts`` are replica counts to allow beside ``Problem.replica_options`` (a re-plan
    keeps its current ones); ``sizes``: GPUs per pool in place of the pools' sizes
    (``Patterns.sizes``); ``spread``: with the spread rows (``Patterns.spread``); ``stop_above``:
    it stops once its bound is above this (all a caller ruling out a purchase needs); ``only``:
    per shared model, the counts it is held to (a branch of ``purchases.rule_out``: the bound is
    then over the plans that give the model one of them); ``apart``: with the rows of the spread
    rule (``Patterns.apart``: the bound is then over the plans that obey it).
    None if nothing needs a GPU."""
    warm()  # before the clock starts: compiling is not the column generation's time
    t0 = time.monotonic()
    pat = Patterns(problem, counts, only, apart)
    pat.sizes = sizes
    if spread:
        pat.spread()
    if not pat.types and not pat.multi:
        return None
    _first_columns(pat, seeds)
    master = _Master(problem, pat, upper)
    clock = _Clock(pat, master, t0)
    spent = clock.spent
    converged, lp = False, math.inf
    mu = np.zeros(len(pat.reps) + len(pat.floor_rows) + len(pat.spread_rows))
    budget = 0.9 * time_limit  # the rest for the final bound's pricing (compiled: a second at most)
    best, last_eval = -math.inf, 0.0
    evals, eval_cost = 0.0, 0.0  # counted seconds in evaluations so far, and in the last one

    recent: list[np.ndarray] = []  # the last rounds' duals (AVERAGE_LAST)
    while True:
        solved = clock.solve(time_limit)
        if solved is None:
            break
        lp, mu, pi = solved
        recent = (recent + [mu])[-AVERAGE_LAST:]
        if spent() > budget:
            break
        # The last duals are not always the best ones: take the bound now and then (the pricing
        # below is cut short, so its own bound is weak), and stop once it meets the restricted
        # LP (then both are the LP's optimum).
        if spent() - last_eval > EVAL_EVERY * time_limit and evals + eval_cost <= EVAL_SHARE * time_limit:
            before = spent()
            best = max(best, pat.lagrangian(mu, upper, cells=EXACT_CELLS))  # runs: the last one is finer
            last_eval = spent()
            eval_cost = last_eval - before
            evals += eval_cost
            if best >= lp - 1e-6 * max(1.0, lp):
                converged = True
                break
            if best > stop_above:
                break
        new, priced = _pricing_round(pat, mu, pi, lambda: spent() > budget)
        if new == 0 and priced == len(pat.types) and pat.grid:
            pat.grid = 0.0  # the fine cells find the groups that coarse cells charge too much
            continue
        if new == 0 and priced == len(pat.types):
            # Groups tight in time that the runs' bottom charges miss: searched only here, where
            # they are all that is left (on every round they took family-0-long-tail-194's budget).
            new, priced = _pricing_round(pat, mu, pi, lambda: spent() > budget, top=True)
            if new == 0 and priced == len(pat.types):
                new, priced = _other_weightings(pat, mu, pi, lambda: spent() > budget)
            if new == 0 and priced == len(pat.types):
                converged = True  # no group the search found improves the LP at its duals
                break
    if clock.rounds and not (converged and best >= lp - 1e-6 * max(1.0, lp)):
        # Converged, the deeper bound, unless an evaluation during the search says that it would
        # not fit the time left (then the one at BOUND_NODES, as where it was cut short). With no
        # evaluation made, nothing says so: it runs as it always did.
        deep = converged and (eval_cost == 0.0 or spent() + FINAL_COST * eval_cost <= time_limit)
        # The pools' caps where the bound still falls short of what the caller needs (a purchase
        # ruled out needs no more).
        duals = [mu]
        if not converged and len(recent) == AVERAGE_LAST:
            # First: stopped short, the mean is most often the better (``AVERAGE_LAST``), and the
            # bounds after the first may not be taken (``FINAL_DEAR``).
            duals.insert(0, np.mean(recent, axis=0))
        if master.interior:
            # Central duals steady the pricing, but the Lagrangian can be far better at a vertex's,
            # or far worse: family-3100098-mixed-865 (one T4 pool, 2,206 GPUs) 727.3/h central
            # and 823.0/h at the vertex; generated-1000 223.3/h and 175.7/h. Both are bounds.
            at_vertex = master.solve(clock.seconds(time_limit), vertex=True)
            if at_vertex is not None:
                duals.append(at_vertex[1])
        took = 0.0  # counted seconds of the bound at the duals before
        for m in duals:
            if took > FINAL_DEAR * time_limit and spent() + took > time_limit:
                break  # one more, as dear as the one before, would end past the limit
            before = spent()
            # Branch and bound runs past the time limit too (``Patterns.last_values``): the grids
            # it would leave cost more (family-1500050-mixed-493 at the mean duals: 10.7 counted s
            # for 129.04/h, 4.8 s for 146.96/h with it).
            best = max(best, pat.lagrangian(m, upper, V=pat.last_values(m, deep=deep and spent() < time_limit),
                                            caps=best <= stop_above, lp=lp))
            took = spent() - before
    value = min(best, upper)
    clock.walled()
    return PatternBound(max(0.0, value), lp, len(pat.columns), clock.rounds, converged, time.monotonic() - t0,
                        pat, master, spent())


class _Clock:
    """Deterministic seconds of a column generation from its start or resumption (``NODE_S``,
    ``ITER_S``, ``SOLVE_COL_S``, ``ROUND_S``); the wall clock only where it runs far behind
    (``WALL_FACTOR``). Its :meth:`solve` is one round's restricted LP."""

    def __init__(self, pat: Patterns, master: _Master, t0: float) -> None:
        self.pat, self.master, self.t0 = pat, master, t0
        self.work0, self.master0, self.rounds = pat.work, master.work, 0

    def counted(self) -> float:
        """The deterministic seconds alone."""
        return self.pat.work - self.work0 + self.master.work - self.master0 + self.rounds * ROUND_S

    def spent(self) -> float:
        """:meth:`counted`, or the wall clock's seconds over ``WALL_FACTOR`` where those are more
        (never with ``PlanSettings.reproducible``)."""
        if self.pat.problem.settings.reproducible:
            return self.counted()
        return max(self.counted(), (time.monotonic() - self.t0) / WALL_FACTOR)

    def walled(self) -> None:
        """Where :meth:`spent` is the wall clock's, not the count: named in the plan
        (``Problem.past``). It ends the loop sooner, and a caller that counts it
        (``purchases.rule_out``) has less left: family-4200001-mixed-32's proof on a clock four
        times fast ruled out 42 of its 46 cheaper purchases, not all."""
        if self.spent() > self.counted():
            self.pat.problem.past(-math.inf, COLUMN_GENERATION)

    def seconds(self, time_limit: float) -> float:
        """The restricted LP's own time limit: what the guard leaves of ``WALL_FACTOR`` times
        ``time_limit`` (``Problem.limit_s``)."""
        return self.pat.problem.limit_s(WALL_FACTOR * time_limit - (time.monotonic() - self.t0))

    def solve(self, time_limit: float) -> tuple[float, np.ndarray, dict[str, float]] | None:
        """The restricted LP's optimum and duals (kept as ``pat.duals``), a round counted; None
        where GLOP stops short."""
        solved = self.master.solve(self.seconds(time_limit))
        if solved is not None:
            self.rounds += 1
            self.pat.duals = solved[1], solved[2]
        return solved


def refine(found: PatternBound, time_limit: float, upper: float) -> PatternBound:
    """Column generation resumed after it converged, pricing with ``DEEP_NODES`` where it priced
    with ``PRICE_NODES``, within ``time_limit`` deterministic seconds; the bound of the last duals
    (never below ``found``'s). It goes on with ``found``'s columns and LP, which it extends. For
    the bound only: the planner calls it once the packing from the columns is made, with what the
    bound's budget has left, so plans do not change.

    The search for columns stops at a few hundred nodes, so "converged" means it found no
    improving group, not that there is none: family-600018-long-tail-304 converged at an LP of
    165.61/h with groups worth 2.4959 on an A100 slot whose dual was 2.47, and the Lagrangian of
    those duals was 162.33/h. ``upper``: the best plan's cost now."""
    pat, master = found.patterns, found.master
    if pat is None or master is None or not found.converged or time_limit <= 0:
        return found
    t0 = time.monotonic()
    clock = _Clock(pat, master, t0)
    converged, mu, lp = False, None, found.lp
    while clock.spent() < time_limit:
        solved = clock.solve(time_limit)
        if solved is None:
            break
        lp, mu, pi = solved
        new, priced = _pricing_round(pat, mu, pi, lambda: clock.spent() > time_limit, nodes=DEEP_NODES)
        if new == 0 and priced == len(pat.types):
            new, priced = _other_weightings(pat, mu, pi, lambda: clock.spent() > time_limit, nodes=DEEP_NODES)
        if new == 0 and priced == len(pat.types):
            converged = True
            break
    clock.walled()
    if mu is None or clock.rounds == 1:  # nothing new: the bound stands
        return found
    value = pat.lagrangian(mu, upper, V=pat.last_values(mu, deep=converged), caps=True, lp=lp)
    value = max(found.value, min(value, upper))
    return replace(found, value=max(0.0, value), lp=lp, columns=len(pat.columns), rounds=found.rounds + clock.rounds,
                   converged=converged, seconds=found.seconds + time.monotonic() - t0,
                   spent=found.spent + clock.spent())
