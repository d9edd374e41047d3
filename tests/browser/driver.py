"""Drive the web client (clients/web/) in Debian's headless Chromium with a fake microphone.

Order of use in a test:

    wav = speech_wav(tmp_path, "Where is my order?", lead_s=0.5, tail_s=1.0)
    async with running_server(voice_app()) as url, chromium(microphone_wav=wav) as browser:
        page = await open_client(browser, url)      # loaded, connected, session started
        await page.click_microphone()                # the WAV plays from its start
        await page.wait_until("v.counters.samplesPlayed > 0", 20, "reply audio played")

The page exposes `window.voxgate` (state, counters, transcript, truncatesSent, ...); `wait_until`
and `hooks` read it. The recipe (flags, fake audio file) is ../shared/BROWSER-TESTING.md.
Browsers run one at a time: two give no speed-up on two cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import re
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from server.errors import VoiceServerError
from server.http.app import build_catalog, create_app, preload
from server.settings import Settings
from tests.conftest import fake_app

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

CHROMIUM = shutil.which("chromium")
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
BASE_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--autoplay-policy=no-user-gesture-required",
]

# the real offline models; the rule responder stands in for the language model so the replies
# are known sentences of a few seconds (long enough to interrupt)
REAL_MODELS = {"asr": "pocketsphinx", "llm": "rules", "tts": "espeak", "vad": "webrtc"}


def skip_reason() -> str | None:
    """Why browser tests cannot run here, or None."""
    if CHROMIUM is None:
        return "Debian's chromium is not installed (scripts/system-deps.sh installs it, as root)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed in this environment"
    return None


def voice_app() -> tuple[FastAPI, str]:
    """The server with the real offline models if they load here, else with fakes.

    Returns (app, "real" | "fake").
    """
    settings = Settings(**REAL_MODELS)  # type: ignore[arg-type]
    try:
        catalog = build_catalog(settings)
        preload(settings, catalog)
    except (VoiceServerError, OSError, ImportError):
        return fake_app(), "fake"
    app = create_app(settings, catalog=catalog)
    served = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[Any]:
        # the app closes only a catalog it built: close this one with it, so its PocketSphinx
        # decoder processes end with the test instead of whenever the catalog is collected
        try:
            async with served(app) as state:
                yield state
        finally:
            await asyncio.to_thread(catalog.close)

    app.router.lifespan_context = lifespan
    return app, "real"


def speech_wav(directory: Path, text: str, *, lead_s: float, tail_s: float, name: str = "speech") -> Path:
    """A 16 kHz 16-bit mono WAV of `text` (flite, else espeak-ng) with exact silence around it."""
    raw = directory / f"{name}-raw.wav"
    if shutil.which("flite"):
        subprocess.run(["flite", "-voice", "slt", "-t", text, "-o", str(raw)], check=True)
    elif shutil.which("espeak-ng"):
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(raw), text], check=True)
    else:
        pytest.skip("needs flite or espeak-ng to make test speech")
    if not shutil.which("sox"):
        pytest.skip("needs sox to make test speech")
    out = directory / f"{name}.wav"
    subprocess.run(
        ["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(out)]
        + ["silence", "1", "0.01", "0.1%", "reverse", "silence", "1", "0.01", "0.1%", "reverse"]
        + ["pad", str(lead_s), str(tail_s)],
        check=True,
    )
    # a missing or 24-bit file gives the fake microphone pure silence, without any error
    assert out.stat().st_size > 16_000 * 2 * (lead_s + tail_s), "speech WAV came out too short"
    return out.resolve()


def chromium_args(*, microphone_wav: Path | None, fake_ui: bool, fake_device: bool) -> list[str]:
    """The recipe's flags; `fake_ui` grants microphone prompts, `fake_device` provides one."""
    args = list(BASE_ARGS)
    if fake_ui:
        args.append("--use-fake-ui-for-media-stream")
    if fake_device:
        args.append("--use-fake-device-for-media-stream")
    if microphone_wav is not None:
        # a path that does not exist gives the fake microphone silence, without any error
        assert microphone_wav.is_file(), microphone_wav
        args.append(f"--use-file-for-fake-audio-capture={microphone_wav}%noloop")
    return args


@contextlib.asynccontextmanager
async def chromium(
    *, microphone_wav: Path | None = None, fake_ui: bool = True, fake_device: bool = True
) -> AsyncIterator[Browser]:
    """A headless Chromium whose microphone plays `microphone_wav` once (or beeps without it)."""
    from playwright.async_api import async_playwright

    args = chromium_args(microphone_wav=microphone_wav, fake_ui=fake_ui, fake_device=fake_device)
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            yield browser
        finally:
            await browser.close()


class ClientPage:
    """The web client in one tab, read through its `window.voxgate` hooks."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.page_errors: list[str] = []
        page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))

    async def hooks(self, expression: str) -> Any:
        """Evaluate `expression` with `v` bound to window.voxgate."""
        return await self.page.evaluate(f"(() => {{ const v = window.voxgate; return {expression}; }})()")

    async def wait_until(self, predicate: str, timeout_s: float, what: str) -> Any:
        """Wait for a JS predicate over `v` (window.voxgate); fail with the page's state."""
        script = f"() => {{ const v = window.voxgate; return v !== undefined && ({predicate}); }}"
        try:
            await self.page.wait_for_function(script, timeout=timeout_s * 1000, polling=50)
        except Exception as exc:  # playwright's TimeoutError: report what the page showed
            raise AssertionError(
                f"timed out after {timeout_s} s waiting for {what}\n{await self.dump()}"
            ) from exc

    async def dump(self) -> str:
        try:
            state = await self.hooks(
                "({state: v.state, counters: v.counters, transcript: v.transcript, "
                "truncatesSent: v.truncatesSent, truncatedReceived: v.truncatedReceived, errors: v.errors, "
                "events: v.events.filter(e => !e.type.endsWith('.delta')).slice(-40)})"
            )
        except Exception as exc:  # the page may be gone
            return f"(page state unavailable: {exc})"
        return json.dumps(state, indent=1) + f"\npage errors: {self.page_errors}"

    async def click_microphone(self) -> None:
        await self.page.click("#mic-btn")

    async def screenshot(self, name: str, *, full_page: bool = True) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        await self.page.screenshot(path=str(path), full_page=full_page)
        return path


async def open_client(browser: Browser, url: str, *, viewport: tuple[int, int] = (1280, 860)) -> ClientPage:
    """A new tab on the page, waited on until its session has started."""
    context = await browser.new_context(viewport={"width": viewport[0], "height": viewport[1]})
    client = ClientPage(await context.new_page())
    await client.page.goto(url + "/")
    await client.wait_until("v.state.connection === 'ready'", 15, "the session to start")
    return client


async def metric(base_url: str, name: str) -> float:
    """A sample's value from the server's /metrics (0 when absent)."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(base_url + "/metrics")).text
    match = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def server_on_port(app: FastAPI, port: int) -> AsyncIterator[str]:
    """Like tests.harness.running_server, on a given port (so a test can restart the server)."""
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(), name=f"test-uvicorn-{port}")
    try:
        for _ in range(500):
            if server.started:
                break
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
