"""Check a PostgreSQL URL from the config and read its password file; pure, no driver needed.

The config file is world-readable, so a password in the URL is refused (not merely warned
about): it would already have leaked by the time a warning is read. The password comes from
`password_file` (a systemd credential), or libpq's own `PGPASSFILE`/`~/.pgpass`, or no password
at all (peer auth over the Unix socket).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from geod.credentials import resolve_key_path
from geod.safefile import read_small_file

SCHEMES = ("postgresql", "postgres")
MAX_PASSWORD = 1024
MAX_PASSWORD_FILE = 4096  # the password plus blank lines; a bigger file is the wrong file
_SECRET_PARAMS = ("password", "sslpassword")


def check_url(url: str) -> None:
    """Accept a libpq URL without secrets in it.

    Raises:
        ValueError: not a postgresql:// URL, or it carries a password; the message never
            repeats the password.
    """
    try:
        parts = urlsplit(url)
        password = parts.password
        params = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        raise ValueError("must be a postgresql:// URL") from None
    if parts.scheme not in SCHEMES:
        raise ValueError(f"must be a postgresql:// URL, got scheme {parts.scheme!r}")
    hint = "use password_file, PGPASSFILE/.pgpass or peer auth: this file is world-readable"
    if password is not None or any(name in _SECRET_PARAMS for name, _ in params):
        raise ValueError(f"must not contain a password ({hint})")
    if parts.fragment:
        raise ValueError("must not have a #fragment")


def read_password_file(name: str, base: Path, environ: Mapping[str, str]) -> tuple[Path, str]:
    """Read the password `name` points at ($CREDENTIALS_DIRECTORY/…, absolute, or beside base).

    The whole first line is the password (spaces included); a trailing newline is not.

    Raises:
        ValueError: unreadable, empty or oversized file; the message names the file only.
    """
    path = resolve_key_path(name, base, environ)
    try:
        # The one safe reader (as for key_file): /dev/zero, a FIFO or a huge file is refused,
        # not read until memory runs out or forever. UnreadableFile names the file only.
        text = read_small_file(path, MAX_PASSWORD_FILE).decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    lines = text.splitlines()
    secret = lines[0] if lines else ""
    if not secret:
        raise ValueError(f"{path} is empty")
    if len(secret) > MAX_PASSWORD or any(line.strip() for line in lines[1:]):
        raise ValueError(f"{path} must hold the password alone, on one line")
    if not secret.isprintable():
        raise ValueError(f"{path} must hold the password alone, on one line")
    return path, secret
