"""Credentials never leave the process: URLs with a password or a token are masked before anything sees them.

The CLI masks argv and ``MLFLOW_TRACKING_URI`` at start-up (``hide``); real values stay in ``VIT_EXP_SECRETS``
(inherited by sweep workers) for the store connection and checkpoint downloads (``reveal``)."""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

MASK = "***"
SECRETS_ENV = "VIT_EXP_SECRETS"
SECRET_QUERY_KEYS = {
    "access_token",
    "api_key",
    "apikey",
    "auth",
    "code",
    "key",
    "password",
    "secret",
    "sig",
    "signature",
    "token",
    "x-amz-credential",
    "x-amz-security-token",
    "x-amz-signature",
}
_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s'\"<>]+")


def mask_url(url: str) -> str:
    """``url`` with its password (or a user-only token) and secret query values replaced by ``***``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    masked = url
    if "@" in parts.netloc:
        userinfo, host = parts.netloc.rsplit("@", 1)
        user, has_password, _ = userinfo.partition(":")
        masked = masked.replace(
            parts.netloc, f"{user}:{MASK}@{host}" if has_password else f"{MASK}@{host}", 1
        )
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if any(k.lower() in SECRET_QUERY_KEYS for k, _ in pairs):
        query = urlencode([(k, MASK if k.lower() in SECRET_QUERY_KEYS else v) for k, v in pairs], safe="*")
        masked = masked.replace(f"?{parts.query}", f"?{query}", 1)
    return masked


def mask(text: str) -> str:
    """``text`` with every URL in it masked (see ``mask_url``)."""
    return _URL.sub(lambda match: mask_url(match.group(0)), text) if "://" in text else text


def _known() -> dict[str, str]:
    try:
        return json.loads(os.environ.get(SECRETS_ENV, "{}"))
    except json.JSONDecodeError:
        return {}


def reveal(text: str) -> str:
    """The real value behind a masked ``text`` (``text`` itself when it hid nothing)."""
    return _known().get(text, text)


def hide(text: str) -> str:
    """Mask ``text``, remembering the real value for ``reveal``."""
    masked = mask(text)
    if masked != text:
        known = _known()
        known[masked] = text
        for match in _URL.finditer(text):  # also each URL alone, as it appears as a config value
            known[mask_url(match.group(0))] = match.group(0)
        os.environ[SECRETS_ENV] = json.dumps(known)
    return masked


def hide_command_line_secrets() -> None:
    """Mask secrets in ``sys.argv`` and ``MLFLOW_TRACKING_URI`` before Hydra reads them."""
    sys.argv[1:] = [hide(arg) for arg in sys.argv[1:]]
    if uri := os.environ.get("MLFLOW_TRACKING_URI"):
        os.environ["MLFLOW_TRACKING_URI"] = hide(uri)


def split_credentials(uri: str) -> tuple[str, str | None, str | None]:
    """``(uri without user info, user, password)`` of a revealed http(s) URI; other schemes
    (``postgresql://user:pw@...``) keep their credentials, which the driver reads there."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or "@" not in parts.netloc:
        return uri, None, None
    userinfo, host = parts.netloc.rsplit("@", 1)
    user, _, password = userinfo.partition(":")
    bare = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return bare, unquote(user), unquote(password) or None


class MaskSecrets(logging.Filter):
    """A logging filter that masks URLs in every record it passes (console and log file handlers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "://" in message:
            record.msg, record.args = mask(message), None
        return True
