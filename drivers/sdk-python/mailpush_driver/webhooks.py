"""Standard Webhooks (https://www.standardwebhooks.com) signing."""

from __future__ import annotations

import base64
import binascii
from typing import Union

from wit_world.imports import host as _host


#: The longest key ``hmac_sha256`` takes (the host traps on a longer one).
MAX_HMAC_KEY_BYTES = 4096


def decode_webhook_secret(secret: str) -> bytes:
    """The key bytes of a ``whsec_<base64>`` secret; raises ValueError naming the problem,
    so ``__init__`` refuses a secret the host's HMAC could not take (over
    ``MAX_HMAC_KEY_BYTES``) instead of every delivery trapping."""
    if not secret.startswith("whsec_"):
        raise ValueError("secret must look like whsec_<base64>")
    b64 = secret[len("whsec_"):]
    if not b64:
        raise ValueError("secret: no key after whsec_")
    invalid = ValueError("secret: the part after whsec_ is not valid base64")
    try:
        key = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise invalid from None
    # Padded, canonical base64 only (as the Rust and JavaScript SDKs take it): one
    # secret, one key.
    if base64.b64encode(key).decode() != b64:
        raise invalid
    if len(key) > MAX_HMAC_KEY_BYTES:
        raise ValueError(f"secret: {len(key)} bytes of key, at most {MAX_HMAC_KEY_BYTES}")
    return key


def sign_webhook(secret: Union[str, bytes], id: str, timestamp: Union[int, str],
                 body: Union[bytes, str]) -> str:
    """The ``webhook-signature`` value: ``v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>``.
    ``secret`` is a ``whsec_<base64>`` string or the key bytes."""
    key = decode_webhook_secret(secret) if isinstance(secret, str) else secret
    data = body.encode() if isinstance(body, str) else body
    return "v1," + base64.b64encode(hmac_sha256(key, f"{id}.{timestamp}.".encode() + data)).decode()


def hmac_sha256(key: bytes, data: Union[bytes, str]) -> bytes:
    """HMAC-SHA256, computed by mailpush (``host.hmac-sha256``, mailpush:driver@0.1.1) with
    native code (the CPU's SHA instructions where it has them), which code compiled to wasm
    cannot match. ``data`` may be
    ``str`` (UTF-8). At most 16 MiB of data and ``MAX_HMAC_KEY_BYTES`` of key: more traps."""
    return bytes(_host.hmac_sha256(key, data.encode() if isinstance(data, str) else data))
