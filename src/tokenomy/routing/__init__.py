"""Routing: which deployment serves a request (preferences, health, power-aware placement)."""

from tokenomy.routing.health import (
    BreakerPolicy,
    BreakerState,
    CircuitBreaker,
    DeploymentHealth,
    HealthBoard,
    HealthSnapshot,
    RollingStats,
)
from tokenomy.routing.preferences import (
    Candidate,
    Needs,
    Preferences,
    parse_preferences,
    rank,
    request_parameters,
    split_model_suffix,
)

__all__ = [
    "BreakerPolicy",
    "BreakerState",
    "Candidate",
    "CircuitBreaker",
    "DeploymentHealth",
    "HealthBoard",
    "HealthSnapshot",
    "Needs",
    "Preferences",
    "RollingStats",
    "parse_preferences",
    "rank",
    "request_parameters",
    "split_model_suffix",
]
