from __future__ import annotations

import pytest

from server.errors import BackendUnavailable
from server.model import registry
from server.model.profiles import ModelCatalog, Profile, profile_for_model


@pytest.fixture
def fake_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.ASR_BACKENDS, "fake-asr", "server.model.fakes:load_fake_asr")
    monkeypatch.setitem(registry.LLM_BACKENDS, "fake-llm", "server.model.fakes:load_fake_llm")
    monkeypatch.setitem(registry.TTS_BACKENDS, "fake-tts", "server.model.fakes:load_fake_tts")
    monkeypatch.setitem(registry.TTS_BACKENDS, "fake-tts-2", "server.model.fakes:load_fake_tts")


def test_model_names_select_profiles() -> None:
    assert profile_for_model("voxgate-quality", "fast") == "quality"
    assert profile_for_model("quality", "fast") == "quality"
    assert profile_for_model("gpt-4o-realtime-preview", "fast") == "fast"
    assert profile_for_model(None, "quality") == "quality"


def test_backends_are_loaded_once_and_shared_between_profiles(fake_backends: None) -> None:
    catalog = ModelCatalog(
        {
            "a": Profile("a", "fake-asr", "fake-llm", "fake-tts"),
            "b": Profile("b", "fake-asr", "fake-llm", "fake-tts-2"),
        },
        default_profile="a",
    )
    a, b = catalog.model("a"), catalog.model("b")
    assert catalog.model("a") is a
    assert a.asr is b.asr and a.llm is b.llm  # type: ignore[attr-defined]
    assert a.tts is not b.tts  # type: ignore[attr-defined]


def test_unknown_backend_is_a_clear_error(fake_backends: None) -> None:
    catalog = ModelCatalog({"a": Profile("a", "nope", "fake-llm", "fake-tts")}, default_profile="a")
    with pytest.raises(BackendUnavailable, match="unknown speech-to-text backend 'nope'"):
        catalog.model("a")


def test_an_omni_profile_is_served_by_its_omni_backend_alone() -> None:
    from server.model.backends.realtime_upstream import RealtimeUpstreamModel
    from server.model.profiles import OmniProfile

    catalog = ModelCatalog(
        {
            "a": Profile("a", "fake-asr", "fake-llm", "fake-tts"),
            "realtime": OmniProfile("realtime", "realtime"),
        },
        default_profile="a",
        backend_options={"realtime": {"url": "ws://127.0.0.1:9/v1/realtime"}},
    )
    model = catalog.model("realtime")
    assert isinstance(model, RealtimeUpstreamModel)
    assert not model.capabilities.can_rollback
    assert catalog.model("realtime") is model
    assert profile_for_model("voxgate-realtime", "fast") == "realtime"
