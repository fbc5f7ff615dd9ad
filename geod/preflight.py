"""Start-up checks: prove geod may read and write its database before it says READY.

`check_access` looks at the file system only (stat and the permission bits a given user gets),
so `check-config` can run it as root on behalf of the unit's user without changing anything.
`probe_write` begins and rolls back a write transaction: the one test that also sees ACLs,
read-only mounts and SQLite's own view. `create_database` makes a new database private (0600)
and refuses, as root, to leave a file the service's user could not write.
Never changes a mode or an owner: that is the operator's call, and every message says how.
"""

from __future__ import annotations

import asyncio
import grp
import os
import pwd
import sqlite3
import stat
import subprocess
from dataclasses import dataclass
from pathlib import Path, PurePath

from geod.config import DatabaseConfig
from geod.errors import GeodError, PermissionProblem, StoreError

STATE_DIRECTORY = "/var/lib/geod"  # the unit's StateDirectory=geod: systemd creates it at start
COMPANIONS = ("-wal", "-shm", "-journal")  # what SQLite creates beside the database
PROBE_TIMEOUT = 0.0  # no busy wait: a lock held by the app means skip the probe, not wait


@dataclass(frozen=True, slots=True)
class Identity:
    """A user as the kernel sees it: uid and every gid (primary, Group= and supplementary)."""

    name: str
    uid: int
    gids: frozenset[int]

    @classmethod
    def current(cls) -> Identity:
        uid = os.geteuid()
        return cls(_user_name(uid), uid, frozenset({os.getegid(), *os.getgroups()}))

    @classmethod
    def lookup(cls, spec: str) -> Identity:
        """`user` or `user:group` (the unit's User= and Group=).

        Raises:
            GeodError: no such user or group.
        """
        user, _, group = spec.partition(":")
        try:
            entry = pwd.getpwnam(user)
            gid = grp.getgrnam(group).gr_gid if group else entry.pw_gid
        except KeyError:
            raise GeodError(f"--user {spec}: no such user or group") from None
        return cls(user, entry.pw_uid, frozenset(os.getgrouplist(user, gid)) | {gid})

    def describe(self) -> str:
        groups = ",".join(sorted(_group_name(gid) for gid in self.gids))
        return f"user {self.name} (groups {groups})"


