"""The video queue through the official ``openai`` SDK: create, retrieve, list, download,
delete; per-second billing held at submission and settled once; bad input refused."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.procs import Procs, running
from tests.servers import free_port
from tests.video_stack import ADMIN, TOPUP, VideoStack, video_stack, video_yaml, wait_status
from tokenomy.cli.main import main
from tokenomy.ledger.store import LedgerStore

#: The SDK marks its Videos API deprecated (Sora's shutdown); the API is what is tested.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

#: sim-video's price: 0.10 USD per second at 720x1280, 0.50 at 1024x1792.
CENTS_10 = 10**8


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    with running(tmp_path) as p:
        yield p


@pytest.mark.parametrize("backend", ["sqlite", "postgres+redis"])
def test_sdk_create_retrieve_list_download_delete_and_billing(
    procs: Procs, tmp_path: Path, backend: str
) -> None:
    with video_stack(procs, tmp_path, backend) as st:
        org_id, key = st.org("org")
        c = openai.OpenAI(base_url=st.gw.url + "/v1", api_key=key, max_retries=0)
        v = c.videos.create(model="sim-video", prompt="a red fox", seconds="4", size="720x1280")
        assert v.object == "video" and v.status in ("queued", "in_progress")
        assert v.seconds == "4" and v.size == "720x1280" and v.model == "sim-video"
        extra = v.model_extra or {}
        assert extra["cost"] == "0.4" and extra["currency"] == "USD"
        assert "eta_seconds" in extra
        done = wait_status(lambda: c.videos.retrieve(v.id), {"completed", "failed"})
        assert done.status == "completed" and done.progress == 100
        assert done.completed_at is not None and done.expires_at is not None
        content = c.videos.download_content(v.id)
        assert content.response.headers["content-type"] == "image/gif"
        assert content.content.startswith(b"GIF89a") and content.content.endswith(b"\x3b")

        # Billed once, at the catalogue's per-second price: 4 s x 0.10 USD.
        usage = st.usage(v.id)
        assert len(usage) == 1 and usage[0]["cost_nanos"] == 4 * CENTS_10
        assert usage[0]["endpoint"] == "videos" and usage[0]["price_version"].endswith("/second")
        ledger = LedgerStore(st.engine)
        assert ledger.balance(org_id) == TOPUP - 4 * CENTS_10
        assert all(v == 0 for v in ledger.trial_balance().values())
        assert st.held(org_id) == 0

        # A list, paged by the SDK's cursor, newest first.
        more = [
            c.videos.create(model="sim-video", prompt=f"clip {i}", seconds="1").id for i in range(3)
        ]
        page = c.videos.list(limit=2)
        assert len(page.data) == 2 and page.has_more
        listed = [x.id for x in c.videos.list(limit=2)]  # auto-paging through every page
        assert listed == [*reversed(more), v.id]
        asc = [x.id for x in c.videos.list(limit=10, order="asc")]
        assert asc == [v.id, *more]

        # Delete: the job and its content are gone; its usage record stays.
        gone = c.videos.delete(v.id)
        assert gone.deleted and gone.id == v.id
        with pytest.raises(openai.NotFoundError):
            c.videos.retrieve(v.id)
        assert len(st.usage(v.id)) == 1
        for vid in more:
            wait_status(lambda vid=vid: c.videos.retrieve(vid), {"completed"})
        assert ledger.balance(org_id) == TOPUP - 7 * CENTS_10
        assert st.held(org_id) == 0


def test_bad_input_gets_clear_400s_and_changes_nothing(procs: Procs, tmp_path: Path) -> None:
    with video_stack(procs, tmp_path) as st:
        org_id, key = st.org("org")
        c = openai.OpenAI(base_url=st.gw.url + "/v1", api_key=key, max_retries=0)
        bad: list[tuple[dict[str, str], str]] = [
            ({"seconds": "-4"}, "seconds"),
            ({"seconds": "0"}, "seconds"),
            ({"seconds": "100000"}, "seconds"),
            ({"seconds": "4.5"}, "seconds"),
            ({"seconds": "four"}, "seconds"),
            ({"size": "999x999"}, "size"),
            ({"model": "no-such-video-model"}, "model"),
            ({"prompt": ""}, "prompt"),
        ]
        for change, param in bad:
            args = {"model": "sim-video", "prompt": "p", "seconds": "4", **change}
            with pytest.raises(openai.BadRequestError) as e:
                c.videos.create(**args)  # type: ignore[arg-type]
            body = e.value.body
            assert isinstance(body, dict) and body["param"] == param, (change, body)
            assert body["message"] and body["type"] == "invalid_request_error"
        # JSON bodies too, with numbers.
        r = httpx.post(
            st.gw.url + "/v1/videos",
            json={"model": "sim-video", "prompt": "p", "seconds": -3},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert r.status_code == 400 and r.json()["error"]["param"] == "seconds"
        # Anything else odd: a 4xx in OpenAI's format, never a 500.
        auth = {"Authorization": f"Bearer {key}"}
        odd: list[dict[str, object]] = [
            {"content": b"not json", "headers": {"Content-Type": "application/json"}},
            {"content": b"[1, 2]", "headers": {"Content-Type": "application/json"}},
            {"json": {"model": None, "prompt": "p"}},
            {"json": {"model": "sim-video", "prompt": 5}},
            {"json": {"model": "sim-video", "prompt": "p", "seconds": True}},
            {"json": {"model": "sim-video", "prompt": "p", "seconds": [4]}},
            {"json": {"model": "sim-video", "prompt": "p", "seconds": 10**30}},
            {"json": {"model": "sim-video", "prompt": "p", "seconds": "1e3"}},
            {"json": {"model": "sim-video", "prompt": "p", "size": 720}},
            {"json": {"model": ["sim-video"], "prompt": "p"}},
            {"data": {"model": "sim-video"}},
            {"files": {"input_reference": ("a.png", b"x")}, "data": {"model": "sim-video"}},
        ]
        for kw in odd:
            r = httpx.post(st.gw.url + "/v1/videos", headers=auth | kw.pop("headers", {}), **kw)  # type: ignore[arg-type]
            assert 400 <= r.status_code < 500, (kw, r.text)
            assert r.json()["error"]["message"], kw
        for q in ("limit=0", "limit=x", "limit=1000", "order=up", "after=nope"):
            r = httpx.get(f"{st.gw.url}/v1/videos?{q}", headers=auth)
            assert r.status_code in (200, 400), (q, r.text)
            if r.status_code == 200:
                assert r.json()["data"] == []
        for path in ("/v1/videos/nope", "/v1/videos/nope/content"):
            r = httpx.get(st.gw.url + path, headers=auth)
            assert r.status_code == 404 and r.json()["error"]["code"] == "video_not_found"
        assert httpx.delete(st.gw.url + "/v1/videos/nope", headers=auth).status_code == 404
        assert httpx.get(st.gw.url + "/v1/videos").status_code == 401
        assert list(c.videos.list()) == []
        assert st.held(org_id) == 0
        assert LedgerStore(st.engine).balance(org_id) == TOPUP


def test_failed_job_and_deleted_queued_job_cost_nothing(procs: Procs, tmp_path: Path) -> None:
    slow = video_yaml(capacity=1)
    with video_stack(procs, tmp_path, video_ms_per_second=300.0, videos=slow) as st:
        org_id, key = st.org("org")
        c = openai.OpenAI(base_url=st.gw.url + "/v1", api_key=key, max_retries=0)
        failing = c.videos.create(model="sim-video", prompt="[fail] a storm", seconds="1")
        queued = c.videos.create(model="sim-video", prompt="never rendered", seconds="8")
        assert st.held(org_id) == 9 * CENTS_10  # held at submission, both
        assert c.videos.retrieve(queued.id).status == "queued"
        assert c.videos.delete(queued.id).deleted  # before it starts: cancelled, released
        end = wait_status(lambda: c.videos.retrieve(failing.id), {"completed", "failed"})
        assert end.status == "failed" and end.error is not None
        assert end.error.code == "moderation_blocked"
        with pytest.raises(openai.APIStatusError) as e:
            c.videos.download_content(failing.id)
        assert e.value.status_code == 409
        deadline = time.monotonic() + 5
        while st.held(org_id) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert st.held(org_id) == 0
        assert LedgerStore(st.engine).balance(org_id) == TOPUP
        assert st.usage(failing.id) == [] and st.usage(queued.id) == []


def _metric(st: VideoStack, name: str) -> float:
    r = httpx.get(st.gw.url + "/metrics", headers={"Authorization": f"Bearer {ADMIN}"})
    r.raise_for_status()
    for line in r.text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def test_full_queue_answers_429_with_retry_after_and_the_cli_sees_it(
    procs: Procs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = video_yaml(capacity=1, depth=2, ratio=2.0)
    with video_stack(procs, tmp_path, video_ms_per_second=2000.0, videos=cfg) as st:
        org_id, key = st.org("org")
        c = openai.OpenAI(base_url=st.gw.url + "/v1", api_key=key, max_retries=0)
        first = c.videos.create(model="sim-video", prompt="one", seconds="2")
        wait_status(lambda: c.videos.retrieve(first.id), {"in_progress"})
        waiting = [
            c.videos.create(model="sim-video", prompt=f"w{i}", seconds="2") for i in range(2)
        ]
        assert [(w.model_extra or {})["queue_position"] for w in waiting] == [1, 2]
        r = httpx.post(
            st.gw.url + "/v1/videos",
            json={"model": "sim-video", "prompt": "too many", "seconds": 2},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert r.status_code == 429, r.text
        assert r.json()["error"]["code"] == "queue_full"
        assert int(r.headers["Retry-After"]) >= 1
        q = httpx.get(st.gw.url + "/v1/queue", headers={"Authorization": f"Bearer {key}"})
        (sim,) = q.json()["models"]
        assert sim["model"] == "sim-video" and sim["depth"] == 2 and sim["running"] == 1
        assert sim["capacity"] == 1 and sim["oldest_age_seconds"] >= 0
        assert st.held(org_id) == 6 * CENTS_10  # the refused job holds nothing

        # Prometheus sees it (the gauges are read from the database about every second).
        deadline = time.monotonic() + 5
        while _metric(st, "tokenomy_video_jobs_queued") != 2:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert _metric(st, "tokenomy_video_jobs_running") == 1
        assert _metric(st, "tokenomy_video_oldest_queued_age_seconds") > 0
        assert _metric(st, "tokenomy_video_jobs_done_total") == 0

        # So does the dashboard's video queue panel.
        page = httpx.get(st.gw.url + "/dashboard", headers={"Authorization": f"Bearer {ADMIN}"})
        assert page.status_code == 200
        assert "Video queue: jobs waiting and wait percentiles" in page.text
        assert 'aria-label="Video jobs waiting"' in page.text

        # The CLI sees the same queue, and cancels a waiting job (the gateway releases it).
        cli = ["--config", str(st.config)]
        assert main(["jobs", "list", *cli]) == 0
        assert waiting[1].id in capsys.readouterr().out
        assert main(["jobs", "show", waiting[1].id, "--json", *cli]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["status"] == "queued" and shown["queue_position"] in (1, 2)
        assert shown["eta_seconds"] > 0
        assert main(["jobs", "cancel", waiting[1].id, *cli]) == 0
        with pytest.raises(SystemExit):
            main(["jobs", "cancel", first.id, *cli])  # rendering: not cancellable
        deadline = time.monotonic() + 5
        while st.held(org_id) != 4 * CENTS_10 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert st.held(org_id) == 4 * CENTS_10
        assert c.videos.retrieve(waiting[1].id).status == "failed"  # shown as OpenAI's


def test_unreachable_vendor_fails_the_job_after_its_tries_and_releases_the_hold(
    procs: Procs, tmp_path: Path
) -> None:
    cfg = video_yaml(lease_s=1.5)
    cfg += "    - {name: gone-video, vendor: gone, model: sim-video, price: sim/sim-video}\n"
    gone = f'{{dialect: openai, base_url: "http://127.0.0.1:{free_port()}/v1", auth: none}}'
    with video_stack(procs, tmp_path, videos=cfg, vendors={"gone": gone}) as st:
        org_id, key = st.org("org")
        c = openai.OpenAI(base_url=st.gw.url + "/v1", api_key=key, max_retries=0)
        v = c.videos.create(model="gone-video", prompt="into the void", seconds="3")
        assert st.held(org_id) == 3 * CENTS_10
        end = wait_status(lambda: c.videos.retrieve(v.id), {"completed", "failed"}, 30)
        assert end.status == "failed" and end.error is not None
        assert st.job(v.id)["attempts"] == 3  # videos.max_attempts, with pauses between
        deadline = time.monotonic() + 5
        while st.held(org_id) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert st.held(org_id) == 0 and st.usage(v.id) == []
        assert LedgerStore(st.engine).balance(org_id) == TOPUP
