"""Command line: parse arguments, load the config, run a command, turn errors into exit codes.

The only module that exits or prints user-facing errors. `run` logs to stdout (the journal under
systemd); `once`, `status` and `check-config` print their result on stdout and log to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TextIO

import structlog

from geod import logs, preview, systemd
from geod.about import version_text, versions
from geod.addresses import sendable
from geod.checkconfig import check_config, who_to_check
from geod.config import Config, config_path, load_config
from geod.daemon import Daemon
from geod.demo import DEFAULT_DIR, run_demo
from geod.errors import EXIT_FAILURE, EXIT_OK, GeodError, exit_code_for
from geod.escape import escape
from geod.install import install_files
from geod.store import Store, open_store

log = structlog.get_logger("geod.cli")


def build_parser() -> argparse.ArgumentParser:
    """The command line; geod(8) is generated from it (`geod.manpage`)."""
    # --config is accepted before and after the subcommand; SUPPRESS keeps the subparser's
    # default from overwriting a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", metavar="PATH", default=argparse.SUPPRESS,
                        help="config file (default: $GEOD_CONFIG or /etc/geod/config.toml)")
    parser = argparse.ArgumentParser(
        prog="geod", parents=[common],
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keeps --version's two lines
        description="Fill NULL-country rows of an IP geolocation cache through ip-api.com.",
    )
    parser.add_argument("--version", action="version", version=version_text(),
                        help="show the version and what it runs on, then exit")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser("run", parents=[common], help="run the daemon in the foreground")
    once = commands.add_parser("once", parents=[common],
                               help="run one pass, print its summary, exit")
    once.add_argument("--dry-run", action="store_true",
                      help="write nothing: list what the pass would change")
    once.add_argument("--json", action="store_true", help="with --dry-run: one JSON object")
    once.add_argument("--ask-ipapi", action="store_true",
                      help="with --dry-run: ask ip-api too (spends its quota)")
    explain = commands.add_parser(
        "explain", parents=[common],
        help="show one address's row, each provider's answer and what a pass would write")
    explain.add_argument("address", help="the ip column's value, as stored")
    explain.add_argument("--json", action="store_true", help="one JSON object, for machines")
    explain.add_argument("--ask-ipapi", action="store_true",
                         help="ask ip-api too (spends its quota)")
    check = commands.add_parser(
        "check-config", parents=[common],
        help="validate the config and the database access, print the effective config",
    )
    check.add_argument("--user", metavar="USER[:GROUP]",
                       help="check what this user would meet (as root, default: the installed "
                            "unit's User= and Group=)")
    check.add_argument("--quiet", "-q", action="store_true",
                       help="print nothing when all is well (systemctl reload runs this)")
    check.add_argument("--no-key-file", action="store_true",
                       help="do not read [ipapi] key_file or [database] password_file, nor "
                            "log in to PostgreSQL with that password (systemctl reload: "
                            "LoadCredential= files are fixed when the service starts)")
    status = commands.add_parser("status", parents=[common], help="show the table's state")
    status.add_argument("--json", action="store_true", help="one JSON object, for machines")
    install = commands.add_parser(
        "install-files", parents=[common],
        help="put the unit, sysusers file, config (if none) and man pages in place",
    )
    install.add_argument("--root", metavar="DIR", default="/",
                         help="install under DIR instead of / (packaging, tests)")
    demo = commands.add_parser("demo", parents=[common],
                               help="resolve a demo table offline and show it before and after")
    demo.add_argument("--dir", default=DEFAULT_DIR,
                      help=f"folder for the demo's config and database (default: {DEFAULT_DIR})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _command(args)
    except GeodError as error:
        return _fail(error)
    except KeyboardInterrupt:  # a second Ctrl-C before the handlers were installed
        return EXIT_OK
    except BrokenPipeError:  # `geod demo | head`: the reader has what it wanted; not a failure
        logs.silence(sys.stdout)
        return EXIT_OK
    except Exception as error:  # noqa: BLE001 - one line for the user, never a traceback
        _complain(f"unexpected error: {type(error).__name__}: {error}")
        return EXIT_FAILURE


def _command(args: argparse.Namespace) -> int:
    if args.command == "install-files":  # needs no config: it may be installing the first one
        install_files(Path(args.root), sys.stdout)
        return EXIT_OK
    if args.command == "demo":  # brings its own config; --config is ignored
        logs.configure("warning", "auto", sys.stderr)
        run_demo(args.dir, sys.stdout)
        return EXIT_OK
    skip_secrets = args.command == "check-config" and args.no_key_file
    config = load_config(config_path(getattr(args, "config", None)),
                         read_secrets=not skip_secrets)
    stream = sys.stdout if args.command == "run" else sys.stderr
    logs.configure(config.log.level, config.log.format, stream)
    if args.command == "check-config":
        notes = asyncio.run(check_config(config, who_to_check(args.user)))
        if not args.quiet:
            logs.write_line(sys.stdout, logs.json_text(config.redacted(), indent=2))
            for note in notes:
                _say(f"geod: note: {note}", sys.stderr)
        return EXIT_OK
    if args.command == "status":
        return asyncio.run(_status(config, as_json=args.json))
    if args.command == "once" and args.dry_run:
        return asyncio.run(_dry_run(config, as_json=args.json, ask_ipapi=args.ask_ipapi))
    if args.command == "once":
        return asyncio.run(_once(config))
    if args.command == "explain":
        return asyncio.run(_explain(config, args.address, as_json=args.json,
                                    ask_ipapi=args.ask_ipapi))
    return asyncio.run(_run(config))


async def _run(config: Config) -> int:
    def relog(new: Config) -> None:
        logs.configure(new.log.level, new.log.format, sys.stdout)

    log.info("geod_starting", **versions(), config=config.source)
    await systemd.run(config, on_reload=relog)  # the daemon plus sd_notify and metrics
    return EXIT_OK


async def _once(config: Config) -> int:
    summary = await Daemon(config).run_once()
    if summary is not None:
        _say(summary.line())
    return EXIT_OK


async def _dry_run(config: Config, *, as_json: bool, ask_ipapi: bool) -> int:
    summary, planned = await preview.dry_run(config, ask_ipapi=ask_ipapi)
    if as_json:
        logs.write_line(sys.stdout, logs.json_text(
            {"summary": asdict(summary), "would_write": [plan.as_json() for plan in planned]}))
        return EXIT_OK
    # Rows hold the app's stored values: escaped, like everything shown to a person.
    for line in preview.render_planned(planned):
        _say(line)
    _say(f"dry run: nothing written; {summary.line()}")
    return EXIT_OK


async def _explain(config: Config, address: str, *, as_json: bool, ask_ipapi: bool) -> int:
    result = await preview.explain(config, address, ask_ipapi=ask_ipapi)
    if as_json:
        logs.write_line(sys.stdout, logs.json_text(result.as_json()))
        return EXIT_OK
    for line in preview.render_explanation(result):
        _say(line)
    return EXIT_OK


async def _status(config: Config, *, as_json: bool) -> int:
    # Read-only (mode=ro): a mistyped path or a root shell never creates or changes a file.
    store = await open_store(config, readonly=True)
    try:
        report = await store.report()
        # NULL-ip rows are due but never read by a pass: counted here as metrics count them.
        unresolvable = (await store.due_counts()).keyless + await _count_unresolvable(store)
    finally:
        await store.close()
    if as_json:
        logs.write_line(sys.stdout, logs.json_text(
            {"rows": report.rows, "unresolved": report.due, "unresolvable": unresolvable,
             "top_countries": report.top_countries}))
        return EXIT_OK
    # The country codes are the app's stored values: escaped, like everything shown to a person.
    where = config.database.url or config.database.path  # the url never holds a password
    _say(f"database      {where} (table {config.database.table})")
    _say(f"rows          {report.rows}")
    _say(f"unresolved    {report.due}")
    _say(f"unresolvable  {unresolvable}  (NULL, private, reserved or invalid: never sent)")
    top = ", ".join(f"{code} {n}" for code, n in report.top_countries) or "none yet"
    _say(f"top countries {top}")
    return EXIT_OK


async def _count_unresolvable(store: Store) -> int:
    """Due rows geod will never send (NULL, private, reserved, invalid), read like a pass."""
    count = 0
    async for chunk in store.due_chunks():
        count += sum(1 for row in chunk if sendable(row.key) is None)
    return count


def _say(text: str, stream: TextIO | None = None) -> None:
    """One line for a person: escaped, and quiet if the reader has gone."""
    logs.write_line(stream or sys.stdout, escape(text))


def _fail(error: BaseException) -> int:
    _complain(str(error))
    return exit_code_for(error)


def _complain(reason: str) -> None:
    """Why geod stopped, on stderr. Under systemd stderr is the journal: <3> files the reason at
    err, so that `journalctl -u geod -p err` shows why geod stopped, not only "exit-code"."""
    prefix = "<3>" if logs.is_journal(sys.stderr) else ""
    logs.write_line(sys.stderr, prefix + escape(f"geod: {reason}"))
