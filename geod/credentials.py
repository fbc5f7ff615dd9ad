"""Read a secret (the ip-api pro key) from a file, the way systemd credentials are handed over.

`LoadCredential=ipapi-key:/etc/geod/ipapi.key` copies the file, readable by the service alone, into
`$CREDENTIALS_DIRECTORY` when the service starts; `key_file = "$CREDENTIALS_DIRECTORY/ipapi-key"`
reads it there. Only that one variable is expanded: config values are not shell strings.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from geod.safefile import read_small_file

_PREFIXES = ("$CREDENTIALS_DIRECTORY/", "${CREDENTIALS_DIRECTORY}/")
MAX_KEY = 256  # real keys are a few dozen characters; anything longer is the wrong file
MAX_KEY_FILE = 4096  # the key plus surrounding blank lines; a bigger file is the wrong file


def resolve_key_path(name: str, base: Path, environ: Mapping[str, str]) -> Path:
    """Where `name` points: under `$CREDENTIALS_DIRECTORY`, absolute, or relative to `base`.

    Raises:
        ValueError: `name` uses `$CREDENTIALS_DIRECTORY` and it is not set.
    """
    for prefix in _PREFIXES:
        if name.startswith(prefix):
            directory = environ.get("CREDENTIALS_DIRECTORY", "")
            if not directory:
                raise ValueError(
                    "$CREDENTIALS_DIRECTORY is not set (is LoadCredential= missing from the unit?)"
                )
            return Path(directory) / name[len(prefix):]
    path = Path(name)
    return path if path.is_absolute() else base / path


def read_key_file(name: str, base: Path, environ: Mapping[str, str]) -> tuple[Path, str]:
    """Read the key `name` points at; returns (the file read, the key without surrounding space).

    Raises:
        ValueError: (UnreadableFile among them) the file is unreadable, not a regular file,
            too big, empty, or holds more than one token. The message names the file, never
            its content.
    """
    path = resolve_key_path(name, base, environ)
    try:
        # Read through the one safe reader: /dev/zero, a FIFO or a huge file is refused, not
        # read until memory runs out or forever. UnreadableFile's text names the file only.
        secret = read_small_file(path, MAX_KEY_FILE).decode("utf-8-sig").strip()
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None
    if not secret:
        raise ValueError(f"{path} is empty")
    if len(secret) > MAX_KEY or not secret.isprintable() or any(c.isspace() for c in secret):
        raise ValueError(f"{path} must hold the key alone, on one line")
    return path, secret
