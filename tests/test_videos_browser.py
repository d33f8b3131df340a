"""The simulator's rendered video is media a browser shows: headless Chromium decodes the
GIF, finds every frame (WebCodecs' ImageDecoder), and the frames differ (it moves)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.test_dashboard_browser import ARGS, CHROMIUM, _need
from tokenomy.sim.media import FPS, HEIGHT, WIDTH, render_gif

_PROBE = """
async (src) => {
  const img = new Image();
  img.src = src;
  await img.decode();
  const out = {width: img.naturalWidth, height: img.naturalHeight, frames: null, differ: null};
  if (typeof ImageDecoder !== "undefined") {
    const data = await (await fetch(src)).arrayBuffer();
    const dec = new ImageDecoder({data, type: "image/gif"});
    await dec.tracks.ready;
    out.frames = dec.tracks.selectedTrack.frameCount;
    const pixels = async (i) => {
      const {image} = await dec.decode({frameIndex: i});
      const c = new OffscreenCanvas(image.displayWidth, image.displayHeight);
      c.getContext("2d").drawImage(image, 0, 0);
      return c.getContext("2d").getImageData(0, 0, c.width, c.height).data.join(",");
    };
    out.differ = (await pixels(0)) !== (await pixels(out.frames - 1));
  }
  return out;
}
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _need("playwright")
    if not os.path.exists(CHROMIUM):
        _need("chromium")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


def test_chromium_shows_the_simulated_video(browser: Any) -> None:
    gif = render_gif("a paper boat on a pond", 3)
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    html = '<html><head><link rel="icon" href="data:,"></head><body></body></html>'

    def serve(route: Any) -> None:  # an https origin: WebCodecs needs a secure context
        if route.request.url.endswith(".gif"):
            route.fulfill(body=gif, content_type="image/gif")
        else:
            route.fulfill(body=html, content_type="text/html")

    page.route("https://video.invalid/**", serve)
    page.goto("https://video.invalid/")
    got = page.evaluate(_PROBE, "https://video.invalid/v.gif")
    page.close()
    assert (got["width"], got["height"]) == (WIDTH, HEIGHT)
    assert got["frames"] == 3 * FPS and got["differ"]
    assert errors == []
