"""The status page at / in a real browser: headless Chromium (Debian's ``chromium``
package, never a browser download) driven by Playwright, against a real server.
Skipped, saying why, where Playwright or Chromium is missing (.ci/run installs both)."""

from __future__ import annotations

import os
import shutil
from typing import Any

import pytest

from engine import auth
from engine.app import Server

from .conftest import Board

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

NORTH, SOUTH = "ESP_00A1B2", "ESP_00C3D4"


def _chromium() -> str | None:
    for candidate in (os.environ.get("KAISER_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


@pytest.fixture
async def page() -> Any:
    try:
        from playwright.async_api import async_playwright
    except ImportError:
        pytest.skip("status page browser test: Playwright is not installed (pip install -e '.[dev]')")
    exe = _chromium()
    if exe is None:
        pytest.skip("status page browser test: no Chromium (apt-get install chromium; .ci/run does)")
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=exe, headless=True,
                                          args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        try:
            ctx = await browser.new_context()
            pg = await ctx.new_page()
            errors: list[str] = []
            pg.on("pageerror", lambda e: errors.append(str(e)))
            pg.errors = errors  # type: ignore[attr-defined]
            yield pg
        finally:
            await browser.close()


async def test_status_page_shows_the_greenhouse_live_and_stops_it(server: Server, board: Board, page: Any) -> None:
    assert server.hub is not None
    token = auth.read_token(auth.token_path(server.settings.store.path, server.hub.port))
    await board.heartbeat(SOUTH)
    await board.reading(NORTH, 4, "ds18b20", 22 * 16)
    await page.goto(f"http://127.0.0.1:{server.hub.port}/")
    # boards, with the one that spoke online
    south = page.locator('tr[data-device="south"]')
    await south.locator(".dot.on").wait_for(timeout=10_000)
    assert await page.locator('tr[data-device="north"] .dot').count() == 1
    # sensors: the stored value, then a live one over the WebSocket, with a sparkline
    value = page.locator('tr[data-sensor="north.air_temp"] .value')
    await page.wait_for_function("document.querySelector('tr[data-sensor=\"north.air_temp\"] .value')"
                                 "?.textContent.startsWith('22')", timeout=10_000)
    await page.locator("#live").filter(has_text="live").wait_for(timeout=10_000)
    await board.reading(NORTH, 4, "ds18b20", 30 * 16)  # hot: the fan rule fires
    await page.wait_for_function("document.querySelector('tr[data-sensor=\"north.air_temp\"] .value')"
                                 "?.textContent.startsWith('30')", timeout=10_000)
    assert "°C" in await value.text_content()
    await page.locator('tr[data-sensor="north.air_temp"] svg.spark polyline').wait_for(timeout=10_000)
    # the command shows in the live events and the actuator table names its holder
    await page.locator("#events li.sent").filter(has_text="south.fan").first.wait_for(timeout=10_000)
    await page.locator('tr[data-actuator="south.fan"]').filter(has_text="cool-south-when-north-hot") \
        .wait_for(timeout=10_000)
    # the emergency stop button asks for the key; a wrong one is refused
    answers = iter(["wrong-key-0123456789", token])

    async def answer(dialog: Any) -> None:
        await dialog.accept(next(answers))

    page.on("dialog", answer)
    await page.click("#estop")
    await page.locator("#notice.error").filter(has_text="refused").wait_for(timeout=10_000)
    assert not server.kaiser.guard.latches()
    await page.click("#estop")
    await page.locator("#banner.on").filter(has_text="EMERGENCY STOP active").wait_for(timeout=10_000)
    latches = server.kaiser.guard.latches()
    assert [x.target for x in latches] == ["all"] and latches[0].who == "local (status page)"
    await board.expect(lambda t, p: t == "kaiser/broadcast/emergency")
    await page.locator('tr[data-actuator="south.fan"] .tag.stop').wait_for(timeout=10_000)
    assert page.errors == []  # type: ignore[attr-defined]
