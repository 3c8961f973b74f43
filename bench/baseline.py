"""The framework's ceiling on this machine: a minimal Litestar POST that decodes the same body
with msgspec and returns a fixed JSON, served exactly as the broker is served (or, with
``--unbounded``, on uvicorn's own protocol, to measure what the connection bounds cost)."""

from __future__ import annotations

import argparse
from typing import Annotated, Any

import msgspec
from litestar import Litestar, Request, Response, post

from broker.server import Listener, serve

_FIXED = msgspec.json.encode({"token": "x" * 400, "tokenType": "Bearer", "expiresIn": 900})


class Body(msgspec.Struct, forbid_unknown_fields=True, rename="camel"):
    audience: str
    external_user_id: str
    expires_in: Annotated[int, msgspec.Meta(ge=300, le=2592000)] = 3600


_DECODER = msgspec.json.Decoder(Body)


@post("/tokens", status_code=200)
async def tokens(request: Request[Any, Any, Any]) -> Response[bytes]:
    _DECODER.decode(await request.body())
    return Response(_FIXED, media_type="application/json")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--unbounded",
        action="store_true",
        help="uvicorn's own httptools protocol, without the broker's connection bounds",
    )
    args = parser.parse_args()
    app = Litestar(route_handlers=[tokens], openapi_config=None, logging_config=None)
    if args.unbounded:
        serve(Listener(app, "127.0.0.1", args.port, limits=None))
    else:
        serve(Listener(app, "127.0.0.1", args.port))


if __name__ == "__main__":
    main()
