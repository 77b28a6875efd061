"""Mutation testing of the critical modules with mutmut 3 (docs/testing.md).

For each module named in mutation/modules.toml: copy the working tree (tracked and untracked, not ignored
files) into a scratch folder, so the shared checkout is never touched; configure mutmut there to mutate
that one file and run that module's tests; run it; then write the report: every mutant's status, the
surviving ones with their diff, the equivalent ones (mutation/equivalent.toml) excluded with their reason,
and the kill ratio

    (killed + timeout) / (mutants - equivalent - skipped)

where "survived", "no tests" (no selected test calls the mutated function) and "suspicious" all count as
misses. Reports go to mutation/out/ (ignored by git): <module>.md, <module>.json and summary.md.

    mutation/run.sh                  every module
    mutation/run.sh auth oip         these modules
    mutation/run.sh --source HEAD    the last commit's files rather than the working tree's
    mutation/run.sh --reread fold    the last run's results again, with equivalent.toml as it is now
    mutation/run.sh --list           the modules and their tests
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
WORK = Path(os.environ.get("RBN_MUTATION_WORK", "/tmp/rbn-mutation"))
ALSO_COPY = ["harness", "models", "samples", "bench", "docker", "docs", "checkpoints", "results"]
KILLED = {"killed", "timeout", "caught by type check", "segfault"}
MISSED = {"survived", "no tests", "suspicious", "not checked"}


@dataclass
class Module:
    name: str
    file: str
    tests: list[str]
    isolation: str = "fork"


@dataclass
class Outcome:
    name: str
    file: str
    seconds: float
    statuses: dict[str, str] = field(default_factory=dict)  # mutant -> status
    diffs: dict[str, str] = field(default_factory=dict)  # mutant -> diff (misses only)
    equivalent: dict[str, str] = field(default_factory=dict)  # mutant -> why

    def count(self, *names: str) -> int:
        return sum(1 for m, s in self.statuses.items() if s in names and m not in self.equivalent)

    @property
    def scored(self) -> int:
        return len(self.statuses) - len(self.equivalent) - self.count("skipped")

    @property
    def killed(self) -> int:
        return self.count(*KILLED)

    @property
    def ratio(self) -> float:
        return self.killed / self.scored if self.scored else 1.0

    def misses(self) -> list[str]:
        return [m for m, s in self.statuses.items() if s in MISSED and m not in self.equivalent]


def load_modules() -> dict[str, Module]:
    table = tomllib.loads((HERE / "modules.toml").read_text())
    return {name: Module(name, **spec) for name, spec in table.items()}


def load_equivalent() -> list[dict]:
    return tomllib.loads((HERE / "equivalent.toml").read_text()).get("equivalent", [])


def copy_tree(dest: Path, source: str) -> None:
    """The working tree as it is now (tracked and untracked files git does not ignore), or a commit's tree."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    if source != "worktree":
        archive = subprocess.run(["git", "archive", source], cwd=ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
        return
    listing = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                             capture_output=True).stdout.split(b"\0")
    for raw in listing:
        if not raw:
            continue
        rel = raw.decode()
        src = ROOT / rel
        if not src.is_file():  # deleted in the working tree, or a submodule
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)


def configure(work: Module, dest: Path, children: int) -> list[str]:
    """Append mutmut's configuration to the copy's pyproject.toml; the test paths that exist."""
    tests = [t for t in work.tests if (dest / t.partition("::")[0]).exists()]  # a file, or file::test
    missing = sorted(set(work.tests) - set(tests))
    if missing:
        print(f"mutation: {work.name}: no such test file, left out: {', '.join(missing)}", file=sys.stderr)
    conf = {
        "source_paths": ["service", "rbn"],
        "only_mutate": [work.file],
        "also_copy": ALSO_COPY,
        "pytest_add_cli_args_test_selection": tests,
        # -x: the first failure kills the mutant; the suite's own per-test timeout stays on
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-x", "-q", "-W", "ignore::DeprecationWarning"],
        "process_isolation": work.isolation,
        "use_git_change_detection": False,
    }
    lines = ["", "[tool.mutmut]"] + [f"{key} = {json.dumps(value)}" for key, value in conf.items()]
    with open(dest / "pyproject.toml", "a") as f:
        f.write("\n".join(lines) + "\n")
    return tests


