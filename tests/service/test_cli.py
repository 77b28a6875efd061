"""The rbn-serve command line in process: one flag per setting, flags over the environment, exit
codes and messages of serve/validate/models/--version. (Serving itself: test_startup.py.)"""

from __future__ import annotations

import pytest
from inproc import BN_MODEL, RBN_MODEL, SHIPPED

from service.cli import _settings, build_parser, main
from service.config import ENV_PREFIX, Settings
from service.shipped import package_version


def test_every_setting_has_its_flag():
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    flags = {option for action in serve._actions for option in action.option_strings}
    for name in Settings.model_fields:
        assert f"--{name.replace('_', '-')}" in flags, name
    assert "--no-access-log" in flags  # booleans get both forms


def test_flags_win_over_the_environment(monkeypatch):
    monkeypatch.setenv(f"{ENV_PREFIX}MODEL_REPOSITORY", str(SHIPPED))
    monkeypatch.setenv(f"{ENV_PREFIX}LISTEN_BACKLOG", "64")
    monkeypatch.setenv(f"{ENV_PREFIX}SHADOW_MAX_PENDING", "5")
    settings = _settings(build_parser().parse_args(["serve", "--listen-backlog", "128", "--providers", "cpu"]))
    assert (settings.listen_backlog, settings.shadow_max_pending, settings.providers) == (128, 5, "cpu")


def test_an_invalid_setting_exits_2_naming_the_field(capsys):
    assert main(["serve", "--model-repository", str(SHIPPED), "--shadow-fraction", "2"]) == 2
    assert "rbn-serve: invalid setting shadow_fraction:" in capsys.readouterr().err


def test_validate_and_models_commands(tmp_path, capsys):
    assert main(["validate", str(SHIPPED / RBN_MODEL), str(SHIPPED / BN_MODEL)]) == 0
    assert main(["validate", str(tmp_path)]) == 1
    assert main(["models", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote {BN_MODEL}, {RBN_MODEL} to {tmp_path / 'out'}"
    assert (tmp_path / "out" / RBN_MODEL / "model.json").read_bytes() == (SHIPPED / RBN_MODEL / "model.json").read_bytes()
    assert main(["models", str(tmp_path / "out")]) == 1  # never overwrites
    assert "rbn-serve:" in capsys.readouterr().err


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"rbn-serve {package_version()}"
