"""The columnar library (pyarrow, a big import) is loaded only by the paths that need it:
`ingestd status` runs without it; applying a Person Import loads it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from daemon_helpers import base_env

from ingestd.db.companies import Company

# Runs the real CLI in this process's interpreter, then says which modules it loaded.
_PROBE = """
import sys
from ingestd.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print("exit", code, "pyarrow", "pyarrow" in sys.modules, file=sys.stderr)
"""


def _run(args: list[str], db_url: str, tmp_path: Path) -> str:
    (tmp_path / "landing").mkdir(exist_ok=True)
    env = base_env(db_url, tmp_path / "landing", tmp_path / "state")
    done = subprocess.run([sys.executable, "-c", _PROBE, *args], env=env,
                          capture_output=True, text=True, timeout=120)
    return done.stderr.strip().splitlines()[-1]


def test_ingestd_status_does_not_import_pyarrow(db_url: str, tmp_path: Path) -> None:
    assert _run(["status"], db_url, tmp_path) == "exit 0 pyarrow False"


def test_the_persons_applier_does(db_url: str, company: Company, tmp_path: Path) -> None:
    """The probe can see pyarrow when a path loads it (so the check above means something)."""
    dropped = tmp_path / "people.persons"
    dropped.write_text("external_person_id\nx1\n")
    line = _run(["check", str(dropped), "--company", company.id], db_url, tmp_path)
    assert line.endswith("pyarrow True")
