"""The simulator's scaling policies by name, registered explicitly: ``packer simulate --policy NAME``.

``static`` and ``hpa`` (:mod:`sims.policies`) and ``packer``, the project's scaling policy
(:mod:`sims.policy_packer`), are listed here, in one place, rather than found by name at run time.
``register_policy(name, factory)`` adds one (a test's, a user's); ``factory(plan, options) ->
Policy`` gets the starting plan and the scenario's ``policy_options:``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from packer.errors import UserError
from packer.plan import Plan
from sims import policy_packer
from sims.policies import HpaPolicy, Policy, PolicyFactory, StaticPolicy

_REGISTRY: dict[str, PolicyFactory] = {"static": StaticPolicy, "hpa": HpaPolicy, "packer": policy_packer.make}


def register_policy(name: str, factory: PolicyFactory) -> None:
    """Make ``factory(plan, options) -> Policy`` available as ``--policy name``."""
    _REGISTRY[name] = factory


def policy_names() -> list[str]:
    """Every registered policy's name, sorted."""
    return sorted(_REGISTRY)


def get_policy(name: str, plan: Plan, options: Mapping[str, Any] | None = None) -> Policy:
    """Build the policy registered as ``name`` for ``plan``."""
    if name not in _REGISTRY:
        raise UserError(f"unknown policy {name!r}; use one of {', '.join(policy_names())}")
    try:
        return _REGISTRY[name](plan, dict(options or {}))
    except (TypeError, ValueError) as e:  # an option the policy cannot read ("abc" for a number)
        if isinstance(e, UserError):
            raise
        raise UserError(f"policy_options: policy {name} cannot read its options ({e}). Fix: give each "
                        f"option as the policy documents it, numbers as numbers") from None
