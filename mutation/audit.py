"""The outside audit's survivor classes (#28), each applied by hand: for every entry of mutation/audit.json, copy a
commit's files (default HEAD) into a scratch folder, make the one change, run the tests named, and print whether
they failed (they must: each test was written to kill that mutant). The checkout is never changed.

    .venv/bin/python mutation/audit.py [--source HEAD] [LABEL ...]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = Path("/tmp/rbn-mutation-audit")


def check(entry: dict, source: str) -> bool:
    dest = WORK / entry["label"]
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", source], cwd=ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    target = dest / entry["path"]
    text = target.read_text()
    if text.count(entry["old"]) != 1:
        print(f"{entry['label']}: the line to change is not in {entry['path']} exactly once; update audit.json")
        return False
    target.write_text(text.replace(entry["old"], entry["new"]))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", "-W",
                           "ignore::DeprecationWarning", *entry.get("extra", []), *entry["tests"]],
                          cwd=dest, capture_output=True, text=True, timeout=900)
    failed = [line for line in done.stdout.splitlines() if line.startswith("FAILED")]
    shutil.rmtree(dest)
    killed = done.returncode == 1 and bool(failed)
    print(f"{entry['label']:30} {'killed' if killed else 'NOT KILLED'}  {failed[0] if failed else done.stdout[-200:]}",
          flush=True)
    return killed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("labels", nargs="*")
    parser.add_argument("--source", default="HEAD")
    args = parser.parse_args()
    entries = [e for e in json.loads((HERE / "audit.json").read_text()) if not args.labels or e["label"] in args.labels]
    results = [check(e, args.source) for e in entries]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
