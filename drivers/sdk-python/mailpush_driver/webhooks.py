"""Standard Webhooks (https://www.standardwebhooks.com) signing."""

from __future__ import annotations

import base64
import binascii
from typing import Union

from wit_world.imports import host as _host


def decode_webhook_secret(secret: str) -> bytes:
    """The key bytes of a ``whsec_<base64>`` secret; raises ValueError naming the problem."""
    if not secret.startswith("whsec_"):
        raise ValueError("secret must look like whsec_<base64>")
    try:
        return base64.b64decode(secret[len("whsec_"):], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("secret: the part after whsec_ is not valid base64") from None


def sign_webhook(secret: Union[str, bytes], id: str, timestamp: Union[int, str],
                 body: Union[bytes, str]) -> str:
    """The ``webhook-signature`` value: ``v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>``.
    ``secret`` is a ``whsec_<base64>`` string or the key bytes."""
    key = decode_webhook_secret(secret) if isinstance(secret, str) else secret
    data = body.encode() if isinstance(body, str) else body
    return "v1," + base64.b64encode(hmac_sha256(key, f"{id}.{timestamp}.".encode() + data)).decode()


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    """HMAC-SHA256, computed by mailpush (``host.hmac-sha256``, mailpush:driver@0.1.1) with
    the CPU's SHA instructions, which code compiled to wasm cannot use. At most 16 MiB of
    data and 4 KiB of key: more traps."""
    return bytes(_host.hmac_sha256(key, data))