def reread_module(work: Module) -> Outcome:
    """The last run's results again (its copy in the scratch folder), with mutation/equivalent.toml as it is now."""
    previous = OUT / f"{work.name}.json"
    seconds = json.loads(previous.read_text())["seconds"] if previous.exists() else 0.0
    return read_outcome(work, WORK / work.name, seconds)


def run_module(work: Module, children: int, source: str) -> Outcome:
    dest = WORK / work.name
    copy_tree(dest, source)
    configure(work, dest, children)
    mutmut = Path(sys.executable).with_name("mutmut")
    log = OUT / f"{work.name}.log"
    started = time.monotonic()
    with open(log, "wb") as f:
        # One thread per library: each mutant's check is forked from mutmut's warm process, and a fork after
        # torch or ONNX Runtime started their thread pools can hang the child.
        env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
        done = subprocess.run([str(mutmut), "run", "--max-children", str(children)], cwd=dest, stdout=f,
                              stderr=subprocess.STDOUT, env=env)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        print(f"mutation: {work.name}: mutmut exited {done.returncode}; see {log}", file=sys.stderr)
    return read_outcome(work, dest, seconds)


def read_outcome(work: Module, dest: Path, seconds: float) -> Outcome:
    """Statuses from mutmut's files in the copy; diffs of every miss; equivalents matched by their diff."""
    script = (
        "import json, sys\n"
        "from mutmut.stats import status_by_exit_code\n"
        "from mutmut.mutation.diff_apply import get_diff_for_mutant\n"
        "meta = json.load(open(sys.argv[1]))\n"
        "out = {}\n"
        "for name, code in meta['exit_code_by_key'].items():\n"
        "    status = status_by_exit_code[code]\n"
        "    diff = get_diff_for_mutant(name, path=sys.argv[2]) if status not in "
        + repr(sorted(KILLED)) + " else ''\n"
        "    out[name] = [status, diff]\n"
        "print(json.dumps(out))\n"
    )
    meta = dest / "mutants" / (work.file + ".meta")
    outcome = Outcome(work.name, work.file, seconds)
    if not meta.exists():
        return outcome
    done = subprocess.run([sys.executable, "-c", script, str(meta), work.file], cwd=dest, capture_output=True,
                          text=True, check=True)
    equivalents = [e for e in load_equivalent() if e["file"] == work.file]
    for name, (status, diff) in json.loads(done.stdout).items():
        outcome.statuses[name] = status
        if diff:
            outcome.diffs[name] = diff
            why = match_equivalent(name, diff, equivalents)
            if why is not None:
                outcome.equivalent[name] = why
    return outcome


