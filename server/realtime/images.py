"""`input_image` content parts of `conversation.item.create` (OpenAI Realtime GA):

    {"type": "input_image", "image_url": "data:image/png;base64,....", "detail": "auto"}

Only base64 data URLs of PNG or JPEG images are taken (as at OpenAI): the server never fetches
a URL for a client. The bytes must be what the MIME type says (their signature is checked),
at most MAX_IMAGE_BYTES each, MAX_IMAGES_PER_ITEM per item. Each violation is a
ProtocolViolation naming the part (`item.content[i].image_url`), so the client gets an
`error` event and the session goes on.
"""

from __future__ import annotations

import base64
import binascii
from typing import Final, Literal, cast

from server.errors import ProtocolViolation
from server.model.base import ImageInput

MAX_IMAGE_BYTES: Final = 8 * 1024 * 1024
MAX_IMAGES_PER_ITEM: Final = 8
DETAILS: Final = ("auto", "low", "high")
_SIGNATURES: Final = {"image/png": b"\x89PNG\r\n\x1a\n", "image/jpeg": b"\xff\xd8\xff"}


def parse_input_image(image_url: str | None, detail: str | None, param: str) -> ImageInput:
    """The image of one `input_image` part; `param` names the part in errors."""
    if not isinstance(image_url, str) or not image_url:
        raise ProtocolViolation(
            "input_image needs image_url: a data URL like data:image/png;base64,...",
            code="missing_field",
            param=f"{param}.image_url",
        )
    header, comma, payload = image_url.partition(",")
    if not header.startswith("data:"):
        raise ProtocolViolation(
            "image_url must be a base64 data URL (data:image/png;base64,...); the server does not fetch URLs",
            code="invalid_value",
            param=f"{param}.image_url",
        )
    mime_type, _, encoding = header.removeprefix("data:").partition(";")
    mime_type = mime_type.strip().lower()
    if mime_type not in _SIGNATURES:
        raise ProtocolViolation(
            f"image type {mime_type or '(none)'!r} is not supported; use image/png or image/jpeg",
            code="invalid_value",
            param=f"{param}.image_url",
        )
    if encoding.strip().lower() != "base64" or not comma:
        raise ProtocolViolation(
            "image_url must be base64-encoded (data:image/png;base64,...)",
            code="invalid_value",
            param=f"{param}.image_url",
        )
    if len(payload) > (MAX_IMAGE_BYTES * 4) // 3 + 4:
        raise ProtocolViolation(
            f"the image is over {MAX_IMAGE_BYTES // (1024 * 1024)} MiB",
            code="invalid_value",
            param=f"{param}.image_url",
        )
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ProtocolViolation(
            f"image_url's data is not valid base64: {exc}", code="invalid_value", param=f"{param}.image_url"
        ) from exc
    if not data.startswith(_SIGNATURES[mime_type]):
        raise ProtocolViolation(
            f"image_url's data is not a {mime_type} image", code="invalid_value", param=f"{param}.image_url"
        )
    chosen = "auto" if detail is None else detail
    if chosen not in DETAILS:
        raise ProtocolViolation(
            f"detail must be one of {', '.join(DETAILS)}", code="invalid_value", param=f"{param}.detail"
        )
    return ImageInput(mime_type, data, cast(Literal["auto", "low", "high"], chosen))
