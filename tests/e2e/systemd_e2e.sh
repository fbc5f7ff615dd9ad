#!/usr/bin/env bash
# geod under a real systemd: boot a Debian 12 container with systemd as its PID 1, install geod
# and systemd/geod.service the way the README says, and drive it the way users do (systemctl
# start / status / reload / stop, journalctl -p warning), next to an app-owned database.
#
# Needs root, debootstrap and systemd-nspawn (installed with apt-get when missing). The pristine
# root file system is cached in $GEOD_E2E_CACHE (default /var/cache/geod-e2e) and built when
# missing (~80 s); every run boots it with a throw-away overlay, so the cache stays clean.
# The host's PID 1 is not systemd here: systemd only ever runs inside the container's root.
# Exit 0: every check passed; 77: this machine cannot run it (the reason is the last line);
# anything else: a check failed.
set -Eeuo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${GEOD_E2E_CACHE:-/var/cache/geod-e2e}
# procps for /bin/kill, which the unit's ExecReload= runs (every non-minimal Debian has it).
PACKAGES=systemd,systemd-sysv,dbus,procps,python3,python3-venv,python3-pip,python3-wheel-whl
ROOTFS=$CACHE/rootfs-bookworm-$(printf '%s' "$PACKAGES" | sha256sum | cut -c1-12)
PYTHON=${GEOD_E2E_PYTHON:-python3}
FAKE_PORT=8080
WINDOW=4  # the fake ip-api's window: one request each, so a pass of 2 rows waits ~4 s
started=$(date +%s)
checks=0

say() { printf '%s\n' "e2e: $*"; }
ok() { checks=$((checks + 1)); say "ok $checks - $*"; }
fail() {
    say "FAIL: $*"
    if [ -n "${GEOD_E2E_HOLD:-}" ] && [ -n "${PID1:-}" ]; then  # debugging: keep it running
        say "holding the container: nsenter --target $PID1 --all; kill $$ to end"
        sleep 3600 || true
    fi
    exit 1
}
skip() { say "SKIP: $*"; exit 77; }
trap 'fail "line $LINENO: \"$BASH_COMMAND\" exited $?"' ERR

[ "$(id -u)" = 0 ] || skip "needs root (debootstrap, systemd-nspawn, nsenter)"

# -- tools and the cached root file system ---------------------------------------------------

if ! command -v debootstrap >/dev/null || ! command -v systemd-nspawn >/dev/null; then
    say "installing debootstrap and systemd-container"
    apt-get update -qq && apt-get install -y -qq debootstrap systemd-container >/dev/null \
        || skip "cannot install debootstrap/systemd-container with apt-get"
fi

