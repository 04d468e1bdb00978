"""What the review app's handlers answer with: JSON errors, lease views, the static pages."""

from __future__ import annotations

from importlib import resources
from typing import Any

from aiohttp import web

from streams.review.leases import Lease


def error_response(status: int, message: str, problems: list[str] | None = None) -> web.Response:
    body: dict[str, Any] = {"error": message}
    if problems:
        body["problems"] = problems
    return web.json_response(body, status=status)


def lease_json(lease: Lease | None) -> dict[str, Any] | None:
    if lease is None:
        return None
    return {"lease_id": lease.lease_id, "reviewer_id": lease.reviewer_id, "expires_at": lease.expires_at}


def static_page(name: str) -> str:
    return resources.files("streams.review").joinpath("static", name).read_text(encoding="utf-8")
