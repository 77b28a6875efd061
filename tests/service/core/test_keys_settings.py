"""``Keys.from_settings`` (what the gRPC server asks): the keys it accepts are exactly the configured ones, from
``api_key`` and ``api_key_file`` together, and no key configured means none is required."""

from __future__ import annotations

from service.core.config import Settings
from service.core.keys import Keys

KEY = "inline-key-0123456"
FILE_KEY = "file-key-abcdefgh"


def test_the_keys_are_those_of_api_key_and_api_key_file(tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"{FILE_KEY}\n")
    keys = Keys.from_settings(Settings(api_key=KEY, api_key_file=path))
    assert keys.keys == (KEY.encode(), FILE_KEY.encode())
    assert keys.required is True
    assert keys.allows(f"Bearer {KEY}".encode()) and keys.allows(f"Bearer {FILE_KEY}".encode())
    assert not keys.allows(b"Bearer other-key-000000")


def test_no_key_configured_requires_none():
    keys = Keys.from_settings(Settings())
    assert keys.keys == () and keys.required is False
