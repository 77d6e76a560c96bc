"""A small blocking HTTP client over the standard ``wasi:http/outgoing-handler``.

Only hosts granted by the driver's ``allow_hosts=`` are reachable; private and loopback
addresses additionally need ``allow_private``. A refused request raises
``HttpError(kind="refused")``. (componentize-py's own ``poll_loop.py`` cannot be imported
in this world, which has two ``types`` interfaces; ``urllib`` has no sockets.)
"""

from __future__ import annotations

import json as _json
import re
import time
from email.utils import parsedate_to_datetime
from typing import Any, Iterable, List, Mapping, Optional, Tuple, Union

from componentize_py_types import Ok, Err
from wit_world.imports import outgoing_handler
from wit_world.imports import wasi_http_types as t
from wit_world.imports.streams import StreamError_Closed, StreamError_LastOperationFailed

from .failure import U64_MAX, Failure

MAX_RESPONSE_BODY = 1 << 20
"""Most bytes of a response body read."""


class HttpError(Exception):
    """Why a request produced no response. ``kind``: ``invalid-url``, ``refused``,
    ``timeout``, ``connection`` or ``other``; ``code`` is the wasi:http error-code name
    when the host gave one (e.g. ``HttpRequestDenied``)."""

    _WHAT = {"invalid-url": "invalid URL", "refused": "request refused by the sandbox",
             "timeout": "timeout", "connection": "connection failed", "other": "HTTP error"}

    def __init__(self, kind: str, message: str, code: Optional[str] = None):
        super().__init__(f"{self._WHAT.get(kind, kind)}: {message}")
        self.kind = kind
        self.code = code

    @property
    def retryable(self) -> bool:
        """Whether a retry later may succeed (timeouts and connection errors)."""
        return self.kind in ("timeout", "connection")


_REFUSED = {"HttpRequestDenied", "DestinationIpProhibited", "HttpRequestBodySize"}
_TIMEOUT = {"ConnectionTimeout", "ConnectionReadTimeout", "ConnectionWriteTimeout",
            "HttpResponseTimeout", "DnsTimeout"}
_CONNECTION = {"ConnectionRefused", "ConnectionTerminated", "ConnectionLimitReached",
               "DestinationUnavailable", "DestinationNotFound", "DnsError", "HttpProtocolError",
               "HttpResponseIncomplete", "TlsProtocolError", "TlsAlertReceived"}


def _code_name(code: Any) -> str:
    return type(code).__name__.removeprefix("ErrorCode_")


def _classify(code: Any) -> HttpError:
    """A wasi:http error-code, by mailpush's one classification."""
    name = _code_name(code)
    value = getattr(code, "value", None)
    # As the Rust SDK writes it (`{e:?}`): ErrorCode::HttpRequestDenied
    text = f"ErrorCode::{name}" if value is None else f"ErrorCode::{name}({value})"
    kind = ("refused" if name in _REFUSED else "timeout" if name in _TIMEOUT
            else "connection" if name in _CONNECTION else "other")
    return HttpError(kind, text, name)


def _drop(resource: Any) -> None:
    if resource is not None:
        try:
            resource.__exit__(None, None, None)
        except Exception:
            pass


class Response:
    """A response: ``status``, ``headers`` (list of (name, value), names lower case),
    ``body`` (bytes)."""

    def __init__(self, status: int, headers: List[Tuple[str, str]], body: bytes):
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def ok(self) -> bool:
        return 200 <= self.status <= 299

    def header(self, name: str) -> Optional[str]:
        """The first value of a header (name case-insensitive)."""
        n = name.lower()
        for k, v in self.headers:
            if k == n:
                return v
        return None

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return _json.loads(self.body)

    def __repr__(self) -> str:
        return f"Response(status={self.status}, {len(self.body)} bytes)"


def _wait(future: t.FutureIncomingResponse) -> t.IncomingResponse:
    while True:
        r = future.get()
        if r is not None:
            if isinstance(r, Err):
                raise HttpError("other", "response already taken")
            inner = r.value
            if isinstance(inner, Err):
                raise _classify(inner.value)
            return inner.value
        p = future.subscribe()
        p.block()
        _drop(p)


def _write_body(out_body: t.OutgoingBody, body: bytes) -> None:
    stream = out_body.write()
    try:
        for i in range(0, len(body), 4096):
            stream.blocking_write_and_flush(body[i:i + 4096])
    except Err as e:
        raise HttpError("connection", f"writing body: {type(e.value).__name__}")
    finally:
        _drop(stream)  # a child of the body: drop it before finishing
    try:
        t.OutgoingBody.finish(out_body, None)
    except Err as e:
        raise _classify(e.value)


def _read_body(incoming: t.IncomingResponse) -> bytes:
    try:
        body = incoming.consume()
    except Err:
        return b""
    data = bytearray()
    stream = None
    try:
        stream = body.stream()
        while len(data) < MAX_RESPONSE_BODY:
            try:
                data += stream.blocking_read(64 * 1024)
            except Err as e:
                if isinstance(e.value, StreamError_Closed):
                    break
                detail = e.value.value.to_debug_string() if isinstance(e.value, StreamError_LastOperationFailed) else str(e.value)
                raise HttpError("connection", f"reading response: {detail}")
    finally:
        _drop(stream)
        try:
            _drop(t.IncomingBody.finish(body))
        except Exception:
            pass
    return bytes(data[:MAX_RESPONSE_BODY])


