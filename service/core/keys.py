"""API keys, whatever the protocol: which keys the server accepts (``api_key``, ``api_key_file``) and the
constant-time bearer check. The HTTP gate (``service.http.auth.Access``, which adds the paths open without a
key) and the gRPC servicer both ask ``Keys.allows``. Keys never reach a log line: ``Settings`` holds them as
``SecretStr`` and no message quotes one.
"""

from __future__ import annotations

import hmac
import os
import re
from collections.abc import Iterable

from service.core.config import API_KEY, Settings

# A key is printable ASCII without spaces or commas (those separate keys), at least 8 characters: the rule
# Settings checks api_key with (an invalid setting, exit 2); a key file's keys are checked here at start-up.
_KEY = API_KEY


class KeyConfigError(ValueError):
    """The configured keys are unusable (empty file, a key with odd characters)."""


def parse_keys(text: str, source: str) -> list[bytes]:
    """Keys separated by commas, spaces or new lines; each printable ASCII, 8 characters or more."""
    keys = []
    for item in re.split(r"[\s,]+", text.strip()):
        if not item:
            continue
        if not _KEY.fullmatch(item):
            # Never quote the key itself: this message is logged.
            raise KeyConfigError(f"{source}: a key of {len(item)} characters is not 8+ printable ASCII characters "
                                 "without spaces or commas")
        keys.append(item.encode("ascii"))
    return keys


def load_keys(settings: Settings) -> tuple[bytes, ...]:
    """Every accepted key from ``api_key`` and ``api_key_file``; empty when no key is required."""
    keys: list[bytes] = []
    if settings.api_key is not None:
        keys += parse_keys(settings.api_key.get_secret_value(), "api_key")
    if settings.api_key_file is not None:
        try:
            text = settings.api_key_file.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:  # e.g. a secret of mode 0600 owned by another uid than the server's
            raise KeyConfigError(f"api_key_file {str(settings.api_key_file)!r} cannot be read by uid {os.getuid()}: "
                                 f"{exc.strerror or exc} (make it readable by that user, e.g. mode 0644 or chown)") from None
        from_file = parse_keys(text, "api_key_file")
        if not from_file:
            raise KeyConfigError(f"api_key_file {str(settings.api_key_file)!r} holds no key")
        keys += from_file
    return tuple(dict.fromkeys(keys))


class Keys:
    """The accepted keys and the check; ``required`` is false when none is configured."""

    def __init__(self, keys: Iterable[bytes]) -> None:
        self.keys = tuple(keys)
        self.required = bool(self.keys)

    @classmethod
    def from_settings(cls, settings: Settings) -> Keys:
        return cls(load_keys(settings))

    def allows(self, authorization: bytes | None) -> bool:
        """``Authorization: Bearer <key>`` with an accepted key; every key is compared, in constant time."""
        if authorization is None:
            return False
        scheme, _, token = authorization.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        token = token.strip()
        matched = False
        for key in self.keys:  # no early exit: the time taken does not depend on which key matched
            matched |= hmac.compare_digest(token, key)
        return matched
