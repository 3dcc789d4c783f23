"""The web demo: a Starlette (ASGI) app around loaded models.

Routes: ``GET /`` (the page, ``static/index.html``: no build step), ``GET /models`` (JSON: each
model's method, directions and inputs) and ``POST /translate`` (multipart form, or a JSON body
with base64 images; the answer is a PNG, or JSON with a base64 PNG when the request is JSON or
asks for it with ``Accept: application/json``). Errors are JSON ``{"error": "..."}`` with 400
(a field or image the server cannot use), 404 (unknown model), 413 (upload too large) or 503
(too many requests waiting).

Safe to leave running: each model is loaded once and has one worker thread that decodes,
translates and encodes, so requests queue on the one instance and at most one image per model is
in memory at a time; bodies are counted as they arrive (413 past ``max_upload_bytes``, whatever
the Content-Length says); images are decoded only after their header's size is checked against
``max_pixels`` (a decompression bomb costs a 400, not the memory); uploads stay in memory or in
the temporary files of the multipart parser, which are deleted when the request ends.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gan_style.errors import UserError

logger = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
DEFAULT_MAX_UPLOAD_MB = 25
DEFAULT_MAX_PIXELS = 40_000_000
#: photos with a longer side than this are translated in tiles of DEFAULT_TILE pixels
DEFAULT_TILE_ABOVE = 1536
DEFAULT_TILE = 512
DEFAULT_MAX_QUEUE = 16


class RequestError(Exception):
    """A request the server refuses: its HTTP status and a message naming the problem."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Limits:
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB * 1024 * 1024
    max_pixels: int = DEFAULT_MAX_PIXELS
    tile_above: int = DEFAULT_TILE_ABOVE
    tile: int = DEFAULT_TILE
    max_queue: int = DEFAULT_MAX_QUEUE


@dataclass
class ServedModel:
    """One loaded model and its single worker: the queue that requests wait in."""

    name: str
    model: Any  # gan_style.api.Model
    checkpoint: str
    worker: ThreadPoolExecutor = field(default_factory=lambda: ThreadPoolExecutor(max_workers=1))
    waiting: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def describe(self) -> dict[str, Any]:
        model = self.model
        return {
            "name": self.name, "method": model.method, "description": model.description, "checkpoint": self.checkpoint,
            "directions": list(model.directions),
            "inputs": {direction: [{"name": s.name, "kind": s.kind, "help": s.help, "required": s.required}
                                   for s in model.translator(direction).inputs] for direction in model.directions},
        }


def unique_names(checkpoints: Sequence[str | Path]) -> list[str]:
    """A short name per checkpoint: its folder or file stem (``latest.pt`` -> the run's folder),
    numbered when two are alike."""
    names: list[str] = []
    for checkpoint in checkpoints:
        path = Path(checkpoint)
        if path.is_file() and path.parent.name == "checkpoints":
            path = path.parent.parent
        base = path.stem if path.is_file() else path.name
        name, n = base or "model", 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.append(name)
    return names


