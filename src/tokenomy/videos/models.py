"""The video models a gateway serves: each one deployment, its render capacity, its price."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from tokenomy.billing.media_prices import MediaPriceBook
from tokenomy.catalog.vendors import load_presets
from tokenomy.config import Config, VideoModelConfig
from tokenomy.core.registry import Deployment, Vendor
from tokenomy.gateway.registry import vendor_from_config


@dataclass(frozen=True, slots=True)
class VideoModel:
    name: str
    deployment: Deployment
    price_ref: tuple[str, str]
    capacity: int
    max_queue_depth: int
    max_seconds: int
    default_seconds: int
    default_size: str

    @property
    def id(self) -> str:
        return self.deployment.id


class VideoModels:
    """Video models by public name and by deployment id."""

    def __init__(self, models: list[VideoModel], prices: MediaPriceBook) -> None:
        self.by_name = {m.name: m for m in models}
        self.by_deployment = {m.id: m for m in models}
        self.prices = prices

    def __iter__(self) -> Iterator[VideoModel]:
        return iter(self.by_name.values())

    def sizes(self, m: VideoModel, at: datetime) -> frozenset[str]:
        return self.prices.sizes(*m.price_ref, at)


def deployment_id(c: VideoModelConfig) -> str:
    """The id of a video model's deployment (jobs are queued under it)."""
    return f"{c.vendor}/{c.model or c.name}"


def _model(
    c: VideoModelConfig, vendors: dict[str, Vendor], cfg: Config, env: Mapping[str, str]
) -> VideoModel:
    vendor = vendors.get(c.vendor)
    if vendor is None:  # resolved as chat deployments' vendors are (presets, keys, proxy)
        vendor = vendors[c.vendor] = vendor_from_config(
            c.vendor, cfg.vendors.get(c.vendor), load_presets(), env
        )
    upstream = c.model or c.name
    price_ref = tuple(c.price.split("/", 1)) if c.price else (c.vendor, upstream)
    dep = Deployment(
        id=deployment_id(c),
        vendor=vendor,
        upstream_model=upstream,
        weight=1,
        region=None,
        context_length=None,
        max_output=None,
        capabilities=frozenset(),
        standby=False,
        price_ref=(price_ref[0], price_ref[1]),
    )
    return VideoModel(
        name=c.name,
        deployment=dep,
        price_ref=(price_ref[0], price_ref[1]),
        capacity=c.capacity,
        max_queue_depth=c.max_queue_depth,
        max_seconds=c.max_seconds,
        default_seconds=c.default_seconds,
        default_size=c.default_size,
    )


def build_video_models(cfg: Config, env: Mapping[str, str] | None = None) -> VideoModels:
    """The configured video models; one without a media price now is refused (nothing is
    served for free)."""
    env = os.environ if env is None else env
    prices = MediaPriceBook.load(cfg.videos.prices)
    vendors: dict[str, Vendor] = {}
    models = [_model(c, vendors, cfg, env) for c in cfg.videos.models]
    now = datetime.now(UTC)
    for m in models:
        if not prices.sizes(*m.price_ref, now):
            raise ValueError(
                f"video model {m.name}: no media price for {'/'.join(m.price_ref)} now "
                "(add one to the config's videos.prices)"
            )
    return VideoModels(models, prices)
