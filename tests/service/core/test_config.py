"""Settings in process: every knob is a documented field (docstring and docs/configuration.md), bounds and the
one cross-field check (the queue holds a full batch and a full multipart request)."""

from __future__ import annotations

import pytest
from tests.service.inproc import ROOT, SHIPPED
from pydantic import ValidationError

from service.core.config import ENV_PREFIX, Settings


def test_every_setting_is_documented_in_the_field_and_in_the_configuration_doc():
    readme = (ROOT / "docs" / "configuration.md").read_text()
    for name, field in Settings.model_fields.items():
        assert field.description, name
        env, flag = f"`{ENV_PREFIX}{name.upper()}`", f"`--{name.replace('_', '-')}"
        row = next((line for line in readme.splitlines() if line.startswith(f"| {env} |")), None)
        assert row is not None and flag in row, f"docs/configuration.md's table lacks {env} / {flag}"


def test_the_queue_must_hold_a_full_batch_and_a_full_request():
    with pytest.raises(ValidationError, match=r"max_queue_size \(8\) must be >= max_batch_size \(16\)"):
        Settings(model_repository=SHIPPED, max_batch_size=16, max_queue_size=8)
    with pytest.raises(ValidationError, match=r"max_queue_size \(8\) must be >= max_files \(9\)"):
        Settings(model_repository=SHIPPED, max_batch_size=8, max_queue_size=8, max_files=9)
    assert Settings(model_repository=SHIPPED, max_batch_size=8, max_queue_size=8, max_files=8).max_queue_size == 8


@pytest.mark.parametrize(("field", "value"), [
    ("shadow_fraction", 1.5), ("port", 70000), ("inline_decode_pixels", -1), ("decode_threads", -1),
    ("shadow_max_pending", 0), ("listen_backlog", 0), ("max_form_fields", 0), ("max_form_field_bytes", 10),
    ("retry_after_s", -1), ("providers", "tpu"), ("unknown_knob", 1),
])
def test_out_of_range_values_fail(field, value):
    with pytest.raises(ValidationError, match=field):
        Settings(model_repository=SHIPPED, **{field: value})


def test_the_environment_sets_every_field(monkeypatch, tmp_path):
    monkeypatch.setenv(f"{ENV_PREFIX}MODEL_REPOSITORY", str(tmp_path))
    monkeypatch.setenv(f"{ENV_PREFIX}DECODE_THREADS", "3")
    monkeypatch.setenv(f"{ENV_PREFIX}PRIMARY_MODEL", "")
    settings = Settings()
    assert (settings.model_repository, settings.decode_threads, settings.primary_model) == (tmp_path, 3, None)
    with pytest.raises(ValidationError, match="not a directory"):
        Settings(model_repository=tmp_path / "absent")


def test_the_batching_delay_default_is_the_one_every_triton_config_declares():
    """One number (rbn.contract.bundle.MAX_QUEUE_DELAY_MS): rbn-serve's default and Triton's config.pbtxt."""
    delay_us = round(Settings(model_repository=SHIPPED).max_queue_delay_ms * 1000)
    configs = sorted(SHIPPED.glob("*/config.pbtxt"))
    assert delay_us == 2000 and configs
    for config in configs:
        assert f"  max_queue_delay_microseconds: {delay_us}\n" in config.read_text(), config
