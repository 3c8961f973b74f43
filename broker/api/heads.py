"""HEAD beside a GET (RFC 9110 9.3.2): the same status and headers, without the body. Load
balancers and monitors probe with HEAD, and a 405 reads as down."""

from __future__ import annotations

from typing import Any

from litestar import Response
from litestar.response.base import ASGIResponse


class _Headless(Response[None]):
    """A GET's status and headers without its body (RFC 9110 9.3.2). Litestar sets a HEAD
    handler's Content-Length from the empty body it returns, and a HEAD answer must not say
    0 for a GET whose content is not empty (8.6): here it is the GET's length when given,
    and absent otherwise."""

    def to_asgi_response(self, app: Any, request: Any, **kwargs: Any) -> ASGIResponse:
        return super().to_asgi_response(app, request, **{**kwargs, "is_head_response": True})


def headless(status: int, content_type: str, length: int | None = None) -> Response[None]:
    """The HEAD answer for a GET that would answer ``status`` with ``content_type`` (as sent:
    Litestar adds nothing to a HEAD answer) and ``length`` bytes, if known."""
    headers = {"content-type": content_type}
    if length is not None:
        headers["content-length"] = str(length)
    return _Headless(None, status_code=status, headers=headers)