_METHODS = {"GET": t.Method_Get, "HEAD": t.Method_Head, "POST": t.Method_Post, "PUT": t.Method_Put,
            "DELETE": t.Method_Delete, "CONNECT": t.Method_Connect, "OPTIONS": t.Method_Options,
            "TRACE": t.Method_Trace, "PATCH": t.Method_Patch}

Headers = Union[Mapping[str, str], Iterable[Tuple[str, str]]]


def send(method: Optional[str] = None, url: str = "", headers: Headers = (),
         body: Union[bytes, str, None] = None, json: Any = None,
         timeout_ms: Optional[int] = None) -> Response:
    """Sends a request and reads the whole response (body capped at 1 MiB). Blocking;
    waiting does not count against the driver's CPU deadline. Raises ``HttpError`` when
    there is no response; a response of any status is returned. ``json`` sends a value
    as JSON (content-type application/json); ``timeout_ms`` bounds connecting and the wait
    for the first response byte (capped by the sandbox)."""
    if json is not None:
        body = _json.dumps(json, separators=(",", ":"))
    data = b"" if body is None else body.encode() if isinstance(body, str) else bytes(body)
    method = (method or ("POST" if data else "GET")).upper()
    m = re.match(r"^(https?)://([^/?#]*)([^#]*)", url or "", re.I)
    if not m:
        raise HttpError("invalid-url", f"{url}: only http:// and https:// URLs")
    scheme = t.Scheme_Https() if m.group(1).lower() == "https" else t.Scheme_Http()
    authority = m.group(2).rsplit("@", 1)[-1]  # userinfo is never sent in the authority
    if not authority:
        raise HttpError("invalid-url", f"{url}: no host")
    path = m.group(3)
    path = "/" if not path else "/" + path if path.startswith("?") else path

    items = list(headers.items()) if isinstance(headers, Mapping) else list(headers)
    items = [(str(k), str(v)) for k, v in items]
    names = {k.lower() for k, _ in items}
    if json is not None and "content-type" not in names:
        items.append(("content-type", "application/json"))
    # A known length (no chunked encoding): what most receivers expect.
    if "content-length" not in names and (data or method in ("POST", "PUT")):
        items.append(("content-length", str(len(data))))
    try:
        fields = t.Fields.from_list([(k, v.encode()) for k, v in items])
    except Err as e:
        raise HttpError("other", f"bad header: {type(e.value).__name__}")
    req = t.OutgoingRequest(fields)

    def setting(what, f, v):
        try:
            f(v)
        except Err:
            raise HttpError("invalid-url", f"{url}: invalid {what}")

    setting("method", req.set_method, _METHODS[method]() if method in _METHODS else t.Method_Other(method))
    setting("scheme", req.set_scheme, scheme)
    setting("host", req.set_authority, authority)
    setting("path", req.set_path_with_query, path)
    out_body = req.body()
    options = None
    if timeout_ms is not None:
        ns = min(max(0, int(timeout_ms)) * 1_000_000, U64_MAX)
        options = t.RequestOptions()
        options.set_connect_timeout(ns)
        options.set_first_byte_timeout(ns)
        options.set_between_bytes_timeout(ns)
    try:
        future = outgoing_handler.handle(req, options)
    except Err as e:
        _drop(out_body)
        raise _classify(e.value)
    try:
        try:
            _write_body(out_body, data)
        except HttpError:
            # A refusal or a failed connection shows in the response future: prefer it.
            _wait(future)
            raise
        incoming = _wait(future)
        try:
            status = incoming.status()
            hdrs = incoming.headers()
            header_list = [(k.lower(), v.decode("utf-8", "replace")) for k, v in hdrs.entries()]
            _drop(hdrs)
            return Response(status, header_list, _read_body(incoming))
        finally:
            _drop(incoming)
    finally:
        _drop(future)


def post_json(url: str, value: Any, **kw) -> Response:
    """POST a JSON value."""
    return send("POST", url, json=value, **kw)


def parse_retry_after(value: Optional[str], now: Optional[float] = None) -> Optional[int]:
    """A ``Retry-After`` value in milliseconds: delay-seconds or an HTTP date (past: 0)."""
    if value is None:
        return None
    v = value.strip()
    if v.isascii() and v.isdigit():
        secs = int(v)
        # More seconds than a u64 holds is no value (as in Rust); milliseconds are capped.
        return None if secs > U64_MAX else min(secs * 1000, U64_MAX)
    try:
        at = parsedate_to_datetime(v).timestamp()
    except Exception:
        return None
    return max(0, int((at - (time.time() if now is None else now)) * 1000))


def failure_from_http(what: str, outcome: Union[Response, BaseException]) -> Optional[Failure]:
    """The failure (if any) of a request's outcome (a Response, or the HttpError raised),
    by mailpush's one classification: None for 2xx; retryable (with the server's
    Retry-After) for 408, 429, 5xx, timeouts and connection errors; permanent for other
    statuses and policy refusals."""
    if isinstance(outcome, Response):
        s = outcome.status
        if 200 <= s <= 299:
            return None
        reason = f"{what} answered {s}"
        if s in (408, 429) or 500 <= s <= 599:
            return Failure(reason, True, parse_retry_after(outcome.header("retry-after")))
        return Failure(reason, False)
    if isinstance(outcome, Failure):
        return outcome
    if isinstance(outcome, HttpError):
        return Failure(f"{what}: {outcome}", outcome.retryable)
    return Failure(f"{what}: {outcome}", False)
