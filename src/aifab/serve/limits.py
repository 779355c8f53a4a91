"""What one request may hold, checked before any work is done on it.

==========================  ===========  ======  ===================================================
limit                       default      status  where it is checked
==========================  ===========  ======  ===================================================
``max_body_bytes``          16 MiB       413     raw body: Content-Length, then bytes as they stream
``max_instances``           256          413     after parsing, before decoding any instance
``max_text_chars``          100 000      422     each text instance
``max_image_pixels``        40 000 000   422     each image's header (Pillow), before decoding it
==========================  ===========  ======  ===================================================

Every refusal names the limit and its value, so a client knows what to change.

>>> limits = ServeLimits(max_text_chars=5)
>>> decode_instances(["hello"], kind="text", limits=limits)
['hello']
>>> decode_instances([{"text": "hello!"}], kind="text", limits=limits)
Traceback (most recent call last):
...
aifab.core.errors.InputError: instances[0].text: 6 characters, more than max_text_chars=5
"""

from __future__ import annotations

import base64
import binascii
import io
import ipaddress
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from pydantic import Field

from aifab.core.config import StrictModel
from aifab.core.errors import AifabError, ConfigError, InputError, LimitExceeded

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ServeLimits(StrictModel):
    """Per-request limits of the server (see the module docstring).

    >>> ServeLimits().max_body_bytes
    16777216
    """

    max_body_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    max_instances: int = Field(default=256, gt=0)
    max_text_chars: int = Field(default=100_000, gt=0)
    max_image_pixels: int = Field(default=40_000_000, gt=0)


def check_no_auth_host(host: str) -> None:
    """Refuse to serve without authentication on anything but a loopback address.

    >>> check_no_auth_host("127.0.0.1"); check_no_auth_host("localhost"); check_no_auth_host("::1")
    >>> check_no_auth_host("0.0.0.0")
    Traceback (most recent call last):
    ...
    aifab.core.errors.ConfigError: --no-auth: host '0.0.0.0' is not a loopback address; serve without auth only on 127.0.0.1, ::1 or localhost
    """
    name = host.strip().strip("[]")
    if name.lower() == "localhost":
        return
    try:
        if ipaddress.ip_address(name).is_loopback:
            return
    except ValueError:
        pass
    raise ConfigError(
        f"--no-auth: host {host!r} is not a loopback address; "
        "serve without auth only on 127.0.0.1, ::1 or localhost"
    )


def decode_instances(instances: list[Any], *, kind: str, limits: ServeLimits) -> list[str | bytes]:
    """The inputs a model of ``kind`` ("text" or "image") takes, from a request's instances.

    Text: a string or ``{"text": str}``. Image: ``{"b64": str}`` (decoded here) or raw bytes
    (an uploaded file). Images are checked by their header first (``max_image_pixels``) and then
    decoded once, so a corrupt image is refused here and never fails a batch it would share.

    >>> decode_instances([{"b64": "!!"}], kind="image", limits=ServeLimits())
    Traceback (most recent call last):
    ...
    aifab.core.errors.InputError: instances[0].b64: not valid base64 (Only base64 data is allowed)
    """
    if len(instances) > limits.max_instances:
        raise LimitExceeded(
            f"instances: {len(instances)} in one request, more than max_instances={limits.max_instances}",
            details={"limit": "max_instances", "value": limits.max_instances},
        )
    if not instances:
        raise InputError("instances: empty; send at least one instance")
    return [_decode_one(i, value, kind, limits) for i, value in enumerate(instances)]