mirror() {
    # The Debian mirror the host's apt uses for bookworm (not -security, not -updates).
    local uri
    uri=$(awk '/^URIs:/ {u=$2} /^Suites:/ && / bookworm( |$)/ {print u; exit}' \
        /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
        uri=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list)
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

if [ ! -x "$ROOTFS/usr/lib/systemd/systemd" ]; then
    say "building $ROOTFS from $(mirror) (once; cached)"
    mkdir -p "$CACHE"
    rm -rf "$ROOTFS.tmp"
    debootstrap --variant=minbase --include="$PACKAGES" bookworm "$ROOTFS.tmp" "$(mirror)" >"$CACHE/debootstrap.log" 2>&1 \
        || fail "debootstrap failed: $(tail -3 "$CACHE/debootstrap.log")"
    mv "$ROOTFS.tmp" "$ROOTFS"
fi

# -- what goes into the container --------------------------------------------------------------

WORK=$(mktemp -d /var/tmp/geod-e2e.XXXXXX)
PAYLOAD=$WORK/payload
mkdir -p "$PAYLOAD/wheels"
say "building wheels on the host (the container has no network)"
"$PYTHON" -m pip wheel -q -w "$PAYLOAD/wheels" "$REPO" >"$WORK/wheel.log" 2>&1 \
    || fail "pip wheel failed: $(tail -5 "$WORK/wheel.log")"
cp "$REPO/systemd/geod.service" "$REPO/systemd/geod.sysusers" "$REPO/tests/fake_ipapi.py" \
    "$PAYLOAD/"

# -- boot ---------------------------------------------------------------------------------------

NSPAWN=""
PID1=""
CGROUPS=()
cleanup() {
    set +e
    if [ -n "$PID1" ] && kill -0 "$PID1" 2>/dev/null; then
        kill -RTMIN+4 "$PID1"  # systemd's "poweroff" signal
        for _ in $(seq 100); do kill -0 "$NSPAWN" 2>/dev/null || break; sleep 0.1; done
    fi
    [ -n "$NSPAWN" ] && kill -0 "$NSPAWN" 2>/dev/null && kill -KILL "$NSPAWN"
    [ -n "$NSPAWN" ] && wait "$NSPAWN" 2>/dev/null
    for cg in "${CGROUPS[@]}"; do
        # nspawn leaves empty sub-cgroups behind; remove the tree bottom-up.
        find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null
    done
    [ -n "${GEOD_E2E_KEEP:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT

# A cgroup of its own (both hierarchies of this hybrid host), so the container's sub-cgroups
# stay out of the host's root cgroup.
name=geod-e2e-$$
for hierarchy in /sys/fs/cgroup/unified /sys/fs/cgroup/systemd; do
    if [ -d "$hierarchy" ] && mkdir "$hierarchy/$name" 2>/dev/null; then
        CGROUPS+=("$hierarchy/$name")
    fi
done

(
    for cg in "${CGROUPS[@]}"; do echo "$BASHPID" >"$cg/cgroup.procs"; done
    exec systemd-nspawn --quiet --directory="$ROOTFS" --volatile=overlay --boot \
        --private-network --register=no --keep-unit --link-journal=no --resolv-conf=off \
        --bind-ro="$PAYLOAD:/payload" --machine="$name"
) </dev/null >"$WORK/nspawn.log" 2>&1 &
NSPAWN=$!

for _ in $(seq 100); do
    for child in $(cat /proc/"$NSPAWN"/task/*/children 2>/dev/null); do
        [ "$(cat /proc/"$child"/comm 2>/dev/null)" = systemd ] && PID1=$child
    done
    [ -n "$PID1" ] && break
    kill -0 "$NSPAWN" 2>/dev/null || skip "systemd-nspawn exited: $(tail -3 "$WORK/nspawn.log")"
    sleep 0.1
done
[ -n "$PID1" ] || skip "no systemd inside the container: $(tail -3 "$WORK/nspawn.log")"

# Commands run inside with a clean environment: none of the host's (pip settings, ...) leaks in.
c() {
    nsenter --target "$PID1" --all -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "$@"
}
state=""
for _ in $(seq 600); do  # the manager's bus appears a moment after PID 1 starts
    state=$(timeout 60 nsenter --target "$PID1" --all -- systemctl is-system-running --wait \
        2>/dev/null || true)
    [ -n "$state" ] && break
    sleep 0.1
done
case "$state" in
    running|degraded) ok "container booted with systemd as PID 1 ($state)" ;;
    *) fail "container did not boot: '$state'; $(tail -5 "$WORK/nspawn.log")" ;;
esac

# -- install, as the README says ------------------------------------------------------------------

c sh -ec '
    python3 -m venv /opt/geod
    /opt/geod/bin/pip install -q --no-index --find-links /payload/wheels geod
    install -m 0644 /payload/geod.sysusers /usr/lib/sysusers.d/geod.conf
    printf "u app - \"the app\" /var/lib/app\n" >/usr/lib/sysusers.d/app.conf
    systemd-sysusers
    install -m 0644 /payload/geod.service /etc/systemd/system/geod.service
'
ok "geod installed from wheels with pip --no-index; users geod and app created"

# The app owns its database and its directory; group app may write both.
c sh -ec '
    install -d -o app -g app -m 0770 /var/lib/app
    runuser -u app -- sh -c "umask 007; /opt/geod/bin/python -c \"
import sqlite3
db = sqlite3.connect(\\\"/var/lib/app/geo.db\\\")
db.execute(\\\"PRAGMA journal_mode=WAL\\\")
db.execute(\\\"CREATE TABLE geo_cache (ip TEXT PRIMARY KEY, country_code TEXT, country_name TEXT, asn TEXT, org TEXT, cached_at TEXT)\\\")
db.executemany(\\\"INSERT INTO geo_cache (ip) VALUES (?)\\\", [(\\\"8.8.8.8\\\",), (\\\"1.1.1.1\\\",)])
db.commit()
\""
    chmod 0660 /var/lib/app/geo.db  # SQLite creates 0644 files: the group needs g+w
'
ok "app database /var/lib/app/geo.db owned by app:app, mode 0660, WAL mode"

c systemd-run --quiet --unit=fake-ipapi --property=User=nobody \
    /opt/geod/bin/python /payload/fake_ipapi.py --port "$FAKE_PORT" --limit 1 --window "$WINDOW" \
    --log /tmp/fake-ipapi.jsonl

write_config() {  # $1 = database path, $2 = more [ipapi] lines
    local more=${2:-}
    c sh -ec "mkdir -p /etc/geod; cat >/etc/geod/config.toml" <<EOF
[daemon]
interval = 3600
[database]
path = "$1"
create = false
[ipapi]
url = "http://127.0.0.1:$FAKE_PORT/batch"
batch_size = 1
timeout = 5
$more
EOF
}

prop() { c systemctl show -p "$1" --value geod; }
wait_status() {  # $1 = text the StatusText must contain, $2 = seconds
    local text
    for _ in $(seq $(($2 * 10))); do
        text=$(prop StatusText)
        case "$text" in *"$1"*) return 0 ;; esac
        sleep 0.1
    done
    fail "StatusText never contained '$1' (last: '$text'); $(c journalctl -u geod -n 20 --no-pager)"
}

# -- a database geod cannot open: never ready, so never active ----------------------------------

write_config /var/lib/app/missing/geo.db
c systemctl daemon-reload
if c systemctl start geod 2>/dev/null; then fail "geod became active without a database"; fi
[ "$(prop ActiveState)" != active ] || fail "geod active without a database"
c journalctl -u geod --no-pager | grep -q "opening database /var/lib/app/missing/geo.db" \
    || fail "no 'opening database' error in the journal"
c systemctl stop geod; c systemctl reset-failed geod 2>/dev/null || true
ok "without an openable database geod never becomes active (no READY)"

# -- the documented deployment: next to the app's database ---------------------------------------

# The pro key stays out of the world-readable config: a root-only file that systemd hands to
# the service as a credential, read through key_file.
KEY=e2e-pro-key-0123456789
KEY_FILE='key_file = "$CREDENTIALS_DIRECTORY/ipapi-key"'
c sh -ec "umask 077; printf '%s\n' $KEY >/etc/geod/ipapi.key"
write_config /var/lib/app/geo.db "$KEY_FILE"
c sh -ec 'mkdir -p /etc/systemd/system/geod.service.d
    printf "[Service]\nGroup=app\nReadWritePaths=/var/lib/app\n" \
        >/etc/systemd/system/geod.service.d/app.conf
    printf "[Service]\nLoadCredential=ipapi-key:/etc/geod/ipapi.key\n" \
        >/etc/systemd/system/geod.service.d/key.conf'
if c runuser -u geod -- cat /etc/geod/ipapi.key >/dev/null 2>&1; then
    fail "the geod user can read the key file directly"
fi
c systemctl daemon-reload
t0=$(date +%s%N)
c systemctl start geod  # Type=notify: returns once geod has sent READY=1
[ "$(prop ActiveState)" = active ] || fail "not active after start: $(prop ActiveState)"
[ -n "$(prop StatusText)" ] || fail "active but no STATUS= seen"
ok "systemctl start geod: active once READY=1 came ($(( ($(date +%s%N) - t0) / 1000000 )) ms)"

wait_status "waiting" 20
c stat -c '%U:%G %a %n' /var/lib/app/geo.db-shm /var/lib/app/geo.db-wal
[ "$(c stat -c %G /var/lib/app/geo.db-shm)" = app ] || fail "-shm not in group app"
# While geod holds the database (its -wal/-shm), the app must still be able to write.
c runuser -u app -- /opt/geod/bin/python -c '
import sqlite3
db = sqlite3.connect("/var/lib/app/geo.db")
db.execute("INSERT INTO geo_cache (ip) VALUES (?)", ("9.9.9.9",))
db.commit()
' || fail "the app cannot write its database while geod has it open"
ok "hardened geod (Group=app, ReadWritePaths=) shares the WAL database with the app"

c systemctl status geod --no-pager >"$WORK/status.txt" || true
grep -E '^ +Status: "' "$WORK/status.txt" \
    || fail "systemctl status shows no Status: line: $(cat "$WORK/status.txt")"
ok "systemctl status geod shows the STATUS= line"

wait_status "last pass" 30
resolved=$(c /opt/geod/bin/python -c '
import sqlite3
db = sqlite3.connect("file:/var/lib/app/geo.db?mode=ro", uri=True)
print(db.execute("SELECT COUNT(*) FROM geo_cache WHERE country_code IS NOT NULL").fetchone()[0])
')
[ "$resolved" -ge 2 ] || fail "only $resolved rows resolved"
[ "$(c stat -c %U /var/lib/app/geo.db)" = app ] || fail "the database changed owner"
ok "first pass wrote the app's database ($resolved rows): $(prop StatusText)"

c grep -q "\"key\": \"$KEY\"" /tmp/fake-ipapi.jsonl || fail "the key did not reach ip-api"
if c journalctl --no-pager | grep -q "$KEY"; then fail "the key is in the journal"; fi
ok "pro key from LoadCredential= + key_file reached ip-api, and never the journal"

[ "$(prop WatchdogUSec)" = 30s ] || fail "WatchdogUSec is $(prop WatchdogUSec)"
[ "$(prop WatchdogTimestampMonotonic)" -gt 0 ] || fail "no WATCHDOG=1 seen"
ok "watchdog armed (WatchdogSec=30s) and pinged"

# -- reload: a pass runs (252's reload returns before geod handles SIGHUP, so poll) -------------

before=$(prop StatusText)
c runuser -u app -- /opt/geod/bin/python -c '
import sqlite3
db = sqlite3.connect("/var/lib/app/geo.db")
db.execute("INSERT INTO geo_cache (ip) VALUES (?)", ("4.4.4.4",))
db.commit()
'
c systemctl reload geod
for _ in $(seq 300); do
    now=$(prop StatusText)
    case "$now" in "last pass"*"resolved"*) [ "$now" != "$before" ] && break ;; esac
    sleep 0.1
done
case "$now" in "last pass"*"resolved"*) ;; *) fail "no pass after reload: '$now'" ;; esac
[ "$now" != "$before" ] || fail "no new pass after reload: '$now'"
[ "$(prop ActiveState)" = active ] || fail "not active after reload"
ok "systemctl reload geod ran a pass: $now"

# -- journal: priorities from the <N> prefixes ---------------------------------------------------

c sh -c 'printf "[daemon]\ninterval = -1\n" >/etc/geod/config.toml'  # an invalid config
c systemctl reload geod
# geod handles the HUP after any pass still running, so allow for a slow pass on a busy machine.
for _ in $(seq 600); do
    c journalctl -u geod --no-pager -o cat | grep -q '^config_reload_failed' && break
    sleep 0.1
done
warnings=$(c journalctl -u geod -p warning --no-pager -o cat)
printf '%s\n' "$warnings" | grep -q '^config_reload_failed reason=' \
    || fail "config_reload_failed not at warning or above: $warnings"
if printf '%s\n' "$warnings" | grep -qE '^(geo_re_resolve_complete|config_reloaded|rate_limit_wait)'; then
    fail "info events under -p warning: $warnings"
fi
c journalctl -u geod -p info --no-pager -o cat | grep -q '^geo_re_resolve_complete retried=' \
    || fail "no geo_re_resolve_complete line at info"
c journalctl -u geod --no-pager -o json | "$PYTHON" -c '
import json, sys
ours = [e for e in map(json.loads, sys.stdin) if e.get("SYSLOG_IDENTIFIER") == "geod"]
levels = {}
for entry in ours:
    event = entry["MESSAGE"].split(" ", 1)[0]
    levels.setdefault(event, set()).add(entry["PRIORITY"])
    assert not entry["MESSAGE"][:1].isdigit(), entry["MESSAGE"]  # no timestamp of our own
assert levels["config_reload_failed"] == {"3"}, levels
assert levels["geo_re_resolve_complete"] == {"6"}, levels
' || fail "journal entries have the wrong priorities"
[ "$(prop ActiveState)" = active ] || fail "an invalid config on reload stopped geod"
ok "journalctl -u geod -p warning shows only warnings and errors"

# -- stop: clean, exit 0 -------------------------------------------------------------------------

write_config /var/lib/app/geo.db "$KEY_FILE"
c systemctl stop geod
[ "$(prop ActiveState)" = inactive ] || fail "after stop: $(prop ActiveState)"
[ "$(prop ExecMainStatus)" = 0 ] || fail "exit status $(prop ExecMainStatus)"
[ "$(prop Result)" = success ] || fail "result $(prop Result)"
c journalctl -u geod --no-pager -o cat | grep -q '^shutdown passes=' || fail "no shutdown event"
ok "systemctl stop geod: clean, exit 0"

# -- the other deployment: geod's own database in its StateDirectory= ----------------------------

c rm /etc/systemd/system/geod.service.d/app.conf
c sh -ec "cat >/etc/geod/config.toml" <<EOF
[database]
path = "/var/lib/geod/geo.db"
[ipapi]
url = "http://127.0.0.1:$FAKE_PORT/batch"
$KEY_FILE
EOF
c systemctl daemon-reload
c systemctl start geod
wait_status "nothing to resolve" 20
[ "$(c stat -c '%U:%G %a' /var/lib/geod/geo.db)" = "geod:geod 600" ] \
    || fail "own database: $(c stat -c '%U:%G %a' /var/lib/geod/geo.db)"
c systemctl stop geod
[ "$(prop Result)" = success ] || fail "result $(prop Result)"
ok "own database: /var/lib/geod/geo.db created geod:geod 0600 (StateDirectory=, UMask=)"

say "$checks checks passed in $(($(date +%s) - started)) s"
