"""`rbn` without the [train] extra: a command that needs torch says so in one line (exit 2), no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# The interpreter as it is after `pip install -e .` without [train]: importing torch fails.
WITHOUT_TORCH = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoTorch())
from rbn.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_finetune_without_torch_is_one_line():
    done = subprocess.run([sys.executable, "-c", WITHOUT_TORCH, "finetune", "checkpoints/resnet20-bn-s0.pt"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rbn finetune: needs the Python package 'torch' of the [train] extra")
    assert "./run.sh rbn finetune" in lines[0]
