"""X-Twilio-Signature, checked against the vectors of Twilio's own validator tests."""

from __future__ import annotations

from server.telephony.twilio_signature import compute_signature, is_valid_signature, stream_url, url_variants

TOKEN = "12345"
URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
    "Caller": "+14158675309",
}


def test_signature_matches_twilios_reference_vectors() -> None:
    assert compute_signature(TOKEN, URL, PARAMS) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    # the same URL with its default port, as some proxies present it
    assert compute_signature(TOKEN, URL.replace(".com", ".com:443"), PARAMS) == "kvajT1Ptam85bY51eRf/AJRuM3w="


def test_port_variants() -> None:
    assert url_variants("wss://example.com/v1/twilio") == [
        "wss://example.com/v1/twilio",
        "wss://example.com:443/v1/twilio",
    ]
    assert url_variants("wss://example.com:8443/v1/twilio?a=1") == [
        "wss://example.com:8443/v1/twilio?a=1",
        "wss://example.com/v1/twilio?a=1",
    ]


def test_websocket_signature_is_over_the_url_alone() -> None:
    url = "wss://voice.example.com/v1/twilio"
    good = compute_signature("secret", url)
    assert is_valid_signature("secret", url, good)
    assert is_valid_signature("secret", "wss://voice.example.com:443/v1/twilio", good)
    assert not is_valid_signature("secret", "wss://voice.example.com/v1/other", good)
    assert not is_valid_signature("other-token", url, good)
    assert not is_valid_signature("secret", url, None)
    assert not is_valid_signature("secret", url, "")
    assert not is_valid_signature("secret", url, good[:-2])


def test_stream_url_from_the_request_or_the_configured_public_url() -> None:
    assert stream_url("127.0.0.1:8000", b"/v1/twilio", b"") == "wss://127.0.0.1:8000/v1/twilio"
    assert stream_url("h", b"/v1/twilio", b"a=1&b=%20") == "wss://h/v1/twilio?a=1&b=%20"
    public = "wss://voice.example.com/phone/v1/twilio"
    assert stream_url("10.0.0.5:8000", b"/v1/twilio", b"", public) == public
    assert stream_url("10.0.0.5:8000", b"/v1/twilio", b"x=1", public) == public + "?x=1"
    assert stream_url("h", b"/v1/twilio", b"x=1", "wss://v.example.com/t?y=2") == "wss://v.example.com/t?y=2"
