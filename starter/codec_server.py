"""The codec server: the Temporal Web UI and CLI decrypt payloads through it.

Temporal stores workflow payloads encrypted (:mod:`mdmflow.codec`); the Web UI shows
them in clear only by posting them to ``<endpoint>/decode``, in Temporal's codec server
JSON (``{"payloads": [{"metadata": {k: base64}, "data": base64}]}``), from the browser.
Mounted at ``/codec`` in the API process, with CORS for the UI's origins
(``MDMFLOW_CODEC_CORS_ORIGINS``) and the API key required: HTTP Basic ``nanocmd:<key>``
(the browser sends the credentials it logged in with when the UI includes cross-origin
credentials) or ``Authorization: Bearer <key>``. CORS preflights need no key.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from collections.abc import Callable, Sequence

from fastapi import FastAPI, Request, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from google.protobuf import json_format
from starlette.exceptions import HTTPException as StarletteHTTPException
from temporalio.api.common.v1 import Payload, Payloads
from temporalio.converter import PayloadCodec

from mdmflow.codec import PayloadKeyError

DEFAULT_ORIGINS = ("http://127.0.0.1:8233", "http://localhost:8233")


def cors_origins() -> list[str]:
    """``MDMFLOW_CODEC_CORS_ORIGINS``: comma-separated; default the embedded Web UI."""
    raw = os.environ.get("MDMFLOW_CODEC_CORS_ORIGINS", "").strip()
    if not raw:
        return list(DEFAULT_ORIGINS)
    return [o.strip().rstrip("/") for o in raw.split(",") if o.strip()]


def _key_matches(header: str, api_key: str) -> bool:
    scheme, _, value = header.partition(" ")
    value = value.strip()
    if scheme.lower() == "bearer":
        return secrets.compare_digest(value.encode(), api_key.encode())
    if scheme.lower() != "basic":
        return False
    try:
        user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return False
    return secrets.compare_digest(user.encode(), b"nanocmd") & secrets.compare_digest(
        password.encode(), api_key.encode()
    )


def codec_app(
    codec: Callable[[], PayloadCodec | None], api_key: str, origins: Sequence[str] | None = None
) -> FastAPI:
    """The codec endpoints as an app of their own (mount it at ``/codec``).

    ``codec()`` gives the codec of the process's Temporal client, so the server decodes
    with exactly the keys the API and worker use.
    """
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    # its own 404/405 in the one error shape too
    @app.exception_handler(StarletteHTTPException)
    async def http_error(_r: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(origins if origins is not None else cors_origins()),
        allow_credentials=True,
        allow_methods=["POST"],
        allow_headers=["Authorization", "Content-Type", "X-Namespace"],
        max_age=600,
    )

    async def apply(request: Request, encode: bool) -> Response:
        if not _key_matches(request.headers.get("authorization", ""), api_key):
            return JSONResponse(
                {"error": "API key is missing or invalid (HTTP Basic, user nanocmd)"},
                status_code=401,
                headers={"WWW-Authenticate": 'Basic realm="mdmflow"'},
            )
        the_codec = codec()
        if the_codec is None:
            return JSONResponse({"error": "payloads are not encrypted here"}, status_code=404)
        try:
            payloads = json_format.Parse(await request.body(), Payloads())
        except (json_format.ParseError, UnicodeDecodeError) as exc:
            return JSONResponse({"error": f"not codec server JSON: {exc}"}, status_code=400)
        items: Sequence[Payload] = payloads.payloads
        try:
            done = await (the_codec.encode(items) if encode else the_codec.decode(items))
        except (PayloadKeyError, ValueError) as exc:  # ValueError: data too short to open
            return JSONResponse({"error": f"cannot decode: {exc}"}, status_code=400)
        body = json_format.MessageToJson(Payloads(payloads=done))
        return Response(body, media_type="application/json")

    @app.post("/decode")
    async def decode(request: Request) -> Response:
        return await apply(request, encode=False)

    @app.post("/encode")
    async def encode(request: Request) -> Response:
        return await apply(request, encode=True)

    return app
