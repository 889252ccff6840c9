"""The README's Quick start and its reset, run as written, on a copy of the repository's
``sample_drop/`` (issue 10, items 1-3). The repository's own ``sample_drop/`` is never
touched: the tests must pass whatever state the Quick start left it in.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from daemon_helpers import ROOT, Daemon, listing, run_cli, wait_for

README = (ROOT / "README.md").read_text()
SAMPLE = ["01-new-subscribers.persons", "02-by-person-id.persons", "03-header-block.persons",
          "04-contacts.csv"]
TIMEOUT = 120.0  # two embedded PostgreSQL set-ups on a loaded machine


def sh_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, flags=re.S)


def quickstart() -> tuple[dict[str, str], list[list[str]]]:
    """Command 1 of the README without its install steps: exports and ingestd commands."""
    start = README.index("## Quick start")
    command = sh_blocks(README[start:])[0].strip()
    exports: dict[str, str] = {}
    commands: list[list[str]] = []
    for part in command.split(" && "):
        words = shlex.split(part)
        if words[0] == "export":
            key, _, value = words[1].partition("=")
            exports[key] = value
        elif words[0] == ".venv/bin/ingestd":
            commands.append(words[1:])
        else:
            assert words[:2] in (["python3", "-m"], [".venv/bin/pip", "install"]), part
    assert commands[-1] == ["run"], command
    return exports, commands


def reset_command() -> str:
    at = README.index("To run the sample again")
    return sh_blocks(README[at:])[0].strip()


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A git repository holding the committed sample_drop/ and example fields, as a clone.

    Taken from git, not from the working tree: the Quick start may have moved the
    repository's sample files out of inbox/."""
    repo = tmp_path / "clone"
    repo.mkdir()
    archive = subprocess.run(["git", "archive", "HEAD", "sample_drop", ".gitignore",
                              "config/fields.example.toml"], cwd=ROOT, capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(repo)], input=archive, check=True)
    for args in (["init", "-q"], ["add", "-A"],
                 ["-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "s"]):
        subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)
    return repo


def run_quickstart(repo: Path, daemons: list[Daemon]) -> dict[str, dict[str, Any]]:
    """Command 1 until every sample file is in done/; then stop the daemon as Ctrl-C does."""
    exports, commands = quickstart()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INGESTD_")}
    env.update(exports)
    # What ingestd would default to in the clone, made explicit for the helper's log file.
    env.update(INGESTD_STATE_DIR=str(repo / ".state"), INGESTD_LOG_FORMAT="json",
               PYTHONUNBUFFERED="1")
    for args in commands[:-1]:
        r = run_cli(args, env, timeout=TIMEOUT, cwd=repo)
        assert r.returncode == 0, (args, r.stdout, r.stderr)
    d = Daemon(env, cwd=repo)
    daemons.append(d)
    d.start(timeout=TIMEOUT)
    done = repo / exports["INGESTD_LANDING_ROOT"] / "acme" / "done"
    wait_for(lambda: all((done / f"{n}.result.json").exists() for n in SAMPLE), TIMEOUT,
             what="the sample in done/", context=d.tail)
    assert d.stop(signal.SIGINT, timeout=TIMEOUT) == 0, d.tail()
    return {n: json.loads((done / f"{n}.result.json").read_text()) for n in SAMPLE}


def counts(results: dict[str, dict[str, Any]]) -> dict[str, tuple[Any, ...]]:
    return {n: (r["status"], r["rows"], r["accepted"], r["rejected"], r.get("duplicate_of"))
            for n, r in results.items()}


def test_the_documented_reset_runs_the_sample_again(clone: Path,
                                                    daemons: list[Daemon]) -> None:
    first = run_quickstart(clone, daemons)
    assert all(r["accepted"] > 0 and "duplicate_of" not in r for r in first.values()), first
    r = subprocess.run(["bash", "-c", reset_command()], cwd=clone, capture_output=True,
                       text=True, timeout=TIMEOUT, check=False)
    assert r.returncode == 0, r.stderr
    assert listing(clone / "sample_drop" / "acme") == ["inbox"]
    assert listing(clone / "sample_drop" / "acme" / "inbox") == SAMPLE

    second = run_quickstart(clone, daemons)
    assert counts(second) == counts(first)
    assert listing(clone / "sample_drop" / "acme" / "failed") == []


def test_nothing_in_the_repository_points_outside_it() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    outside = re.compile(r"/work/|\.\./shared|shared/(FORMATS|DESIGN)")
    hits = [f"{name}: {m.group(0)}" for name in tracked
            if (ROOT / name).is_file() and name != "tests/test_quickstart.py"
            for m in [outside.search((ROOT / name).read_text(errors="replace"))] if m]
    assert hits == []


def test_readme_links_resolve_inside_the_repository() -> None:
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", README):
        if "://" not in target:
            assert (ROOT / target).exists(), target