def changed_lines(diff: str) -> tuple[list[str], list[str]]:
    before = [line[1:].strip() for line in diff.splitlines() if line.startswith("-") and not line.startswith("---")]
    after = [line[1:].strip() for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++")]
    return before, after


def match_equivalent(name: str, diff: str, equivalents: list[dict]) -> str | None:
    """The reason of the entry whose function and changed lines are this mutant's, else None."""
    before, after = changed_lines(diff)
    function = name.rpartition(".")[2].rsplit("__mutmut_", 1)[0].replace("\u01c1", ".")  # xǁAccessǁallows -> x.Access.allows
    for entry in equivalents:
        if function.endswith(entry["function"]) and [entry["before"]] == before and [entry["after"]] == after:
            return entry["why"]
    return None


def write_report(outcome: Outcome) -> None:
    misses = outcome.misses()
    lines = [f"# Mutation run: {outcome.name} ({outcome.file})", "",
             f"{len(outcome.statuses)} mutants in {outcome.seconds:.0f} s; killed {outcome.killed} of {outcome.scored} "
             f"scored ({100 * outcome.ratio:.1f}%); {len(outcome.equivalent)} equivalent excluded; "
             f"{len(misses)} missed.", ""]
    by_status: dict[str, int] = {}
    for status in outcome.statuses.values():
        by_status[status] = by_status.get(status, 0) + 1
    lines += [f"- {status}: {n}" for status, n in sorted(by_status.items())] + [""]
    if misses:
        lines += ["## Missed (survived, no tests, suspicious)", ""]
        for name in misses:
            lines += [f"### {name}: {outcome.statuses[name]}", "", "```diff", outcome.diffs.get(name, ""), "```", ""]
    if outcome.equivalent:
        lines += ["## Equivalent (excluded)", ""]
        for name, why in outcome.equivalent.items():
            lines += [f"### {name}", "", why, "", "```diff", outcome.diffs[name], "```", ""]
    (OUT / f"{outcome.name}.md").write_text("\n".join(lines))
    (OUT / f"{outcome.name}.json").write_text(json.dumps({
        "module": outcome.name, "file": outcome.file, "seconds": round(outcome.seconds, 1),
        "mutants": len(outcome.statuses), "equivalent": len(outcome.equivalent), "scored": outcome.scored,
        "killed": outcome.killed, "ratio": round(outcome.ratio, 4), "missed": misses,
    }, indent=2))


def write_summary() -> tuple[int, int]:
    """summary.md over every module's latest report in mutation/out/; (killed, scored) in total."""
    rows, killed, scored = [], 0, 0
    for path in sorted(OUT.glob("*.json")):
        r = json.loads(path.read_text())
        rows.append(f"| {r['module']} | `{r['file']}` | {r['mutants']} | {r['equivalent']} | {r['killed']}/{r['scored']} "
                    f"| {100 * r['ratio']:.1f}% | {len(r['missed'])} | {r['seconds']:.0f} s |")
        killed, scored = killed + r["killed"], scored + r["scored"]
    total = f"| **all** | | | | {killed}/{scored} | **{100 * killed / max(scored, 1):.1f}%** | | |"
    head = ["| module | file | mutants | equivalent | killed/scored | ratio | missed | time |",
            "|---|---|---|---|---|---|---|---|"]
    (OUT / "summary.md").write_text("\n".join(head + rows + [total]) + "\n")
    return killed, scored


def main(argv: list[str] | None = None) -> int:
    modules = load_modules()
    parser = argparse.ArgumentParser(prog="mutation/run.sh", description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help=f"default: all ({', '.join(modules)})")
    parser.add_argument("--list", action="store_true", help="print the modules and their tests")
    parser.add_argument("--children", type=int, default=int(os.environ.get("RBN_MUTATION_CHILDREN", "2")),
                        help="mutants checked at once (default 2, or RBN_MUTATION_CHILDREN)")
    parser.add_argument("--source", default="worktree",
                        help="what to test: the working tree as it is (default) or a commit (HEAD, a hash)")
    parser.add_argument("--reread", action="store_true",
                        help="no new run: report the last run's results again (after editing equivalent.toml)")
    parser.add_argument("--min-ratio", type=float, default=0.0,
                        help="exit 1 when a module's kill ratio is below this (e.g. 0.9)")
    args = parser.parse_args(argv)
    if args.list:
        for m in modules.values():
            print(f"{m.name:13} {m.file:30} {' '.join(m.tests)}")
        return 0
    unknown = [n for n in args.modules if n not in modules]
    if unknown:
        parser.error(f"unknown module(s) {', '.join(unknown)}; valid: {', '.join(modules)}")
    OUT.mkdir(exist_ok=True)
    low = []
    for name in args.modules or list(modules):
        if args.reread:
            outcome = reread_module(modules[name])
        else:
            outcome = run_module(modules[name], args.children, args.source)
        write_report(outcome)
        print(f"{name:13} {len(outcome.statuses):4} mutants  {outcome.killed:4}/{outcome.scored:<4} killed "
              f"{100 * outcome.ratio:5.1f}%  {len(outcome.equivalent):3} equivalent  {len(outcome.misses()):3} missed  "
              f"{outcome.seconds:5.0f} s  -> {OUT / (name + '.md')}", flush=True)
        if outcome.ratio < args.min_ratio or not outcome.statuses:
            low.append(name)
    killed, scored = write_summary()
    print(f"all modules in mutation/out: {killed}/{scored} killed ({100 * killed / max(scored, 1):.1f}%) "
          f"-> {OUT / 'summary.md'}")
    return 1 if low else 0


if __name__ == "__main__":
    sys.exit(main())
