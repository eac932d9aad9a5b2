"""Constraint kinds; importing this package registers every one of them."""

from envfactory.verifiers.constraints import (  # noqa: F401  (imported to register)
    aggregate,
    all_different,
    attribute,
    conditional_budget,
    distance,
    distinct_count,
    total_budget,
    unit_budget,
)
from envfactory.verifiers.constraints.base import KINDS, Constraint, Need, check_source, get_kind

__all__ = ["KINDS", "Constraint", "Need", "check_source", "get_kind"]
