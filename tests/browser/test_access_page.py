"""The web client against a server that asks for a key (docs/security.md): a client secret in
the page's URL, a refusal explained instead of endless retries, a key pasted in Settings."""

from __future__ import annotations

import httpx
import pytest

from tests.browser.driver import ClientPage, chromium, skip_reason
from tests.conftest import fake_app
from tests.harness import running_server

_SKIP = skip_reason()
pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(_SKIP is not None, reason=_SKIP or ""),
]

KEY = "vx-browser-key-0123456789abcdef"


async def test_page_connects_with_a_client_secret_and_explains_refusals() -> None:
    async with running_server(fake_app(api_keys=[KEY])) as url, chromium() as browser:
        async with httpx.AsyncClient() as http:
            minted = await http.post(
                f"{url}/v1/realtime/client_secrets",
                json={"session": {"type": "realtime", "instructions": "You are the order desk."}},
                headers={"Authorization": f"Bearer {KEY}"},
            )
        secret = minted.json()["value"]

        context = await browser.new_context()
        page = ClientPage(await context.new_page())
        await page.page.goto(f"{url}/?client_secret={secret}")
        await page.wait_until("v.state.connection === 'ready'", 15, "the session to start with the secret")
        assert await page.hooks("v.session.instructions") == "You are the order desk."
        assert "client_secret" not in page.page.url  # taken out of the address bar
        await page.page.reload()  # kept for the tab
        await page.wait_until("v.state.connection === 'ready'", 15, "the session to start after a reload")
        assert page.page_errors == []
        await context.close()

        # no key: the page says what is needed and stops retrying
        context = await browser.new_context()
        page = ClientPage(await context.new_page())
        await page.page.goto(f"{url}/")
        await page.wait_until("v.state.connection === 'paused'", 15, "the refusal to be explained")
        assert "needs an access key" in await page.hooks("v.state.notice")
        # a key pasted in Settings reconnects
        await page.page.evaluate("document.getElementById('settings-details').open = true")
        await page.page.fill("#access-key", KEY)
        await page.page.click("#apply-btn")
        await page.wait_until("v.state.connection === 'ready'", 15, "the session to start with the key")
        await context.close()

        # a wrong secret: refused, said so
        context = await browser.new_context()
        page = ClientPage(await context.new_page())
        await page.page.goto(f"{url}/?client_secret=ek_not_a_real_secret")
        await page.wait_until("v.state.connection === 'paused'", 15, "the refusal to be explained")
        assert "refused" in await page.hooks("v.state.notice")
        assert page.page_errors == []
        await context.close()
