"""Attachment downloads (SPEC 2.3 ``GET /v1/attachments/{id}``, issue 6): a stored attachment's bytes.

Tenant-scoped: another tenant's id is 404 like any other tenant's data. A listed-only attachment
(saving off, over quota, over the part size limit) is 409 ``attachment_not_stored`` with the reason
(docs/decisions.md "Conversations and webhooks"). Always a download, never inline: an HTML or SVG
attachment must not run in the API's origin (``Content-Disposition: attachment``, ``nosniff``).
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote

from aiohttp import web

from gateway.http.context import API, CTX
from gateway.http.routing import Auth, Principal

_UNSAFE_ASCII = re.compile(r"[^A-Za-z0-9 ._()\[\]+-]")


def content_disposition(filename: str) -> str:
    """``attachment`` with the display name in both forms RFC 6266 §4.3 recommends when it needs
    them: an ASCII ``filename`` (letters folded, anything risky replaced) for old clients and
    ``filename*`` in UTF-8 (RFC 8187 §3.2) for the rest; a plain ASCII name goes as it is. The header
    is pure ASCII whatever the name holds: no quote, backslash or line break can end the parameter or
    the header early."""
    folded = unicodedata.normalize("NFKD", filename).encode("ascii", "ignore").decode()
    fallback = (_UNSAFE_ASCII.sub("_", folded).strip(" .") or "attachment")[:150]
    if fallback == filename:
        return f'attachment; filename="{fallback}"'
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


@API.route(
    "GET",
    "/v1/attachments/{attachment_id}",
    summary="A stored attachment's bytes, with its content type",
    auth=Auth.TENANT,
    responses={200: "the file", 409: "the attachment was only listed, not stored"},
    tag="threads",
)
async def get_attachment(request: web.Request, principal: Principal) -> web.StreamResponse:
    service = request.app[CTX].conversations
    assert service is not None
    row, path = await service.attachment(principal.tenant, request.match_info["attachment_id"])
    return web.FileResponse(
        path,
        headers={
            "Content-Type": row["content_type"],
            "Content-Disposition": content_disposition(row["filename"] or row["id"]),
            "X-Content-Type-Options": "nosniff",
        },
    )
