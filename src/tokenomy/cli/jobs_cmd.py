"""``tokenomy jobs list|show|cancel``: queued generation jobs (videos) as the database has
them, with each waiting job's place and ETA worked out as the gateway works them out."""

from __future__ import annotations

import argparse
import json
import time
from datetime import UTC, datetime
from typing import Any

from tokenomy.billing.call_pricing import units
from tokenomy.cli.common import add_config_arg, config_from, database, fail
from tokenomy.config import Config
from tokenomy.store.videos import ENDED, IN_PROGRESS, VideoStore
from tokenomy.videos.models import deployment_id
from tokenomy.videos.objects import video_object
from tokenomy.videos.plan import Running, Waiting, moving_rate, plan


def register(sub: Any) -> None:
    p = sub.add_parser("jobs", help="list, show or cancel queued generation jobs (videos)")
    cmds = p.add_subparsers(dest="jobs_cmd", required=True)
    ls = cmds.add_parser("list", help="jobs, newest first")
    ls.add_argument("--limit", type=int, default=20)
    ls.add_argument("--owner", help="only this org's (or house key's) jobs")
    show = cmds.add_parser("show", help="one job: status, place in line, ETA, held and cost")
    show.add_argument("job_id")
    cancel = cmds.add_parser(
        "cancel", help="cancel a job that has not started (a running gateway releases its hold)"
    )
    cancel.add_argument("job_id")
    for c in (ls, show, cancel):
        add_config_arg(c)
        c.add_argument("--json", action="store_true", help="print OpenAI's video objects")
    ls.set_defaults(func=list_jobs)
    show.set_defaults(func=show_job)
    cancel.set_defaults(func=cancel_job)


def _when(ms: int | None) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S") if ms else "-"


def _slot(cfg: Config, store: VideoStore, row: dict[str, Any]) -> tuple[int, float, float] | None:
    """The job's (position, seconds to start, seconds to ready), as the gateway's plan."""
    if row["status"] in ENDED:
        return None
    deployments = {deployment_id(m): m.capacity for m in cfg.videos.models}
    capacity = deployments.get(row["deployment"])
    if capacity is None:
        return None
    now = time.time() * 1000
    waiting, running, last = store.queue(row["deployment"])
    measured = store.measured(row["deployment"], cfg.videos.measured_window)
    rate = moving_rate(measured, cfg.videos.default_render_ratio * 1000)
    rs = [Running(*r) for r in running]
    if row["status"] == IN_PROGRESS:
        r = next((r for r in rs if r.id == row["id"]), None)
        return None if r is None else (0, 0.0, (r.started_ms + r.seconds * rate - now) / 1000)
    slots = plan([Waiting(*w) for w in waiting], rs, last, capacity, rate, now)
    s = slots.get(row["id"])
    return None if s is None else (s.position, (s.start_ms - now) / 1000, (s.end_ms - now) / 1000)


def list_jobs(args: argparse.Namespace) -> int:
    engine = database(config_from(args))
    try:
        rows = VideoStore(engine).page(args.owner, after=None, limit=args.limit)
    finally:
        engine.dispose()
    objs = [video_object(r) for r in rows]
    if args.json:
        print(json.dumps(objs, indent=2))
        return 0
    if not rows:
        print("no jobs")
    for r in rows:
        print(
            f"{r['id']}  {r['status']:<11} {_when(r['created_ms'])}  {r['model']:<16} "
            f"{r['seconds']:>3}s {r['size']:<9} {r['owner']}"
        )
    return 0


def show_job(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    engine = database(cfg)
    try:
        store = VideoStore(engine)
        row = store.get(args.job_id)
        if row is None:
            fail(f"no job {args.job_id}", 1)
        slot = _slot(cfg, store, row)
    finally:
        engine.dispose()
    obj = video_object(row, slot)
    if args.json:
        print(json.dumps(obj, indent=2))
        return 0
    cur = row["currency"] or ""
    print(f"job        {row['id']} ({row['status']}, {obj['progress']}%)")
    print(f"owner      {row['owner']} (key {row['key_id']})")
    print(f"model      {row['model']} on {row['deployment']}: {row['seconds']}s at {row['size']}")
    if slot is not None:
        position, wait_s, eta_s = slot
        if row["status"] == "queued":
            print(f"queue      position {position}, starts in about {max(wait_s, 0):.1f}s")
        print(f"eta        ready in about {max(eta_s, 0):.1f}s")
    print(f"held       {units(row['held_nanos'])} {cur} at submission")
    if row["status"] == "completed":
        print(f"cost       {units(row['cost_nanos'])} {cur}")
    for name in ("created_ms", "started_ms", "completed_ms"):
        if row.get(name):
            print(f"{name[:-3]:<10} {_when(row[name])}")
    if row["error"]:
        print(f"error      {row['error']}")
    return 0


def cancel_job(args: argparse.Namespace) -> int:
    engine = database(config_from(args))
    try:
        store = VideoStore(engine)
        row = store.get(args.job_id)
        if row is None:
            fail(f"no job {args.job_id}", 1)
        if not store.cancel(row["id"], None, int(time.time() * 1000)):
            fail(f"job {args.job_id} is {row['status']}: only a queued job can be cancelled", 1)
    finally:
        engine.dispose()
    print(f"{args.job_id}: cancelled")
    return 0
