"""Delivering a graph to a signed URL (seed 003's `signed_url` and `compress`).

The graph server PUTs the graph JSON to a presigned S3 URL instead of answering with it (graphs
reach 100 MB), gzipped at level 3 with `Content-Encoding: gzip` when `compress` is set. We do the
same, with a timeout, after the GPU lock is released. Only https URLs are accepted: the URL
carries a signature and the body is a user's graph.
"""

from __future__ import annotations

import gzip
import json
import ssl
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from pydantic import BaseModel

from backend.errors import InvalidRequest, UploadFailed
from backend.schemas.service import UploadReceipt


def check_upload_url(url: str) -> str:
    """The URL if it is an https URL with a host; InvalidRequest (422) otherwise."""
    parts = urlsplit(url.strip())
    if parts.scheme.lower() != "https" or not parts.hostname:
        scheme = parts.scheme or "no scheme"
        raise InvalidRequest(
            f"signed_url must be an https:// URL (a presigned PUT URL); this one has {scheme}.",
            field="signed_url",
        )
    return url.strip()


def public_part(url: str) -> str:
    """The URL without its query (the signature) or credentials, for messages and receipts."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


class Uploader:
    """PUT a result's graph JSON to a signed URL, optionally gzipped, within `timeout_s`."""

    def __init__(self, timeout_s: float, *, verify: ssl.SSLContext | bool = True) -> None:
        self.timeout_s = timeout_s
        self.verify = verify

    def payload(self, result: BaseModel, compress: bool) -> tuple[bytes, dict[str, str]]:
        graph: Any = getattr(result, "graph", None)
        if graph is None:
            graph = result.model_dump(mode="json")
        data = json.dumps(graph).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if compress:
            data = gzip.compress(data, compresslevel=3)
            headers["Content-Encoding"] = "gzip"
        return data, headers

    def __call__(self, url: str, result: BaseModel, *, compress: bool) -> UploadReceipt:
        url = check_upload_url(url)
        where = public_part(url)
        data, headers = self.payload(result, compress)
        try:
            response = httpx.put(
                url,
                content=data,
                headers=headers,
                timeout=self.timeout_s,
                verify=self.verify,
                follow_redirects=False,
            )
        except httpx.TimeoutException:
            raise UploadFailed(
                f"Uploading the graph to {where} took over {self.timeout_s:g} s. Retry, or raise "
                "FEATURESCOPE_UPLOAD_TIMEOUT_S on the service."
            ) from None
        except httpx.HTTPError as exc:
            raise UploadFailed(
                f"Could not upload the graph to {where}: {type(exc).__name__}. Check that the "
                "signed_url is reachable from the service."
            ) from None
        if response.status_code >= 300:
            raise UploadFailed(
                f"{where} refused the graph upload with HTTP {response.status_code}. Check that the "
                "signed_url allows PUT and has not expired.",
                status=response.status_code,
            )
        return UploadReceipt(
            success=f"Graph uploaded successfully to url: {where}",
            slug=str(getattr(result, "slug", "")),
            n_nodes=int(getattr(result, "n_nodes", 0)),
            n_edges=int(getattr(result, "n_edges", 0)),
            bytes=len(data),
            compressed=compress,
            url=where,
        )
