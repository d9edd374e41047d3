"""The web client in headless Firefox (Debian's firefox-esr), when it is installed.

Playwright cannot drive stock Firefox, so the test injects a small driver script into the page
(firefox_driver.js) that clicks through one conversation and POSTs snapshots of window.voxgate
back to the test server. Firefox's fake microphone plays a steady tone, heard as speech by the
fake voice detector; `media.cubeb.force_mock_context` gives it a real-time audio clock without a
sound card. All of Firefox's own traffic is sent to a dead local proxy: only 127.0.0.1 is reached.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from server.http.app import WEB_CLIENT_DIR
from server.model.fakes import FakeAsr, FakeLlm
from tests.conftest import fake_app
from tests.harness import running_server

FIREFOX = shutil.which("firefox-esr") or shutil.which("firefox")
DRIVER = Path(__file__).with_name("firefox_driver.js")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(FIREFOX is None, reason="Debian's firefox-esr is not installed"),
]

PREFS = {
    "media.navigator.streams.fake": True,
    "media.navigator.permission.disabled": True,
    "media.autoplay.default": 0,
    "media.autoplay.blocking_policy": 0,
    "media.cubeb.force_mock_context": True,
    "network.proxy.type": 1,
    "network.proxy.http": "127.0.0.1",
    "network.proxy.http_port": 9,
    "network.proxy.ssl": "127.0.0.1",
    "network.proxy.ssl_port": 9,
    "network.proxy.no_proxies_on": "localhost, 127.0.0.1",
    "network.trr.mode": 5,
    "network.dns.disablePrefetch": True,
    "network.connectivity-service.enabled": False,
    "network.captive-portal-service.enabled": False,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "browser.safebrowsing.downloads.enabled": False,
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "datareporting.policy.dataSubmissionEnabled": False,
    "datareporting.healthreport.uploadEnabled": False,
    "toolkit.telemetry.enabled": False,
    "app.update.disabledForTesting": True,
    "extensions.update.enabled": False,
    "media.gmp-manager.updateEnabled": False,
}

LONG_REPLY = (
    "Your order left our warehouse this morning. It should arrive on Thursday. "
    "You will get a text message with the tracking link. Is there anything else?"
)


def make_profile(directory: Path) -> Path:
    profile = directory / "firefox-profile"
    profile.mkdir()
    prefs = "".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in PREFS.items())
    (profile / "user.js").write_text(prefs)
    return profile


def page_with_driver() -> tuple[str, str]:
    """The client's index.html with the driver script added, and the driver script."""
    html = (WEB_CLIENT_DIR / "index.html").read_text()
    script = '<script type="module" src="/test-driver.js"></script></body>'
    return html.replace("</body>", script), DRIVER.read_text()


async def test_conversation_and_barge_in_in_firefox(tmp_path: Path) -> None:
    reports: list[dict[str, Any]] = []
    done = asyncio.Event()

    html, script = page_with_driver()

    async def page(request: Request) -> Response:
        return HTMLResponse(html)

    async def driver(request: Request) -> Response:
        return Response(script, media_type="text/javascript")

    async def report(request: Request) -> Response:
        body = json.loads(await request.body())
        reports.append(body)
        if body.get("step") == "done":
            done.set()
        return JSONResponse({})

    # a long end-of-turn silence: on a loaded CI box the page's audio can stall for half a
    # second, which the server fills with silence (SILENCE_BY_ABSENCE_MS); with the default
    # 250 ms that ended the turn in the middle of the steady tone, and the reply then met the
    # tone as a barge-in before a sample of it played
    app = fake_app(
        FakeAsr(["where is my order", "stop please"]), FakeLlm([LONG_REPLY, "Okay."]), silence_duration_ms=800
    )
    # ahead of the page's static mount at /
    app.router.routes[0:0] = [
        Route("/test-client.html", page),
        Route("/test-driver.js", driver),
        Route("/test-report", report, methods=["POST"]),
    ]
    profile = make_profile(tmp_path)
    async with running_server(app) as url:
        assert FIREFOX is not None
        firefox = await asyncio.create_subprocess_exec(
            FIREFOX,
            "--headless",
            "--no-remote",
            "--profile",
            str(profile),
            url.replace("127.0.0.1", "localhost") + "/test-client.html",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,  # its content processes share its process group
        )
        try:
            await asyncio.wait_for(done.wait(), 60)
        except TimeoutError:
            pytest.fail(f"the page did not finish its conversation in 60 s:\n{json.dumps(reports)[-6000:]}")
        finally:
            os.killpg(firefox.pid, signal.SIGTERM)
            await asyncio.wait_for(firefox.wait(), 15)

    steps = {r["step"]: r for r in reports}
    trace = json.dumps(reports, indent=1)[-6000:]
    assert "pageerror" not in steps, trace
    for step in ("ready", "speaking", "playing", "cut", "done"):
        assert steps[step]["ok"], f"step {step} failed:\n{trace}"
    final = steps["done"]
    assert "Firefox/" in final["userAgent"]
    counters = final["counters"]
    assert counters["samplesSent"] > 24_000 and counters["samplesPlayed"] > 12_000
    truncate = final["truncatesSent"][0]
    assert truncate["reason"] == "barge-in" and 0 < truncate["audioEndMs"]
    cut = next(e for e in final["transcript"] if e["itemId"] == truncate["itemId"])
    assert cut["interrupted"] and cut["unheard"].strip()
    assert final["errors"] == []
