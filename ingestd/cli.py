"""The `ingestd` command. Each subcommand is a thin shell over the modules that do the work."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
import structlog
from psycopg_pool import PoolTimeout

from ingestd import landing, logs
from ingestd.db import identity
from ingestd.db.companies import CompanyError, validate_company_id
from ingestd.db.database import Database, refusal, unavailable_reason, waiting_helps
from ingestd.errors import DatabaseUnavailable, EmbeddedError, IngestdError
from ingestd.persons.custom_fields import FieldDefinition
from ingestd.results import FileResult
from ingestd.settings import (
    Settings,
    SettingsError,
    check_for_run,
    check_landing_root,
    check_region,
    load_settings,
)

log = structlog.get_logger("ingestd.cli")


def _settings(args: argparse.Namespace) -> Settings:
    if getattr(args, "config", None):
        os.environ["INGESTD_CONFIG"] = args.config  # as if set in the environment
    overrides: dict[str, Any] = {}
    if getattr(args, "landing_root", None):
        overrides["landing_root"] = Path(args.landing_root)
    return load_settings(**overrides)


def _db(settings: Settings, *, bind: bool = False, pool_size: int = 2) -> Database:
    """The database, migrated, after checking the landing root belongs to it (``bind``:
    and binding a landing root that belongs to none yet)."""
    db = Database(settings, pool_size=pool_size)
    try:
        with db.connect() as conn:  # before migrating: another database stays untouched
            try:
                identity.bind(conn, settings.landing_root, create=bind)
            except identity.Unbindable:
                pass  # a root only the administrator may write to: the daemon says so
        db.upgrade()
    except BaseException:
        db.close()
        raise
    return db


# -- subcommands ------------------------------------------------------------------------

def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from ingestd import malloc

    # Before any thread starts: arenas are made per thread, and the limit only applies
    # to arenas created after it (ingestd/malloc.py).
    malloc.limit_arenas(settings.malloc_arena_max)
    from ingestd.daemon import run

    return run(settings)


def cmd_db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    with Database(settings, pool_size=1, create=True) as db:
        applied = db.upgrade()
    print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else ""))
    return 0


def cmd_company_add(args: argparse.Namespace, settings: Settings) -> int:
    from ingestd.db.companies import add_company
    from ingestd.persons.field_store import list_fields

    if args.region is not None:
        try:
            args.region = check_region(args.region)
        except ValueError as exc:
            raise _UsageError(f"--region: {exc}") from None
    with _db(settings, bind=True) as db, db.connect() as conn:
        try:
            created = add_company(conn, args.id, args.region or settings.default_region)
        except CompanyError as exc:
            print(f"ingestd: {exc}", file=sys.stderr)
            return 2
        fields = list_fields(conn, args.id)
    landing.company_dirs_of(settings.landing_root, args.id).create()
    print(f"company {args.id} {'added' if created else 'already exists'}")
    return _write_fields_file(settings, args.id, fields)


def cmd_company_list(args: argparse.Namespace, settings: Settings) -> int:
    from ingestd.db.companies import list_companies

    with _db(settings) as db, db.connect() as conn:
        for c in list_companies(conn):
            print(f"{c.id}\tregion={c.default_region}")
    return 0


def cmd_fields_load(args: argparse.Namespace, settings: Settings) -> int:
    from ingestd.persons.custom_fields import load_definitions
    from ingestd.persons.field_store import replace_fields

    try:
        definitions = load_definitions(Path(args.file))
    except ValueError as exc:  # its message names the file
        print(f"ingestd: {exc}", file=sys.stderr)
        return 2
    with _db(settings) as db:
        _require_company(db, args.company)
        with db.connect() as conn:
            replace_fields(conn, args.company, definitions)
            conn.commit()
    print(f"loaded {len(definitions)} field(s) for {args.company}")
    return _write_fields_file(settings, args.company, definitions)


def _write_fields_file(settings: Settings, company: str,
                       definitions: Sequence[FieldDefinition]) -> int:
    """The partner's copy of the company's fields; exit 1 (one line) if it cannot be written."""
    from ingestd.persons import fields_file

    dirs = landing.CompanyDirs(settings.landing_root / company)
    if not dirs.done.is_dir():
        # No folders here yet (another landing root?): `company add` writes it with them.
        print(f"note: no {dirs.done}: the partner's copy of the fields is written by "
              f"`ingestd company add {company}`", file=sys.stderr)
        return 0
    try:
        path = fields_file.write(dirs, definitions)
    except OSError as exc:
        print(f"ingestd: the partner's copy of the fields cannot be written in {dirs.done}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"the partner reads them in {path}")
    return 0


def cmd_fields_list(args: argparse.Namespace, settings: Settings) -> int:
    from ingestd.persons.field_store import list_fields

    with _db(settings) as db, db.connect() as conn:
        _require_company(db, args.company)
        for d in list_fields(conn, args.company):
            extra = f" charset={d.charset}" if d.type == "string" else ""
            if d.options:
                extra += " options=" + ",".join(d.options)
            print(f"{d.name}\t{d.type}{extra}")
    return 0


def cmd_token_add(args: argparse.Namespace, settings: Settings) -> int:
    from ingestd.db.companies import get_company
    from ingestd.http import tokens

    try:
        scopes = tokens.parse_scopes(args.scope)
    except tokens.TokenError as exc:
        raise _UsageError(str(exc)) from None
    with _db(settings) as db, db.connect() as conn:
        if get_company(conn, args.company) is None:
            print(f"ingestd: company {args.company!r} is not set up", file=sys.stderr)
            return 2
        token_id, token = tokens.add(conn, args.company, args.name, scopes)
    # The token itself goes to stdout alone, once: it is kept only as a hash.
    print(f"token {token_id} for {args.company} (scopes {','.join(scopes)}); "
          "store it now, it is not shown again:", file=sys.stderr)
    print(token)
    return 0


def cmd_token_list(args: argparse.Namespace, settings: Settings) -> int:
    from ingestd.http import tokens

    with _db(settings) as db, db.connect() as conn:
        for t in tokens.list_tokens(conn, args.company):
            state = f"revoked {t.revoked_at.isoformat()}" if t.revoked_at else "active"
            print(f"{t.id}\t{t.company}\t{t.name}\t{','.join(t.scopes)}\t"
                  f"{t.created_at.isoformat()}\t{state}")
    return 0


def cmd_token_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from ingestd.http import tokens

    with _db(settings) as db, db.connect() as conn:
        if not tokens.revoke(conn, args.id):
            print(f"ingestd: no active token {args.id}", file=sys.stderr)
            return 1
    print(f"token {args.id} revoked")
    return 0


class _UsageError(IngestdError):
    """A bad argument: printed as one line, exit 2."""


def _target(args: argparse.Namespace, settings: Settings) -> tuple[Path, str]:
    """The file named on the command line and the (validated) company it is for."""
    path = Path(args.path)
    if not os.path.lexists(path):
        raise _UsageError(f"{path}: no such file")
    company = args.company or landing.company_of(path, settings.landing_root)
    if company is None:
        raise _UsageError(f"{path} is not in a company inbox under {settings.landing_root};"
                          " name the company with --company")
    try:
        validate_company_id(company)
    except CompanyError as exc:
        raise _UsageError(str(exc)) from None
    return path, company


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from ingestd.ingest import NotImportable, check_importable, ingest

    path, company = _target(args, settings)
    try:
        check_importable(path, landing.company_dirs_of(settings.landing_root, company))
    except NotImportable as exc:
        print(f"failed: {exc}", file=sys.stderr)
        return 1
    _second_interrupt_exits()
    with _db(settings, pool_size=3) as db:
        _require_company(db, company)
        outcome = ingest(settings, db, path, company, quiet=_QUIET,
                         terminal=sys.stderr if sys.stderr.isatty() else None)
    if outcome.status == "gone":
        print(f"ingestd: {path} was taken by someone else", file=sys.stderr)
        return 1
    if outcome.result is None:  # changed while being read: back in the inbox
        print(f"ingestd: {path} changed while being read; try again once it settles",
              file=sys.stderr)
        return 1
    _print_result(outcome.result, outcome.final_path)
    return 0 if outcome.status == "done" else 1


def _second_interrupt_exits() -> None:
    """First Ctrl-C: KeyboardInterrupt, unwound cleanly (which may wait for carrier
    lookups in flight); a second one exits at once. os.write, not print: a signal handler
    must not take the lock of the stream the interrupted code may be writing."""
    interrupted = False
    recovered = (b"the file in hand rolls back and is recovered at the next start"
                 b" (ingestd run, or ingest for the same company)")

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        nonlocal interrupted
        if interrupted:
            os.write(2, b"ingestd: second interrupt: stopping now; " + recovered + b"\n")
            os._exit(130)
        interrupted = True
        os.write(2, b"ingestd: interrupted: stopping; Ctrl-C again to stop at once; "
                    + recovered + b"\n")
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)


def _require_company(db: Database, company: str) -> None:
    from ingestd.db.companies import get_company

    with db.connect() as conn:
        if get_company(conn, company) is None:
            raise _UsageError(f"company {company!r} is not set up "
                              f"(ingestd company add {company})")


def _print_result(result: FileResult, final: Path | None, *, dry_run: bool = False) -> None:
    from ingestd.report import describe

    for line in describe(result, final, dry_run=dry_run):
        print(line)


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    from ingestd.lifecycle import Pipeline
    from ingestd.persons.carrier import make_carrier

    path, company = _target(args, settings)
    with _db(settings) as db:
        _require_company(db, company)
        result = Pipeline(settings, db, make_carrier(settings)).check(path, company)
    _print_result(result, None, dry_run=True)
    return 0 if result.status == "done" and not result.rejected else 1


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    from ingestd.status import collect, render

    check_landing_root(settings)
    with _db(settings) as db, db.connect() as conn:
        report = collect(conn, settings, database=db.target)
    if args.json:
        print(json.dumps(report, indent=2, default=_json_default))
    else:
        print(render(report))
    return 0


def cmd_requeue(args: argparse.Namespace, settings: Settings) -> int:
    from ingestd.requeue import RequeueError, requeue

    failed = 0
    with _db(settings) as db, db.connect() as conn:
        for arg in args.paths:
            try:
                done = requeue(conn, settings, Path(arg))
            except RequeueError as exc:
                print(f"ingestd: {exc}", file=sys.stderr)
                failed += 1
                continue
            print(f"requeued: {arg} -> {done.target}")
    return 1 if failed else 0


def cmd_prune(args: argparse.Namespace, settings: Settings) -> int:
    from ingestd.retention import days_to_keep, prune

    days = days_to_keep(settings, args.older_than)
    if days is None:
        raise _UsageError("prune: give --older-than DAYS, or set retention_days")
    with _db(settings) as db, db.connect() as conn:
        report = prune(conn, settings, days, dry_run=args.dry_run)
    files = [p for c in report for p in c.files]
    if args.dry_run:
        for p in (p for c in report for p in c.paths):
            print(f"would delete: {p}")
    verb = "would prune" if args.dry_run else "pruned"
    print(f"{verb} {len(files)} file(s), {sum(c.bytes for c in report)} bytes "
          f"(finished {days} or more days ago)")
    return 0


def _days(text: str) -> int:
    try:
        days = int(text)
    except ValueError:
        days = -1
    if days < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of days (0 or more)")
    return days


def _json_default(o: object) -> str:
    return o.isoformat() if isinstance(o, datetime) else str(o)


# -- parser -----------------------------------------------------------------------------

Handler = Callable[[argparse.Namespace, Settings], int]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ingestd",
        description="Ingest partner file drops into PostgreSQL, exactly once. Settings come "
                    "from INGESTD_* environment variables and the TOML file named by "
                    "INGESTD_CONFIG.")
    p.add_argument("--version", action="version",
                   version=f"ingestd {importlib.metadata.version('ingestd')}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # The options every command takes, in the same words.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--landing-root", metavar="DIR", help="override INGESTD_LANDING_ROOT")
    common.add_argument("--config", metavar="FILE",
                        help="the settings' TOML file (overrides INGESTD_CONFIG)")

    def add(name: str, fn: Handler, help: str, parent: Any = sub) -> argparse.ArgumentParser:
        parents = [] if fn is _usage else [common]  # a group only names its commands
        sp: argparse.ArgumentParser = parent.add_parser(name, help=help, description=help,
                                                        parents=parents)
        sp.set_defaults(fn=fn)
        return sp

    add("run", cmd_run, "run the daemon: watch the landing root and apply every drop")
    i = add("ingest", cmd_ingest, "put one file through the same pipeline now "
                                  "(exit 0 done, 1 failed)")
    i.add_argument("path")
    i.add_argument("--company", help="company id, when PATH is not in a company's inbox/")
    c = add("check", cmd_check, "validate a file against the database; write nothing, "
                                "print the errors")
    c.add_argument("path")
    c.add_argument("--company", help="company id, when PATH is not in a company's inbox/")
    s = add("status", cmd_status, "per company: backlog, files in hand with their progress, "
                                  "recent files and outcomes")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    rq = add("requeue", cmd_requeue, "put finished files from done/ or failed/ back into "
                                     "their inbox/ (applied again even if known; exit 1 "
                                     "if any could not be)")
    rq.add_argument("paths", nargs="+", metavar="PATH",
                    help="a file in <landing>/<company>/done/ or failed/ (not a sidecar)")
    pr = add("prune", cmd_prune, "delete finished files, their sidecars and stored row "
                                 "results; the ledger keeps their rows")
    pr.add_argument("--older-than", type=_days, metavar="DAYS",
                    help="finished at least DAYS days ago (0: every finished file; "
                         "default: retention_days)")
    pr.add_argument("--dry-run", action="store_true", help="list what would go, delete nothing")

    _setup_commands(add)
    return p


def _setup_commands(add: Callable[..., argparse.ArgumentParser]) -> None:
    """db, company, fields and token: the commands that set a landing root and database
    up."""
    db = add("db", _usage, "database maintenance")
    dbsub = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    add("upgrade", cmd_db_upgrade, "apply pending migrations", dbsub)

    co = add("company", _usage, "set up companies")
    cosub = co.add_subparsers(dest="company_command", required=True, metavar="COMMAND")
    ca = add("add", cmd_company_add, "add a company (its schema and landing folders)", cosub)
    ca.add_argument("id", help="company id: a-z, 0-9, _ ; starts with a letter")
    ca.add_argument("--region", help="default region for 10-digit mdns (default: setting)")
    add("list", cmd_company_list, "list companies", cosub)

    fi = add("fields", _usage, "custom field definitions")
    fisub = fi.add_subparsers(dest="fields_command", required=True, metavar="COMMAND")
    fl = add("load", cmd_fields_load, "replace a company's custom fields with a TOML file's",
             fisub)
    fl.add_argument("file")
    fl.add_argument("--company", required=True)
    fls = add("list", cmd_fields_list, "list a company's custom fields", fisub)
    fls.add_argument("--company", required=True)

    to = add("token", _usage, "HTTP bearer tokens (docs/http.md)")
    tosub = to.add_subparsers(dest="token_command", required=True, metavar="COMMAND")
    ta = add("add", cmd_token_add, "make a token for a company; printed once, kept hashed",
             tosub)
    ta.add_argument("company")
    ta.add_argument("--name", default="", help="what the token is for (shown by list)")
    ta.add_argument("--scope", default="contacts,persons,read",
                    help="comma-separated: contacts, persons, read (default: all three)")
    tl = add("list", cmd_token_list, "list tokens (never the tokens themselves)", tosub)
    tl.add_argument("company", nargs="?", help="only this company's")
    tr = add("revoke", cmd_token_revoke, "revoke a token by its id", tosub)
    tr.add_argument("id", type=int)


# A one-off command borrows the embedded server (or starts it for a moment): saying so
# on every run is noise on its stderr.
_QUIET = ("ingestd.db.embedded",)


def _usage(args: argparse.Namespace, settings: Settings) -> int:
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = _settings(args)
        if args.fn is cmd_run:
            check_for_run(settings)
    except SettingsError as exc:
        print(f"ingestd: {exc}", file=sys.stderr)
        return 2
    if args.fn is cmd_run:
        logs.configure(settings.log_level, settings.log_format)
    else:
        # One-off commands print their answer on stdout; keep their logs out of it.
        level = "info" if args.fn in (cmd_ingest, cmd_requeue, cmd_prune) else "warning"
        logs.configure(level, settings.log_format, stream=sys.stderr, quiet=_QUIET)
    fn: Handler = args.fn
    try:
        return fn(args, settings)
    except (_UsageError, SettingsError) as exc:  # SettingsError: configuration found wrong
        print(f"ingestd: {exc}", file=sys.stderr)
        return 2
    except (psycopg.OperationalError, PoolTimeout, DatabaseUnavailable) as exc:
        if isinstance(exc, psycopg.OperationalError) and not waiting_helps(exc):
            print(f"ingestd: {refusal(exc, settings)}", file=sys.stderr)
            return 2
        # Only the daemon waits for the database; a one-off command says so and stops.
        reason = unavailable_reason(exc, settings.database_url)
        print(f"ingestd: database unavailable: {reason}", file=sys.stderr)
        return 1
    except EmbeddedError as exc:
        print(f"ingestd: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
