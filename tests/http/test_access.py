"""Access control: API keys, client secrets, origins, CORS and the loopback rule.

Unit tests of server/http/access.py (no clock: `now_s` is passed in), then a real server with fake
models (tests/conftest.py:fake_app) driven over HTTP and the websocket.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from pydantic import SecretStr
from websockets.exceptions import InvalidStatus

from server import ClientSecret, InvalidMintRequest, Settings, VoiceAgent
from server.cli import main as cli_main
from server.http.access import (
    AccessConfigError,
    AccessControl,
    AccessDenied,
    ApiKeys,
    ClientSecretStore,
    GrantKind,
    OriginPolicy,
    bearer_token,
    bind_refusal,
    is_loopback_host,
    parse_key_file,
    parse_mint_request,
    read_key_file,
    subprotocol_token,
)
from server.http.app import build_access, create_app
from server.model.cascade import CascadeModel
from server.model.fakes import EnergyClassifierFactory, FakeAsr, FakeLlm, FakeTts
from tests.conftest import fake_app
from tests.harness import RealtimeTestClient, running_server

KEY = "vx-test-key-0123456789abcdef"
OTHER_KEY = "vx-other-key-fedcba9876543210"

# --- keys ------------------------------------------------------------------------------------


def test_keys_are_compared_in_constant_time_against_every_key(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)  # server.http.access calls hmac.compare_digest
    keys = ApiKeys([KEY, OTHER_KEY])
    assert keys.matches(KEY)
    assert len(calls) == 2  # no early exit at the first (matching) key
    calls.clear()
    assert not keys.matches(KEY[:-1])
    assert not keys.matches("")
    assert len(calls) == 4
    assert keys.matches(OTHER_KEY)


def test_key_file_parsing() -> None:
    text = "# production keys\n\n  key-one  \nkey-two # the load balancer\n#key-three\n"
    assert parse_key_file(text, "keys.txt") == ["key-one", "key-two"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "holds no API keys"),
        ("# only a comment\n\n", "holds no API keys"),
        ("key one\n", "line 1 contains whitespace"),
        ("good\nek_looks_like_a_secret\n", "line 2 starts with 'ek_'"),
        ("caf\u00e9\n", "printable ASCII"),
    ],
)
def test_bad_key_file_is_a_clear_error(text: str, message: str) -> None:
    with pytest.raises(AccessConfigError, match=message):
        parse_key_file(text, "keys.txt")


def test_unreadable_key_file_stops_startup(tmp_path: Path) -> None:
    missing = tmp_path / "nope.txt"
    with pytest.raises(AccessConfigError, match=r"cannot read the API key file .*nope\.txt"):
        read_key_file(missing)
    with pytest.raises(AccessConfigError, match="cannot read"):
        create_app(Settings(api_keys_file=missing))
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing yet\n")
    with pytest.raises(AccessConfigError, match="holds no API keys"):
        build_access(Settings(api_keys_file=empty))


async def test_keys_from_settings_and_file_together(tmp_path: Path) -> None:
    path = tmp_path / "keys.txt"
    path.write_text(f"{OTHER_KEY}\n")
    access = build_access(Settings(api_keys=[SecretStr(KEY)], api_keys_file=path))
    assert access.requires_key
    assert (await access.authenticate(KEY, now_s=0)).kind is GrantKind.API_KEY
    assert (await access.authenticate(OTHER_KEY, now_s=0)).kind is GrantKind.API_KEY


async def test_authenticate_with_and_without_keys() -> None:
    keyed = AccessControl(ApiKeys([KEY]), OriginPolicy([]))
    with pytest.raises(AccessDenied) as missing:
        await keyed.authenticate(None, now_s=0)
    assert (missing.value.code, missing.value.status) == ("missing_api_key", 401)
    with pytest.raises(AccessDenied) as wrong:
        await keyed.authenticate("sk-wrong", now_s=0)
    assert wrong.value.code == "invalid_api_key"
    assert (await keyed.authenticate(KEY, now_s=0)).kind is GrantKind.API_KEY
    # no keys: open, whatever placeholder key an OpenAI client sends; client secrets still checked
    open_ = AccessControl(ApiKeys([]), OriginPolicy([]))
    assert (await open_.authenticate(None, now_s=0)).kind is GrantKind.OPEN
    assert (await open_.authenticate("sk-placeholder", now_s=0)).kind is GrantKind.OPEN
    with pytest.raises(AccessDenied) as bogus:
        await open_.authenticate("ek_bogus", now_s=0)
    assert bogus.value.code == "invalid_client_secret"


def test_credentials_from_header_and_subprotocol() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer   abc ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer ") is None
    assert bearer_token(None) is None
    assert subprotocol_token(["realtime", "openai-insecure-api-key.ek_x"]) == "ek_x"
    assert subprotocol_token(["realtime", "openai-insecure-api-key."]) is None
    assert subprotocol_token(["realtime"]) is None


# --- client secrets ------------------------------------------------------------------------


async def test_client_secret_expires_at_its_time() -> None:
    store = ClientSecretStore()
    secret = await store.mint({"instructions": "be brief"}, ttl_s=10, now_s=1000.5)
    assert secret.value.startswith("ek_") and len(secret.value) > 40
    assert secret.expires_at_s == 1010
    assert (await store.verify(secret.value, now_s=1009.9)).session == {"instructions": "be brief"}
    assert (await store.verify(secret.value, now_s=1009.9)).session == {
        "instructions": "be brief"
    }  # multi-use
    with pytest.raises(AccessDenied) as expired:
        await store.verify(secret.value, now_s=1010)
    assert expired.value.code == "expired_client_secret"
    with pytest.raises(AccessDenied) as gone:
        await store.verify(secret.value, now_s=1011)
    assert gone.value.code == "invalid_client_secret"


async def test_client_secret_table_holds_no_secret_and_purges_expired() -> None:
    store = ClientSecretStore(max_live=2)
    first = await store.mint({}, ttl_s=10, now_s=0)
    await store.mint({}, ttl_s=100, now_s=0)
    assert first.value not in repr(store._entries)
    with pytest.raises(AccessDenied) as full:
        await store.mint({}, ttl_s=10, now_s=5)
    assert (full.value.code, full.value.status) == ("too_many_client_secrets", 429)
    await store.mint({}, ttl_s=10, now_s=10)  # the first expired: room again
    assert len(store) == 2
    assert await store.revoke(first.value) is False
    with pytest.raises(AccessDenied):
        await store.verify("ek_" + first.value[3:-1] + "x", now_s=11)


async def test_client_secret_cannot_mint_or_read_metrics() -> None:
    access = AccessControl(ApiKeys([KEY]), OriginPolicy([]))
    secret = await access.mint({"instructions": "x"}, now_s=0)
    assert (await access.authenticate(secret.value, now_s=1)).kind is GrantKind.CLIENT_SECRET
    with pytest.raises(AccessDenied) as denied:
        access.authorize_key(secret.value)
    assert (denied.value.code, denied.value.status) == ("client_secret_not_allowed", 403)
    assert access.authorize_key(KEY) is GrantKind.API_KEY


def test_mint_request_defaults_and_bounds() -> None:
    assert parse_mint_request({}, 600) == (600, {})
    body = {"expires_after": {"anchor": "created_at", "seconds": 7200}, "session": {"type": "realtime"}}
    assert parse_mint_request(body, 600) == (7200, {"type": "realtime"})
    assert parse_mint_request({"expires_after": {"seconds": 10}}, 600)[0] == 10


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ([], "invalid_request", None),
        ({"expires_after": {"seconds": 9}}, "invalid_value", "expires_after.seconds"),
        ({"expires_after": {"seconds": 7201}}, "invalid_value", "expires_after.seconds"),
        ({"expires_after": {"seconds": "600"}}, "invalid_value", "expires_after.seconds"),
        ({"expires_after": {"seconds": True}}, "invalid_value", "expires_after.seconds"),
        ({"expires_after": {"anchor": "now", "seconds": 60}}, "invalid_value", "expires_after.anchor"),
        ({"expires_after": 60}, "invalid_value", "expires_after"),
        ({"session": "realtime"}, "invalid_value", "session"),
        ({"session": {"type": "translation"}}, "invalid_value", "session.type"),
        ({"session": {"model": 5}}, "invalid_value", "session.model"),
        ({"session": {"instructions": 5}}, "invalid_value", "session.instructions"),
        (
            {
                "session": {
                    "type": "realtime",
                    "audio": {"input": {"format": {"type": "audio/pcm", "rate": 1}}},
                }
            },
            "invalid_value",
            "session.audio.input.format.rate",
        ),
        ({"ttl": 60}, "unknown_parameter", "ttl"),
    ],
)
def test_bad_mint_request_names_the_field(body: object, code: str, param: str | None) -> None:
    with pytest.raises(InvalidMintRequest) as bad:
        parse_mint_request(body, 600)
    assert (bad.value.code, bad.value.param) == (code, param)


# --- origins and the loopback rule ---------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "host", "allowed"),
    [
        (None, "127.0.0.1:8000", True),  # not a browser
        ("http://127.0.0.1:8000", "127.0.0.1:8000", True),
        ("http://localhost:8000", "localhost:8000", True),
        ("http://[::1]:8000", "[::1]:8000", True),
        ("http://localhost", "localhost", True),
        ("http://localhost", "localhost:80", True),
        ("http://127.0.0.1:3000", "127.0.0.1:8000", False),  # another local site
        ("https://evil.example", "127.0.0.1:8000", False),
        ("http://evil.example:8000", "evil.example:8000", False),  # DNS rebinding
        ("http://192.168.1.5:8000", "192.168.1.5:8000", False),  # same-origin but not loopback
        ("null", "127.0.0.1:8000", False),
        ("http://127.0.0.1:8000", None, False),
    ],
)
def test_default_origins_are_same_origin_loopback(
    origin: str | None, host: str | None, allowed: bool
) -> None:
    assert OriginPolicy([]).allows(origin, host) is allowed


def test_listed_origins_are_exact() -> None:
    policy = OriginPolicy(["https://app.example.com", "http://localhost:5173/"])
    assert policy.allows("https://app.example.com", "voice.example.com")
    assert policy.allows("https://app.example.com:443", "voice.example.com")
    assert policy.allows("http://localhost:5173", "127.0.0.1:8000")
    assert not policy.allows("http://app.example.com", "voice.example.com")
    assert not policy.allows("https://app.example.com.evil.example", "voice.example.com")
    assert not policy.allows("http://127.0.0.1:8000", "127.0.0.1:8000")  # the list replaces the default
    assert policy.allows(None, "voice.example.com")
    assert OriginPolicy(["*"]).allows("https://anything.example", "h")
    with pytest.raises(AccessConfigError, match="not an origin"):
        OriginPolicy(["app.example.com"])
    with pytest.raises(AccessConfigError, match="not an origin"):
        OriginPolicy(["https://app.example.com/path"])


def test_loopback_rule() -> None:
    for host in ("127.0.0.1", "127.1.2.3", "localhost", "::1", "[::1]"):
        assert is_loopback_host(host), host
        assert bind_refusal(host, requires_key=False, allow_unauthenticated=False) is None
    for host in ("0.0.0.0", "::", "192.168.1.5", "voice.example.com"):
        assert not is_loopback_host(host), host
        refusal = bind_refusal(host, requires_key=False, allow_unauthenticated=False)
        assert refusal is not None and "VOXGATE_API_KEYS" in refusal
        assert bind_refusal(host, requires_key=True, allow_unauthenticated=False) is None
        assert bind_refusal(host, requires_key=False, allow_unauthenticated=True) is None


def test_cli_refuses_a_public_bind_without_keys(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for name in (
        "VOXGATE_API_KEYS",
        "VOXGATE_API_KEYS_FILE",
        "VOXGATE_ALLOW_UNAUTHENTICATED",
        "VOXGATE_HOST",
    ):
        monkeypatch.delenv(name, raising=False)
    assert cli_main(["serve", "--host", "0.0.0.0"]) == 2
    assert "refusing to listen on 0.0.0.0 without API keys" in capsys.readouterr().err
    monkeypatch.setenv("VOXGATE_HOST", "::")
    assert cli_main(["serve"]) == 2
    assert "refusing to listen on ::" in capsys.readouterr().err
    monkeypatch.setenv("VOXGATE_API_KEYS_FILE", str(tmp_path / "missing.txt"))
    assert cli_main(["serve"]) == 2
    assert "cannot start: cannot read the API key file" in capsys.readouterr().err


# --- over the wire -------------------------------------------------------------------------


def ws_url(base_url: str, path: str = "/v1/realtime?model=test") -> str:
    return base_url.replace("http://", "ws://") + path


async def refusal(base_url: str, **connect: Any) -> tuple[int, dict[str, Any]]:
    """The HTTP status and JSON error of a refused websocket upgrade."""
    with pytest.raises(InvalidStatus) as refused:
        async with websockets.connect(ws_url(base_url), **connect):
            pass
    response = refused.value.response
    return response.status_code, json.loads(response.body or b"{}")


@contextlib.asynccontextmanager
async def session(base_url: str, **connect: Any) -> AsyncIterator[RealtimeTestClient]:
    async with websockets.connect(ws_url(base_url), max_size=None, **connect) as ws:
        client = RealtimeTestClient(ws)
        try:
            yield client
        finally:
            await client.aclose()


@pytest.fixture
async def keyed_server() -> AsyncIterator[str]:
    async with running_server(fake_app(api_keys=[KEY], allowed_origins=["https://app.example.com"])) as url:
        yield url


async def mint(base_url: str, body: object, key: str | None = KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient() as http:
        return await http.post(f"{base_url}/v1/realtime/client_secrets", json=body, headers=headers)


async def test_websocket_needs_a_valid_key(keyed_server: str) -> None:
    status, body = await refusal(keyed_server)
    assert status == 401
    assert body["error"]["code"] == "missing_api_key"
    assert "Authorization: Bearer" in body["error"]["message"]
    status, body = await refusal(keyed_server, additional_headers={"Authorization": f"Bearer {OTHER_KEY}"})
    assert (status, body["error"]["code"]) == (401, "invalid_api_key")
    async with session(keyed_server, additional_headers={"Authorization": f"Bearer {KEY}"}) as client:
        await client.wait_for("session.created")
    # the browser's way: the key as a subprotocol; the server still answers "realtime"
    async with session(keyed_server, subprotocols=["realtime", f"openai-insecure-api-key.{KEY}"]) as client:
        assert client.ws.subprotocol == "realtime"
        await client.wait_for("session.created")


async def test_client_secret_session_starts_with_the_bound_settings(keyed_server: str) -> None:
    bound = {
        "type": "realtime",
        "model": "voxgate-bound",
        "instructions": "You are the order desk.",
        "audio": {
            "input": {"format": {"type": "audio/pcmu"}, "turn_detection": {"silence_duration_ms": 700}},
            "output": {"voice": "en-gb"},
        },
    }
    before_s = time.time()
    minted = await mint(
        keyed_server, {"expires_after": {"anchor": "created_at", "seconds": 120}, "session": bound}
    )
    assert minted.status_code == 200, minted.text
    answer = minted.json()
    assert answer["value"].startswith("ek_")
    assert int(before_s) + 120 <= answer["expires_at"] <= time.time() + 121
    assert answer["session"]["instructions"] == "You are the order desk."
    assert answer["session"]["audio"]["output"]["voice"] == "en-gb"
    protocols = ["realtime", f"openai-insecure-api-key.{answer['value']}"]
    for _ in range(2):  # a secret opens sessions until it expires
        async with session(keyed_server, subprotocols=protocols) as client:
            created = (await client.wait_for("session.created"))["session"]
            assert created["instructions"] == "You are the order desk."
            assert created["model"] == "voxgate-bound"
            assert created["audio"]["output"]["voice"] == "en-gb"
            assert created["audio"]["input"]["format"] == {"type": "audio/pcmu"}
            assert created["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 700
            # the client may still change its session, as with OpenAI
            await client.send({"type": "session.update", "session": {"instructions": "Be brief."}})
            updated = await client.wait_for("session.updated")
            assert updated["session"]["instructions"] == "Be brief."
    # also as a bearer token, and the server's defaults apply without a secret
    headers = {"Authorization": f"Bearer {answer['value']}"}
    async with session(keyed_server, additional_headers=headers) as client:
        assert (await client.wait_for("session.created"))["session"][
            "instructions"
        ] == "You are the order desk."
    async with session(keyed_server, additional_headers={"Authorization": f"Bearer {KEY}"}) as client:
        assert (await client.wait_for("session.created"))["session"]["instructions"] == ""


async def test_expired_or_unknown_secret_is_refused() -> None:
    app = fake_app(api_keys=[KEY])
    async with running_server(app) as url:
        old = await app.state.access.mint({"instructions": "x"}, ttl_s=10, now_s=time.time() - 60)
        status, body = await refusal(url, subprotocols=["realtime", f"openai-insecure-api-key.{old.value}"])
        assert (status, body["error"]["code"]) == (401, "expired_client_secret")
        assert "mint a new one" in body["error"]["message"]
        status, body = await refusal(url, additional_headers={"Authorization": "Bearer ek_made_up"})
        assert (status, body["error"]["code"]) == (401, "invalid_client_secret")


async def test_minting_needs_a_real_key(keyed_server: str) -> None:
    missing = await mint(keyed_server, {}, key=None)
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "missing_api_key"
    assert missing.headers["www-authenticate"] == "Bearer"
    assert (await mint(keyed_server, {}, key=OTHER_KEY)).status_code == 401
    secret = (await mint(keyed_server, {})).json()["value"]
    again = await mint(keyed_server, {}, key=secret)
    assert again.status_code == 403
    assert again.json()["error"]["code"] == "client_secret_not_allowed"


@pytest.mark.parametrize(
    ("raw", "code", "param"),
    [
        (b"{not json", "invalid_json", None),
        (b"[1, 2]", "invalid_request", None),
        (
            b'{"expires_after": {"anchor": "created_at", "seconds": 5}}',
            "invalid_value",
            "expires_after.seconds",
        ),
        (b'{"expires_after": {"seconds": 86400}}', "invalid_value", "expires_after.seconds"),
        (b'{"session": {"type": "translation"}}', "invalid_value", "session.type"),
        (
            b'{"session": {"audio": {"input": {"turn_detection": {"threshold": 7}}}}}',
            "invalid_value",
            "session.audio.input.turn_detection.threshold",
        ),
        (b'{"sessions": {}}', "unknown_parameter", "sessions"),
    ],
)
async def test_bad_mint_bodies_get_a_json_400(
    keyed_server: str, raw: bytes, code: str, param: str | None
) -> None:
    async with httpx.AsyncClient() as http:
        response = await http.post(
            f"{keyed_server}/v1/realtime/client_secrets",
            content=raw,
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        )
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["code"], error["param"], error["type"]) == (code, param, "invalid_request_error")
    assert error["message"]


async def test_metrics_need_a_key_health_does_not(keyed_server: str) -> None:
    async with httpx.AsyncClient() as http:
        health = (await http.get(f"{keyed_server}/healthz")).json()
        assert health["status"] == "ok" and health["auth_required"] is True
        assert (await http.get(f"{keyed_server}/metrics")).status_code == 401
        secret = (await mint(keyed_server, {})).json()["value"]
        assert (
            await http.get(f"{keyed_server}/metrics", headers={"Authorization": f"Bearer {secret}"})
        ).status_code == 403
        metrics = await http.get(f"{keyed_server}/metrics", headers={"Authorization": f"Bearer {KEY}"})
        assert metrics.status_code == 200 and "voxgate_" in metrics.text
        assert (await http.get(f"{keyed_server}/debug/stats")).status_code == 401
        stats = await http.get(f"{keyed_server}/debug/stats", headers={"Authorization": f"Bearer {KEY}"})
        assert stats.status_code == 200 and stats.json()["sessions"] == 0


async def test_origin_allow_list_on_the_websocket(keyed_server: str) -> None:
    headers = {"Authorization": f"Bearer {KEY}"}
    status, body = await refusal(keyed_server, origin="https://evil.example", additional_headers=headers)
    assert (status, body["error"]["code"]) == (403, "origin_not_allowed")
    assert "VOXGATE_ALLOWED_ORIGINS" in body["error"]["message"]
    async with session(keyed_server, origin="https://app.example.com", additional_headers=headers) as client:
        await client.wait_for("session.created")


async def test_default_origins_allow_only_this_loopback_page(fake_server: str) -> None:
    status, body = await refusal(fake_server, origin="http://localhost:1")
    assert (status, body["error"]["code"]) == (403, "origin_not_allowed")
    async with session(fake_server, origin=fake_server) as client:
        await client.wait_for("session.created")
    async with session(fake_server) as client:  # no Origin: not a browser; no keys: open
        await client.wait_for("session.created")


async def test_cors_preflight_answers_only_allowed_origins(keyed_server: str) -> None:
    preflight = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type",
    }
    async with httpx.AsyncClient() as http:
        allowed = await http.options(
            f"{keyed_server}/v1/realtime/client_secrets",
            headers={"Origin": "https://app.example.com", **preflight},
        )
        refused = await http.options(
            f"{keyed_server}/v1/realtime/client_secrets",
            headers={"Origin": "https://evil.example", **preflight},
        )
        minted = await http.post(
            f"{keyed_server}/v1/realtime/client_secrets",
            json={},
            headers={"Origin": "https://app.example.com", "Authorization": f"Bearer {KEY}"},
        )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers
    assert minted.headers["access-control-allow-origin"] == "https://app.example.com"


async def test_twilio_keeps_its_own_check(keyed_server: str) -> None:
    # Twilio cannot send a bearer token: /v1/twilio is not behind the API keys
    async with websockets.connect(ws_url(keyed_server, "/v1/twilio")) as ws:
        await ws.close()


async def test_embedding_backend_mints_in_process() -> None:
    model = CascadeModel(FakeAsr(), FakeLlm(), FakeTts())
    agent = VoiceAgent(Settings(api_keys=[SecretStr(KEY)]), model=model, vad=EnergyClassifierFactory())
    secret = await agent.mint_client_secret(session={"instructions": "Caller 42."}, ttl_s=60)
    assert isinstance(secret, ClientSecret) and secret.value.startswith("ek_")
    with pytest.raises(InvalidMintRequest) as bad:
        await agent.mint_client_secret(ttl_s=5)
    assert bad.value.param == "ttl_s"
    with pytest.raises(InvalidMintRequest):
        await agent.mint_client_secret(session={"audio": {"output": {"voice": 3}}})
    async with running_server(agent.app()) as url:
        protocols = ["realtime", f"openai-insecure-api-key.{secret.value}"]
        async with session(url, subprotocols=protocols) as client:
            assert (await client.wait_for("session.created"))["session"]["instructions"] == "Caller 42."
