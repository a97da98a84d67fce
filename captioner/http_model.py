"""The skeleton every HTTP provider shares, so a provider module is only its
request and response shapes.

`HTTPModel.caption` posts the JSON body a subclass builds, maps a non-200
status to a retryable / final / fatal `ProviderError`, folds a streamed
(server-sent events) body into one response when a server streams anyway, and
hands the body to the subclass's parser.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx

from .answers import MAX_BODY_BYTES, parse_json
from .models import (
    CaptionRequest,
    CaptionResult,
    Model,
    ProviderError,
    error_body,
    error_for_status,
    is_event_stream,
    sse_payloads,
)


class HTTPModel(Model):
    """A vision model behind an HTTP JSON API.

    Subclasses implement `endpoint`, `build_body` and `parse_body`; they
    override `auth_headers`, `map_error`, `fold_stream` or `read_body` only
    where their provider differs from the common case.
    """

    def endpoint(self) -> str:
        """The URL requests are posted to (read from the environment at call time)."""
        raise NotImplementedError

    def endpoint_for(self, request: CaptionRequest) -> str:
        """The URL for this request (a model served by several endpoints picks by `request.base_url`)."""
        return self.endpoint()

    def auth_headers(self, key: str) -> dict[str, str]:
        """Headers that carry the API key."""
        return {"Authorization": f"Bearer {key}"}

    def request_headers(self, key: str | None) -> dict[str, str]:
        """Every header a request carries (override to add a version header)."""
        headers = {"content-type": "application/json"}
        if key:
            headers.update(self.auth_headers(key))
        return headers

    def build_body(self, request: CaptionRequest) -> dict[str, Any]:
        """The JSON request body for one image."""
        raise NotImplementedError

    def parse_body(self, body: Any) -> CaptionResult:
        """A successful response body to a CaptionResult."""
        raise NotImplementedError

    def fold_stream(self, events: list[Any]) -> Any:
        """Server-sent events folded into the body a non-streamed answer would have."""
        raise ProviderError("unexpected event stream from server", retryable=True)

    def map_error(self, response: httpx.Response) -> ProviderError:
        """A non-200 response to a ProviderError (override to spot fatal cases in the body)."""
        _, message = error_body(response)
        return error_for_status(response, message)

    def read_body(self, response: httpx.Response) -> Any:
        if is_event_stream(response):
            return self.fold_stream(sse_payloads(response.text))
        return parse_json(response.content)

    def typed_options(self, request: CaptionRequest) -> dict[str, Any]:
        """The request's `-o` values, typed by the model's declared options."""
        return self.validate_options(request.options)

    async def caption(self, request: CaptionRequest, client: httpx.AsyncClient) -> CaptionResult:
        body = json.dumps(self.build_body(request))
        response = await post_capped(client, self.endpoint_for(request), body, self.request_headers(request.key))
        if response.status_code != 200:
            raise self.map_error(response)
        try:
            return self.parse_body(self.read_body(response))
        except ProviderError:
            raise
        except (TypeError, AttributeError, KeyError, IndexError, ValueError, RecursionError, OverflowError) as exc:
            # A body of the wrong shape (`choices: ["x"]`, `parts: ["x"]`): the answer is unusable.
            raise ProviderError(f"malformed response from server ({exc.__class__.__name__}: {exc})"[:300]) from exc


async def post_capped(client: httpx.AsyncClient, url: str, body: str, headers: dict[str, str],
                      limit: int = MAX_BODY_BYTES) -> httpx.Response:
    """POST and read the answer, refusing a body (after decompression) larger
    than `limit`, so a huge or gzip-bomb answer cannot exhaust memory."""
    async with client.stream("POST", url, content=body, headers=headers) as response:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise ProviderError(f"response body of {int(declared):,} bytes is over the {limit:,}-byte limit")
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > limit:
                raise ProviderError(f"response body is over the {limit:,}-byte limit")
            chunks.append(chunk)
    # A plain Response holding the decoded bytes, so the usual .json()/.text work on it.
    kept = [(k, v) for k, v in response.headers.multi_items()
               if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")]
    return httpx.Response(response.status_code, headers=kept, content=b"".join(chunks),
                          request=response.request)


def jpeg_base64(request: CaptionRequest) -> str:
    """The request's image as base64 text, as every JSON wire format wants it."""
    return base64.b64encode(request.jpeg).decode("ascii")


def images_base64(request: CaptionRequest) -> list[str]:
    """Every image the request carries, as base64: a clip's frames when it was
    sent as several images, else the one image (a photo, or a clip's contact sheet)."""
    frames = [part.data for part in request.media if getattr(part, "kind", None) == "image"]
    return [base64.b64encode(data).decode("ascii") for data in frames] or [jpeg_base64(request)]