def _decode_one(i: int, value: Any, kind: str, limits: ServeLimits) -> str | bytes:
    where = f"instances[{i}]"
    if isinstance(value, dict) and "text" in value:
        value, where = value["text"], f"{where}.text"
    if isinstance(value, str):
        if kind != "text":
            raise InputError(
                f'{where}: this model takes images; send {{"b64": "<base64 image>"}} or a file upload'
            )
        if len(value) > limits.max_text_chars:
            raise InputError(
                f"{where}: {len(value)} characters, more than max_text_chars={limits.max_text_chars}",
                details={"limit": "max_text_chars", "value": limits.max_text_chars},
            )
        return value
    if isinstance(value, dict) and "b64" in value:
        where = f"{where}.b64"
        if kind != "image":
            raise InputError(f'{where}: this model takes text; send a string or {{"text": "..."}}')
        try:
            value = base64.b64decode(value["b64"], validate=True)
        except (binascii.Error, ValueError, TypeError) as exc:
            raise InputError(f"{where}: not valid base64 ({exc})") from None
    if isinstance(value, (bytes, bytearray)):
        if kind != "image":
            return _utf8(bytes(value), where)
        return _check_image(bytes(value), where, limits)
    raise InputError(
        f'{where}: expected a string, {{"text": ...}} or {{"b64": ...}}; got {_describe(value)}'
    )


def _check_image(data: bytes, where: str, limits: ServeLimits) -> bytes:
    from PIL import Image, UnidentifiedImageError

    from aifab.data.images import ALLOWED_FORMATS

    Image.init()  # registers every plugin: `formats=` names plugins Pillow loads lazily
    try:
        # Only the raster formats the data gate accepts (Pillow would also open EPS, which
        # runs Ghostscript). Reads the header only.
        with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as image:
            width, height = image.size
            if width * height > limits.max_image_pixels:
                raise InputError(
                    f"{where}: image of {width}x{height} = {width * height} pixels, more than "
                    f"max_image_pixels={limits.max_image_pixels}",
                    details={"limit": "max_image_pixels", "value": limits.max_image_pixels},
                )
            image.load()  # a truncated or corrupt image fails here, not inside a shared batch
    except InputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own bomb check runs in open(), before our limit can look at the size.
        raise InputError(
            f"{where}: refused before decoding ({exc}); the limit is max_image_pixels={limits.max_image_pixels}",
            details={"limit": "max_image_pixels", "value": limits.max_image_pixels},
        ) from None
    except UnidentifiedImageError:
        raise InputError(
            f"{where}: not an image Pillow can read (allowed formats: {', '.join(ALLOWED_FORMATS)})"
        ) from None
    except Exception as exc:  # noqa: BLE001 - hostile bytes make Pillow raise almost anything
        raise InputError(f"{where}: corrupt image ({type(exc).__name__}: {exc})") from None
    return data


def _utf8(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(
            f"{where}: an uploaded text file must be UTF-8 ({exc.reason} at byte {exc.start})"
        ) from None


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return f"an object with keys {sorted(value)[:5]}"
    return type(value).__name__


class BodyLimitMiddleware:
    """Answer 413 to a request body over ``max_bytes``, before the app parses any of it.

    A declared ``Content-Length`` over the limit is refused before reading; a chunked or
    lying body is counted as it streams and refused once it passes the limit (the app's
    own answer, if any, is then dropped). ``on_error`` sees each refusal the app did not
    handle itself (for metrics).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        on_error: Callable[[AifabError], None] | None = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.on_error = on_error

    def _error(self) -> LimitExceeded:
        return LimitExceeded(
            f"request body: more than max_body_bytes={self.max_bytes} bytes",
            details={"limit": "max_body_bytes", "value": self.max_bytes},
        )

    async def _refuse(self, send: Send, *, count: bool = True) -> None:
        error = self._error()
        if count and self.on_error is not None:
            self.on_error(error)
        body = json.dumps(error.to_dict()).encode("utf-8")
        await send(
            {
                "type": "http.response.start",
                "status": error.http_status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", ()):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0  # the server refuses a malformed Content-Length itself
                if declared > self.max_bytes:
                    await self._refuse(send)
                    return
        received = 0
        exceeded = False
        started = False

        async def counted_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise self._error()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                return  # the refusal below answers instead
            started = started or message["type"] == "http.response.start"
            await send(message)

        handled = True
        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not exceeded:
                raise
            handled = False
        if exceeded and not started:
            # When the app caught the error, its handler counted it already.
            await self._refuse(send, count=not handled)
