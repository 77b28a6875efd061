"""The skip policy really fails a CI run: pytest in a subprocess on a tiny test tree, with and without CI=true."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import skip_policy

TESTS = Path(__file__).resolve().parent

TINY = '''
import pytest
from skip_policy import allowed_skip

def test_passes():
    assert True

def test_{name}():
    {body}
'''

BODIES = {
    "plain_skip": 'pytest.skip("promtool is not installed")',
    "importorskip": 'pytest.importorskip("no_such_module_for_the_skip_policy")',
    "allowed": 'allowed_skip("cuda-present", "this machine has CUDA")',
}


def run_tiny(tmp_path: Path, name: str, ci: str | None, module_level: bool = False) -> subprocess.CompletedProcess:
    body = BODIES[name]
    source = TINY.format(name=name, body=body)
    if module_level:
        source = f"import pytest\n{body}\n" + source
    (tmp_path / "pytest.ini").write_text("[pytest]\n")  # keep the project's own configuration out
    (tmp_path / f"test_{name}.py").write_text(source)
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    if ci is not None:
        env["CI"] = ci
    env["PYTHONPATH"] = str(TESTS)
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "skip_policy", "-p", "no:cacheprovider", "-rA",
                           str(tmp_path)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("name", ["plain_skip", "importorskip"])
def test_a_skip_fails_the_run_under_ci(tmp_path, name):
    done = run_tiny(tmp_path, name, "true")
    assert done.returncode == pytest.ExitCode.TESTS_FAILED, done.stdout
    assert "1 failed, 1 passed" in done.stdout and "allow-list" in done.stdout


def test_a_module_level_skip_fails_the_run_under_ci(tmp_path):
    done = run_tiny(tmp_path, "importorskip", "true", module_level=True)
    assert done.returncode == pytest.ExitCode.INTERRUPTED, done.stdout  # a collection error stops the run
    assert "1 error" in done.stdout and "no_such_module_for_the_skip_policy" in done.stdout


@pytest.mark.parametrize("ci", [None, "false"])
def test_outside_ci_a_skip_stays_a_skip(tmp_path, ci):
    done = run_tiny(tmp_path, "plain_skip", ci)
    assert done.returncode == pytest.ExitCode.OK, done.stdout
    assert "1 passed, 1 skipped" in done.stdout


def test_an_allow_listed_skip_passes_under_ci(tmp_path):
    done = run_tiny(tmp_path, "allowed", "true")
    assert done.returncode == pytest.ExitCode.OK, done.stdout
    assert "1 passed, 1 skipped" in done.stdout and "[cuda-present] this machine has CUDA" in done.stdout


def test_allow_list_keys_are_checked_and_each_has_a_reason():
    with pytest.raises(KeyError, match="allow-list"):
        skip_policy.allowed_skip("tool-missing", "promtool")
    assert set(skip_policy.ALLOWED) == {"cuda-present", "cuda-absent", "index-unreachable"}
    assert all(len(why) > 20 for why in skip_policy.ALLOWED.values())


def test_the_suite_loads_the_policy(pytestconfig):
    assert pytestconfig.pluginmanager.get_plugin("skip_policy") is skip_policy


def test_ci_script_turns_the_policy_on():
    script = (TESTS.parent / ".ci" / "run").read_text()
    assert "export CI=true" in script and "./run.sh test" in script
