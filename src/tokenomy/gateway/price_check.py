"""Every deployment that can serve has a price, or the configuration is refused.

A deployment billed at a name the catalogue (and the config's ``prices:``) does not know
would serve for free. ``tokenomy config check`` and every server's start-up ask here,
so the mistake is an error naming the line, not a warning in a log after the tokens
went out.
"""

from __future__ import annotations

from datetime import UTC, datetime

from tokenomy.billing.catalog import PriceBook, PriceNotFound
from tokenomy.config import Config, ConfigError
from tokenomy.core.registry import Registry


def served_price_problems(
    cfg: Config, registry: Registry, prices: PriceBook, at: datetime | None = None
) -> list[str]:
    """One message per served deployment without a price in effect at ``at`` (now).

    Served: what the registry made active (credentials, or a standby standing in); a
    deployment that cannot serve yet costs nothing yet and is not refused.
    """
    at = at or datetime.now(UTC)
    problems = []
    for i, m in enumerate(cfg.models):
        route = registry.get(m.name)
        if route is None or route.name != m.name:
            continue
        served = {d.id: d for d in route.deployments}
        for j, d in enumerate(m.deployments):
            dep = served.get(f"{d.vendor}/{d.model}")
            if dep is None:
                continue
            ref = "/".join(dep.price_ref)
            if dep.price_ref not in prices:
                why = "names no price in the catalogue or in the config's prices: list"
            else:
                try:
                    prices.lookup(*dep.price_ref, at)
                    continue
                except PriceNotFound:
                    why = f"has no price in effect at {at:%Y-%m-%d %H:%M} UTC"
            own = "" if d.price else " (without price: it is billed at its own name)"
            problems.append(
                f"{cfg.where('models', i, 'deployments', j, 'price')}: '{ref}'{own} {why}, "
                f"so model '{m.name}' would be served for free. Set price: to a catalogue "
                "entry (tokenomy prices lists them) or add one under prices:"
            )
    return problems


def check_served_prices(cfg: Config, registry: Registry, prices: PriceBook) -> None:
    """Raise :class:`ConfigError` listing every served deployment without a price."""
    problems = served_price_problems(cfg, registry, prices)
    if problems:
        raise ConfigError("\n".join(problems))
