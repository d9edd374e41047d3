"""Which greeting a session gets: the embedding backend's, the call's, the server's."""

from __future__ import annotations

import pytest

from server.http.runtime import Runtime
from server.http.session_setup import SessionSetup
from server.metrics import Metrics
from server.model.cascade import CascadeModel
from server.model.fakes import EnergyClassifierFactory, FakeAsr, FakeLlm, FakeTts
from server.settings import Settings
from server.streaming.session_config import MAX_GREETING_CHARS


def runtime(**settings: object) -> Runtime:
    model = CascadeModel(FakeAsr(), FakeLlm(), FakeTts())  # FAKE models: only the options matter here
    return Runtime(Settings.model_validate(settings), None, model, EnergyClassifierFactory(), Metrics())


@pytest.mark.parametrize(
    ("server", "call", "setup", "greeting"),
    [
        ("", None, None, None),  # no greeting anywhere: the assistant waits for the caller
        ("Hello from the server.", None, None, "Hello from the server."),
        ("Hello from the server.", "Hello from the call.", None, "Hello from the call."),
        (
            "Hello from the server.",
            "Hello from the call.",
            "Hello from the backend.",
            "Hello from the backend.",
        ),
        ("Hello from the server.", None, "", None),  # the backend turns it off for this session
        ("", "  ", None, None),  # blank is none
    ],
)
def test_the_backends_greeting_wins_then_the_calls_then_the_servers(
    server: str, call: str | None, setup: str | None, greeting: str | None
) -> None:
    options = runtime(greeting=server).conversation_options(
        setup=SessionSetup(greeting=setup), call_greeting=call
    )
    assert options.greeting == greeting


def test_a_greeting_longer_than_a_greeting_is_refused_where_it_is_given() -> None:
    with pytest.raises(ValueError, match="greeting"):
        SessionSetup(greeting="x" * (MAX_GREETING_CHARS + 1))
    with pytest.raises(ValueError, match="greeting"):
        Settings.model_validate({"greeting": "x" * (MAX_GREETING_CHARS + 1)})
