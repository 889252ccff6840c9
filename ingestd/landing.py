"""The landing folder's layout and naming rules (docs/design.md "Landing layout").

LANDING_ROOT/<company>/inbox/NAME is a drop; .processing/<claim>/NAME while it is
applied; done/ or failed/ afterwards; any other file is misplaced. Nothing here opens
a file's content.
"""

from __future__ import annotations

import os
import stat
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ingestd.readiness import Settled
from ingestd.work import Drop, Recover

INBOX = "inbox"
PROCESSING = ".processing"
DONE = "done"
FAILED = "failed"

IN_FLIGHT_SUFFIXES = (".part", ".filepart", ".tmp", ".partial", "~")
HEADERS_SUFFIX = ".headers"  # NAME.csv.headers travels with NAME.csv
MARKER_SUFFIX = ".done"  # NAME.done in marker mode

# The result files ingestd writes beside a finished file (companions travel with it):
# the one list of them, for the writers, the name limit, requeue and prune.
RESULT_JSON = ".result.json"
ERRORS_CSV = ".errors.csv"
ACCEPTED_CSV = ".accepted.csv"
REJECTED_CSV = ".rejected.csv"
GLOBAL_CSV = ".global.csv"
RETRY_PERSONS = ".retry.persons"
RESULT_SUFFIXES = (RESULT_JSON, ERRORS_CSV, ACCEPTED_CSV, REJECTED_CSV, GLOBAL_CSV,
                   RETRY_PERSONS)


def is_in_flight(name: str) -> bool:
    """Names an upload client uses while writing; never touched."""
    return name.startswith(".") or name.endswith(IN_FLIGHT_SUFFIXES)


def is_companion(name: str, marker_mode: bool = False) -> bool:
    """Companions travel with their file and are never drops themselves. NAME.done is
    one only in marker mode; otherwise it is a drop like any other (and unsupported)."""
    return name.endswith(".csv" + HEADERS_SUFFIX) or (
        marker_mode and name.endswith(MARKER_SUFFIX))


def companions(directory: Path, name: str, marker_mode: bool = False) -> list[Path]:
    """Existing companion files of ``name`` in ``directory``."""
    found = []
    suffixes = (HEADERS_SUFFIX, MARKER_SUFFIX) if marker_mode else (HEADERS_SUFFIX,)
    for suffix in suffixes if name_problem(name) is None else ():
        p = directory / (name + suffix)
        if os.path.lexists(p):
            found.append(p)
    return found


# The longest name a drop may have so that every sidecar name still fits in NAME_MAX.
LONGEST_SIDECAR_SUFFIX = max(len(s) for s in (
    *RESULT_SUFFIXES, HEADERS_SUFFIX, MARKER_SUFFIX)) + len("~99")
MAX_NAME_BYTES = 255 - LONGEST_SIDECAR_SUFFIX