def unit_identity(unit: str = "geod.service") -> Identity | None:
    """The User=/Group= of the installed unit, read from systemd; None when that is not known."""
    # Without NOTIFY_SOCKET: systemctl reports its own failure there (ERRNO=), and that socket
    # is for `geod run` alone.
    env = {key: value for key, value in os.environ.items() if key != "NOTIFY_SOCKET"}
    try:
        # A fixed argument list, no shell; systemctl is found on PATH like any admin tool.
        result = subprocess.run(  # noqa: S603
            ["systemctl", "show", "--property=User", "--property=Group", unit],  # noqa: S607
            capture_output=True, text=True, timeout=10, check=False, env=env,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    found = dict(line.partition("=")[::2] for line in result.stdout.splitlines())
    user, group = found.get("User", ""), found.get("Group", "")
    if result.returncode != 0 or not user:
        return None
    try:
        return Identity.lookup(f"{user}:{group}" if group else user)
    except GeodError:
        return None


def check_access(path: str, who: Identity | None = None) -> list[str]:
    """Check that `who` (this process when None) may use the database at `path`.

    The database and any -wal/-shm/-journal beside it need read and write; the directory needs
    write and search, because SQLite creates and deletes those files there. Returns notes (a
    directory systemd will create); raises at the first problem.

    Raises:
        PermissionProblem: a file or the directory is not writable; names file, owner, mode,
            the user and the fix.
        StoreError: the directory does not exist.
    """
    database = Path(path)
    directory = database.parent
    if not directory.exists():
        if str(directory) == STATE_DIRECTORY:
            return [f"{directory} does not exist yet: the unit's StateDirectory= creates it"]
        raise StoreError(f"database directory {directory} does not exist")
    _require(directory, os.W_OK | os.X_OK, who, database)
    for name in ("", *COMPANIONS):
        candidate = Path(f"{database}{name}")
        if candidate.exists():
            _require(candidate, os.R_OK | os.W_OK, who, database)
    return []


def create_database(path: str) -> bool:
    """Create an empty, private (0600) database file if `path` does not exist; True if created.

    An empty file is a valid SQLite database. Its mode never depends on the umask: it holds
    visitors' addresses. Root does not create a database in a directory someone else owns
    (the service's user): the service could not write the root-owned file afterwards.

    Raises:
        PermissionProblem: root, in another user's directory.
    """
    database = Path(path)
    if database.exists():
        return False
    directory = database.parent
    try:
        owner = directory.stat().st_uid
    except OSError:
        return False  # SQLite's own error ("unable to open database file") says it better
    if os.geteuid() == 0 and owner != 0:
        user = _user_name(owner)
        raise PermissionProblem(
            f"refusing to create {path} as root: {directory} belongs to {user}, and the "
            f"service could not write a root-owned database; run this as that user "
            f"(runuser -u {user} -- geod ...) or let the service create it (systemctl start geod)"
        )
    try:
        fd = os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        return False
    except OSError:
        return False  # left to SQLite, whose error the caller reports with the path
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    return True


def probe_write(path: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """Begin and roll back a write transaction; False when the app held its lock throughout.

    Raises:
        PermissionProblem: SQLite may not write the database or its companions.
        StoreError: any other failure to open or write.
    """
    uri = f"{PurePath(path).as_uri()}?mode=rw"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None)
    except sqlite3.Error as error:
        raise StoreError(f"opening database {path}: {error}") from None
    try:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ROLLBACK")
    except sqlite3.OperationalError as error:
        text = str(error).lower()
        if "locked" in text or "busy" in text:
            return False
        check_access(path)  # names the file at fault when the mode bits explain it
        if "readonly" in text or "read-only" in text or "unable to open" in text:
            raise PermissionProblem(
                f"cannot write database {path}: {error} ({Identity.current().describe()}); "
                f"check the mount (ProtectSystem=strict: add ReadWritePaths={Path(path).parent})"
            ) from None
        raise StoreError(f"writing database {path}: {error}") from None
    finally:
        conn.close()
    return True


def _require(path: Path, want: int, who: Identity | None, database: Path) -> None:
    info = path.stat()
    if who is None:
        allowed = os.access(path, want)
        who_text = Identity.current().describe()
    else:
        allowed = may(info, who, want)
        who_text = who.describe()
    if allowed:
        return
    verb = "write and enter" if stat.S_ISDIR(info.st_mode) else "read and write"
    owner = f"{_user_name(info.st_uid)}:{_group_name(info.st_gid)}"
    mode = f"{stat.S_IMODE(info.st_mode):04o}"
    raise PermissionProblem(
        f"{who_text} may not {verb} {path} (owner {owner}, mode {mode}); "
        f"fix: {_fix(path, info, who or Identity.current(), database)}"
    )


def may(info: os.stat_result, who: Identity, want: int) -> bool:
    """The kernel's owner/group/other rule for `who` (ACLs aside); root may do anything."""
    if who.uid == 0:
        return True
    if info.st_uid == who.uid:
        bits = info.st_mode >> 6
    elif info.st_gid in who.gids:
        bits = info.st_mode >> 3
    else:
        bits = info.st_mode
    return bits & want == want


def _fix(path: Path, info: os.stat_result, who: Identity, database: Path) -> str:
    if _read_only_mount(path):
        directory = path if stat.S_ISDIR(info.st_mode) else path.parent
        return (f"{path} is on a read-only file system (under the unit: ProtectSystem=strict); "
                f"put the database under {STATE_DIRECTORY} or add ReadWritePaths={directory}")
    is_dir = stat.S_ISDIR(info.st_mode)
    if info.st_uid == 0 and info.st_gid == 0:  # a system folder (/etc/geod): never Group=root
        return (f"put the database where geod may write: under {STATE_DIRECTORY} (the unit's "
                f"StateDirectory=), or in the app's folder with Group= and ReadWritePaths=")
    # The companions get the database's mode when SQLite creates them: fix all of them at once.
    target, bits = (str(path), "wx") if is_dir else (f"{database}*", "rw")
    if info.st_uid == who.uid:
        return f"chmod u+{bits} {target}"
    group = _group_name(info.st_gid)
    if info.st_gid in who.gids:
        return f"chmod g+{bits} {target}"
    return (f"chmod g+{bits} {target} and run geod in group {group} "
            f"(systemctl edit geod: [Service] Group={group})")


def _read_only_mount(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


async def startup_checks(config: DatabaseConfig) -> None:
    """The file-system half of start-up (before the database is opened): see `check_access`."""
    await asyncio.to_thread(check_access, config.path)
