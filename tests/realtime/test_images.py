"""Images and text beside audio: `conversation.item.create` with `input_image` parts.

Parsing (server/realtime/images.py) and the whole path over a websocket with FAKE models: a
fake vision language model (FakeLlm(accepts_images=True)) gets the image in its history; a
model that cannot see refuses it with an `error` naming what would accept it, and the session
goes on."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from server.errors import ProtocolViolation
from server.model.fakes import FakeLlm
from server.realtime.images import MAX_IMAGE_BYTES, parse_input_image
from tests.conftest import fake_app
from tests.harness import realtime_client, running_server

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(17)  # a PNG's signature and header
JPEG = b"\xff\xd8\xff\xe0" + bytes(16)


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def image_item(*parts: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "conversation.item.create",
        "item": {"type": "message", "role": "user", "content": list(parts)},
    }


def test_png_and_jpeg_data_urls_are_taken_with_their_detail() -> None:
    png = parse_input_image(data_url(PNG), None, "item.content[0]")
    assert (png.mime_type, png.data, png.detail) == ("image/png", PNG, "auto")
    jpeg = parse_input_image(data_url(JPEG, "image/jpeg"), "low", "item.content[1]")
    assert (jpeg.mime_type, jpeg.detail) == ("image/jpeg", "low")
    assert jpeg.data_url == data_url(JPEG, "image/jpeg")


@pytest.mark.parametrize(
    ("image_url", "detail", "message", "param"),
    [
        (None, None, "needs image_url", "item.content[0].image_url"),
        ("https://example.com/cat.png", None, "does not fetch URLs", "item.content[0].image_url"),
        (data_url(b"GIF89a", "image/gif"), None, "use image/png or image/jpeg", "item.content[0].image_url"),
        ("data:image/png,abc", None, "base64-encoded", "item.content[0].image_url"),
        ("data:image/png;base64,@@@", None, "not valid base64", "item.content[0].image_url"),
        (data_url(JPEG), None, "not a image/png image", "item.content[0].image_url"),
        (data_url(PNG), "ultra", "detail must be one of", "item.content[0].detail"),
        (data_url(PNG + bytes(MAX_IMAGE_BYTES)), None, "is over 8 MiB", "item.content[0].image_url"),
    ],
)
def test_bad_images_are_refused_naming_the_part(
    image_url: str | None, detail: str | None, message: str, param: str
) -> None:
    with pytest.raises(ProtocolViolation, match=message) as refused:
        parse_input_image(image_url, detail, "item.content[0]")
    assert refused.value.param == param


async def test_a_vision_model_sees_the_image_and_the_text_in_its_history() -> None:
    vision = FakeLlm(["A red square."], accepts_images=True)
    async with running_server(fake_app(llm=vision)) as url, realtime_client(url) as client:
        await client.wait_for("session.created")
        await client.send(
            image_item(
                {"type": "input_text", "text": "What is on my screen?"},
                {"type": "input_image", "image_url": data_url(PNG), "detail": "high"},
            )
        )
        added = await client.wait_for("conversation.item.added")
        assert [p["type"] for p in added["item"]["content"]] == ["input_text", "input_image"]
        assert added["item"]["content"][1]["image_url"] == data_url(PNG)
        await client.send(image_item({"type": "input_image", "image_url": data_url(JPEG, "image/jpeg")}))
        await client.wait_for("conversation.item.added", after=client.index_of(added) + 1)
        await client.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        done = await client.wait_for("response.done")
    assert done["response"]["status"] == "completed"
    history = vision.calls[-1]
    assert history[0].text == "What is on my screen?"
    assert [(i.mime_type, i.data, i.detail) for i in history[0].images] == [("image/png", PNG, "high")]
    assert (history[1].text, history[1].images[0].mime_type) == ("", "image/jpeg")


async def test_a_model_that_cannot_see_refuses_the_image_and_the_session_goes_on() -> None:
    blind = FakeLlm(["Hello."])  # accepts_images False, like Gemma and the rule responder
    async with running_server(fake_app(llm=blind)) as url, realtime_client(url) as client:
        await client.wait_for("session.created")
        await client.send(image_item({"type": "input_image", "image_url": data_url(PNG)}))
        error = (await client.wait_for("error"))["error"]
        assert (error["code"], error["param"]) == ("images_not_supported", "item.content")
        assert "cannot see images" in error["message"] and "VOXGATE_LLM=openai" in error["message"]
        await client.send(image_item({"type": "input_text", "text": "Then just say hello."}))
        await client.wait_for("conversation.item.added")
        await client.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        assert (await client.wait_for("response.done"))["response"]["status"] == "completed"
    assert all(not m.images for m in blind.calls[-1])


async def test_a_bad_image_gets_an_error_and_nothing_is_added() -> None:
    vision = FakeLlm(accepts_images=True)
    async with running_server(fake_app(llm=vision)) as url, realtime_client(url) as client:
        await client.wait_for("session.created")
        await client.send(
            image_item(
                {"type": "input_text", "text": "look"},
                {"type": "input_image", "image_url": "https://x/y.png"},
            )
        )
        first = await client.wait_for("error")
        assert first["error"]["param"] == "item.content[1].image_url"
        too_many = [{"type": "input_image", "image_url": data_url(PNG)}] * 9
        await client.send(image_item(*too_many))
        second = await client.wait_for("error", after=client.index_of(first) + 1)
        assert "at most 8 images" in second["error"]["message"]
        assert client.of_type("conversation.item.added") == []
