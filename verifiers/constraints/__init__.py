"""Constraint kinds; importing this package registers every one of them."""

from envfactory.verifiers.constraints import (  # noqa: F401  (imported to register)
    aggregate,
    all_different,
    attribute,
    conditional_budget,
    custom,
    distance,
    distinct_count,
    schedule,
    sums,
    total_budget,
    unit_budget,
)
from envfactory.verifiers.constraints.base import KINDS, Constraint, ConstraintError, Need, check_source, get_kind, validate

__all__ = ["KINDS", "Constraint", "ConstraintError", "Need", "check_source", "get_kind", "validate"]