def display_name(name: str) -> str:
    """The name as text: bytes that are not UTF-8 (SFTP names are bytes) shown as U+FFFD."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def name_problem(name: str) -> str | None:
    """Why a drop's name cannot be kept beside its results, or None."""
    if display_name(name) != name:
        return "the file name is not valid UTF-8"
    size = len(name.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        return (f"the file name is {size} bytes long; at most {MAX_NAME_BYTES} fit "
                "beside its result files")
    return None


def company_of(inbox_path: Path, landing_root: Path) -> str | None:
    """The company whose inbox holds this path, or None if it is not in an inbox."""
    try:
        rel = inbox_path.absolute().relative_to(landing_root.absolute())
    except ValueError:
        return None
    parts = rel.parts
    return parts[0] if len(parts) == 3 and parts[1] == INBOX else None


def inbox_company(path: Path, root: Path) -> str | None:
    """The company whose inbox directly holds ``path`` (both absolute, ``root`` the
    landing root), or None: elsewhere, or in a hidden folder, which is no company."""
    inbox = path.parent
    company = inbox.parent
    if inbox.name != INBOX or company.parent != root or company.name.startswith("."):
        return None
    return company.name


def watched_company(folder: Path, root: Path) -> Path | None:
    """The company folder whose watches a change to ``folder`` (absolute) concerns: that
    of the company folder itself or of its inbox; None for any other folder."""
    if folder.parent == root:
        company = folder
    elif folder.name == INBOX and folder.parent.parent == root:
        company = folder.parent
    else:
        return None
    return None if company.name.startswith(".") else company


def drop_company(path: Path) -> str:
    """The company of a drop at ``path``, a file in a company's inbox."""
    return path.parent.parent.name


def drop(path: Path, mtime_ns: int, settled: Settled | None = None) -> Drop:
    """The drop at ``path``, a file in a company's inbox (``settled``: as judged ready)."""
    return Drop(drop_company(path), path, mtime_ns, settled)


def recover(company: str) -> Recover:
    return Recover(company)


def drop_dirs(work: Drop) -> CompanyDirs:
    """The folders of the company whose inbox holds the drop."""
    return CompanyDirs(work.path.parent.parent)


def company_dirs_of(root: Path, company: str) -> CompanyDirs:
    return CompanyDirs(root / company)


def leftover_claims(root: Path) -> list[Recover]:
    """A recovery for every company with a claim left in .processing/ (claims are
    folders; a dotfile there is the daemon's own note, ingestd/held.py)."""
    return [recover(dirs.company) for dirs in company_dirs(root)
            if dirs.processing.is_dir() and any(
                not p.name.startswith(".") for p in dirs.processing.iterdir())]


def is_regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def new_claim_id(request_id: str | None = None) -> str:
    """A claim folder's name. Time first, so claims sort by arrival (recovery applies
    leftovers in that order, and an operator lists .processing/ by age). An HTTP
    request's claim names its request, so that whoever applies it (the request, or a
    recovery after a crash) can say so in result.json."""
    if request_id is not None:
        return f"{time.time_ns():x}{HTTP_CLAIM}{request_id}"
    return f"{time.time_ns():x}-{uuid.uuid4().hex[:8]}"


HTTP_CLAIM = "-http-"


def request_of(claim_id: str) -> str | None:
    """The HTTP request id a claim was made for, or None for a drop's claim."""
    _, sep, request_id = claim_id.partition(HTTP_CLAIM)
    return request_id if sep else None


def spool_path(dirs: CompanyDirs, claim_id: str, extension: str) -> Path:
    """Where an HTTP request's body is written before it becomes a claim: a plain file in
    .processing/ (recovery only looks at claim folders, so a half-written body is never
    taken for a claim), named by its claim-to-be."""
    return dirs.processing / f".spool-{claim_id}{extension}"


def spool_dirs(spool: Path) -> CompanyDirs:
    """The folders of the company a spooled body (``spool_path``) is for."""
    return CompanyDirs(spool.parent.parent)


def company_dirs(root: Path) -> list[CompanyDirs]:
    """Every company folder under the landing root (no dot-folders, no symlinks)."""
    if not root.is_dir():
        return []
    return [CompanyDirs(p) for p in sorted(root.iterdir())
            if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")]


@dataclass(frozen=True)
class CompanyDirs:
    root: Path

    @property
    def company(self) -> str:
        return self.root.name

    @property
    def inbox(self) -> Path:
        return self.root / INBOX

    @property
    def processing(self) -> Path:
        return self.root / PROCESSING

    @property
    def done(self) -> Path:
        return self.root / DONE

    @property
    def failed(self) -> Path:
        return self.root / FAILED

    def create(self) -> None:
        """The company's folder with all of its own (``ingestd company add``)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.inbox.mkdir(exist_ok=True)
        self.ensure()

    def ensure(self) -> None:
        """Create our folders; .processing is the daemon's alone (0700)."""
        self.processing.mkdir(mode=0o700, exist_ok=True)
        for d in (self.done, self.failed):
            d.mkdir(exist_ok=True)


def sidecar_names(name: str) -> list[str]:
    return [name + s for s in (*RESULT_SUFFIXES, HEADERS_SUFFIX, MARKER_SUFFIX)]


def unique_name(directory: Path, name: str) -> str:
    """``name`` if neither it nor its sidecars exist in ``directory``, else ``stem~N.ext``.

    The suffix goes before the extension so the file keeps its type; ``~N`` cannot
    clash with a partner's in-flight names because those end in ``~``.
    """
    def free(candidate: str) -> bool:
        return not any(os.path.lexists(directory / n)
                       for n in [candidate, *sidecar_names(candidate)])

    if name_problem(name) is not None:
        # Keep what can be kept: the start of the name, made valid, and the extension.
        p = Path(name)
        ext = display_name(p.suffix)[:16] if p.suffix else ""
        stem = display_name(p.stem if p.suffix else name).encode()[:150].decode(
            "utf-8", "ignore")
        name = f"{stem}{ext}"
    if free(name):
        return name
    p = Path(name)
    stem, ext = (p.stem, p.suffix) if p.suffix else (name, "")
    n = 2
    while not free(f"{stem}~{n}{ext}"):
        n += 1
    return f"{stem}~{n}{ext}"


# -- misplaced files --------------------------------------------------------------------
# A file the watcher never looks at (anywhere but a company's inbox/) would sit there
# forever unnoticed; these are found by a scan of the landing root and reported.

OURS = (INBOX, PROCESSING, DONE, FAILED)


@dataclass(frozen=True)
class Misplaced:
    path: Path
    should_be: str  # where it belongs, in words an operator can act on
    folder: str | None = None  # the folder of the landing root it is in (None: the root)


def _files_under(directory: Path) -> list[Path]:
    """Regular files below ``directory`` (no symlinks followed), in-flight names left out."""
    found = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [Path(dirpath) / n for n in filenames if not is_in_flight(n)]
    return [p for p in found if is_regular(p)]


def find_misplaced(root: Path, companies: set[str] | None = None) -> list[Misplaced]:
    """Files under the landing root that no inbox holds: in the root itself, in a company
    folder outside inbox/ (with or without one), in a folder that is no company.
    ``companies``: the set-up companies, when known, to tell a stray folder apart."""
    if not root.is_dir():
        return []
    root = root.absolute()
    found: list[Misplaced] = []
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or is_in_flight(entry.name):
            continue  # our marker, an upload in flight, a hidden folder
        if is_regular(entry):
            found.append(Misplaced(entry, f"{root}/COMPANY/{INBOX}/{entry.name} (the landing "
                                          "root itself is no company's)"))
            continue
        if not entry.is_dir() or entry.is_symlink():
            continue
        stray = companies is not None and entry.name not in companies
        try:
            subs = sorted(entry.iterdir())
        except OSError:
            continue  # unreadable for us: nothing of it could be applied either way
        for sub in subs:
            if sub.name in OURS or is_in_flight(sub.name):
                continue
            if is_regular(sub):
                paths = [sub]
            elif sub.is_dir() and not sub.is_symlink():
                paths = _files_under(sub)
            else:
                continue
            for path in paths:
                target = f"{entry / INBOX / path.name}"
                if stray:
                    target = (f"the {INBOX}/ of a set-up company ({entry.name} is none: "
                              f"`ingestd company add {entry.name}`, then {target})")
                found.append(Misplaced(path, target, entry.name))
    return found


class MisplacedLog:
    """Remembers what was reported, so that each misplaced file is reported once (and
    again only if it goes away and comes back)."""

    def __init__(self) -> None:
        self._seen: set[Path] = set()

    def new(self, found: list[Misplaced]) -> list[Misplaced]:
        fresh = [m for m in found if m.path not in self._seen]
        self._seen = {m.path for m in found}
        return fresh