def decode_image(data: bytes, field_name: str, max_pixels: int) -> Any:
    """Upload bytes -> an upright 8-bit RGB PIL image; its header's size is checked before any
    pixel is decoded."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    from gan_style.data.images import to_rgb

    if not data:
        raise RequestError(400, f"{field_name}: the upload is empty")
    try:
        with Image.open(io.BytesIO(data)) as opened:
            width, height = opened.size
            if width * height > max_pixels:
                raise RequestError(400, f"{field_name}: {width} x {height} pixels is more than this server decodes ({max_pixels:,} pixels)")
            opened.load()
            return to_rgb(ImageOps.exif_transpose(opened))
    except RequestError:
        raise
    except Image.DecompressionBombError:
        raise RequestError(400, f"{field_name}: the image is larger than this server decodes ({max_pixels:,} pixels)") from None
    except UnidentifiedImageError:
        raise RequestError(400, f"{field_name}: not an image (PNG, JPEG, WebP, BMP, TIFF ...)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise RequestError(400, f"{field_name}: a truncated or damaged image ({error})") from None


def _encode_png(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def translate_image(model: Any, image: Any, direction: str, inputs: Mapping[str, Any], limits: Limits) -> Any:
    """The one place that translates for the server: whole, or in tiles for large photos."""
    if max(image.size) > limits.tile_above:
        return model.translate(image, direction=direction, tile=limits.tile, **inputs)
    return model.translate(image, direction=direction, **inputs)


def _parse_value(name: str, kind: str, value: Any) -> Any:
    try:
        number = float(value) if kind == "float" else int(value)
    except (TypeError, ValueError):
        raise RequestError(400, f"{name}: expected {'a number' if kind == 'float' else 'an integer'}, got {str(value)[:40]!r}") from None
    if kind == "float" and name == "alpha" and not 0.0 <= number <= 1.0:
        raise RequestError(400, f"alpha must be in [0, 1], got {number}")
    return number


def _base64_bytes(name: str, value: Any) -> bytes:
    if not isinstance(value, str):
        raise RequestError(400, f"{name}: expected a base64 string (or a data: URL) of the image")
    try:
        return base64.b64decode(value.partition(",")[2] if value.startswith("data:") else value, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, f"{name}: not valid base64") from None


class _BodyTooLarge(Exception):
    pass


class BodyLimit:
    """Counts request bodies as they arrive: past ``limit`` bytes the request fails with 413,
    whether or not it announced its length."""

    def __init__(self, app: Any, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        announced = dict(scope.get("headers") or []).get(b"content-length")
        if announced is not None and announced.isdigit() and int(announced) > self.limit:
            await _send_too_large(send, self.limit)
            return
        received = 0

        async def counted() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _BodyTooLarge
            return message

        await self.app(scope, counted, send)


def _too_large_message(limit: int) -> str:
    return f"the upload is larger than this server accepts ({limit / 1024 / 1024:.1f} MB); send a smaller image"


async def _send_too_large(send: Any, limit: int) -> None:
    body = json.dumps({"error": _too_large_message(limit)}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def create_app(checkpoints: Sequence[str | Path], device: str = "cpu", limits: Limits | None = None) -> Any:
    """The ASGI app serving ``checkpoints`` (anything ``gan_style.load`` reads), each loaded once
    on ``device``."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Route

    from gan_style.api import load

    limits = limits or Limits()
    if not checkpoints:
        raise UserError("give at least one --checkpoint to serve")
    served: dict[str, ServedModel] = {}
    for name, checkpoint in zip(unique_names(checkpoints), checkpoints):
        served[name] = ServedModel(name, load(checkpoint, device=device), str(checkpoint))
        logger.info("serving %s: %s", name, served[name].model.description)

    async def page(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    async def models(request: Request) -> Response:
        return JSONResponse({"models": [entry.describe() for entry in served.values()],
                             "limits": {"max_upload_bytes": limits.max_upload_bytes, "max_pixels": limits.max_pixels}})

    async def read_request(request: Request) -> tuple[dict[str, Any], dict[str, bytes], bool]:
        """(fields, uploads, whether the caller wants JSON back)."""
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("application/json"):
            try:
                body = json.loads(await request.body())
            except json.JSONDecodeError as error:
                raise RequestError(400, f"the JSON body does not parse: {error}") from None
            if not isinstance(body, dict):
                raise RequestError(400, "the JSON body must be an object: {\"model\": ..., \"image\": base64, ...}")
            uploads = {k: _base64_bytes(k, v) for k, v in body.items() if k in ("image", "style", "texture")}
            return {k: v for k, v in body.items() if k not in uploads}, uploads, True
        if not content_type.startswith("multipart/form-data"):
            raise RequestError(400, "send a multipart form (image=@photo.jpg, model=NAME) or a JSON body")
        fields: dict[str, Any] = {}
        uploads = {}
        try:
            async with request.form(max_files=4, max_fields=16, max_part_size=limits.max_upload_bytes) as form:
                for key, value in form.multi_items():
                    if hasattr(value, "read"):
                        uploads[key] = await value.read()
                    else:
                        fields[key] = value
        except _BodyTooLarge:
            raise
        except Exception as error:  # starlette's MultiPartException and the parser's own errors
            raise RequestError(400, f"the form does not parse: {error}") from None
        return fields, uploads, "application/json" in request.headers.get("accept", "")

    def work(entry: ServedModel, direction: str, uploads: dict[str, bytes], values: dict[str, Any]) -> tuple[bytes, tuple[int, int]]:
        """On the model's worker: decode, translate, encode (one image in memory at a time)."""
        image = decode_image(uploads.pop("image"), "image", limits.max_pixels)
        inputs = dict(values)
        for key, data in uploads.items():
            inputs[key] = decode_image(data, key, limits.max_pixels)
        try:
            out = translate_image(entry.model, image, direction, inputs, limits)
        except UserError as error:
            raise RequestError(400, str(error)) from None
        return _encode_png(out), out.size

    async def translate(request: Request) -> Response:
        started = time.perf_counter()
        fields, uploads, wants_json = await read_request(request)
        name = str(fields.pop("model", "") or next(iter(served)))
        if name not in served:
            raise RequestError(404, f"no model {name!r}; this server has {', '.join(served)} (GET /models)")
        entry = served[name]
        direction = str(fields.pop("direction", "") or entry.model.directions[0])
        if direction not in entry.model.directions:
            raise RequestError(400, f"direction {direction!r}: {name} translates {' or '.join(entry.model.directions)}")
        if "image" not in uploads:
            raise RequestError(400, "no image: send the photo as the field 'image'")
        specs = {spec.name: spec for spec in entry.model.translator(direction).inputs}
        fields.pop("format", None)
        unknown = sorted((set(fields) | set(uploads) - {"image"}) - set(specs))
        if unknown:
            raise RequestError(400, f"unknown field(s) {', '.join(unknown)}; {name} takes image{''.join(', ' + s for s in specs)}")
        values = {key: _parse_value(key, specs[key].kind, value) for key, value in fields.items() if value not in ("", None)}
        for key, spec in specs.items():
            if spec.kind == "image" and key in uploads and not uploads[key]:
                del uploads[key]  # an empty file field: the page's optional style image left unset
            if spec.required and key not in uploads and key not in values:
                raise RequestError(400, f"{name} needs the {spec.kind} {key!r} ({spec.help})")
        with entry.lock:
            if entry.waiting >= limits.max_queue:
                raise RequestError(503, f"{name} has {entry.waiting} requests waiting; try again shortly")
            entry.waiting += 1
        try:
            png, size = await asyncio.get_running_loop().run_in_executor(entry.worker, work, entry, direction, uploads, values)
        finally:
            with entry.lock:
                entry.waiting -= 1
        seconds = time.perf_counter() - started
        headers = {"X-Model": name, "X-Seconds": f"{seconds:.3f}", "X-Image-Size": f"{size[0]}x{size[1]}"}
        if wants_json:
            return JSONResponse({"model": name, "direction": direction, "width": size[0], "height": size[1], "seconds": round(seconds, 3),
                                 "image": "data:image/png;base64," + base64.b64encode(png).decode()}, headers=headers)
        return Response(png, media_type="image/png", headers=headers)

    async def refused(request: Request, error: Exception) -> Response:
        status = error.status if isinstance(error, RequestError) else 413
        message = str(error) if isinstance(error, RequestError) else _too_large_message(limits.max_upload_bytes)
        return JSONResponse({"error": message}, status_code=status)

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        yield
        for entry in served.values():
            entry.worker.shutdown(wait=False, cancel_futures=True)

    app = Starlette(
        lifespan=lifespan,
        routes=[Route("/", page), Route("/models", models), Route("/translate", translate, methods=["POST"])],
        middleware=[Middleware(BodyLimit, limit=limits.max_upload_bytes)],
        exception_handlers={RequestError: refused, _BodyTooLarge: refused},
    )
    app.state.served = served
    return app
