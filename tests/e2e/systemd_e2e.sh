#!/usr/bin/env bash
# geod under a real systemd: boot a Debian 12 container with systemd as its PID 1 and run the
# README's own shell blocks in it, taken from README.md at run time (each follows an
# `<!-- e2e: NAME -->` line), for both deployments: install, geod's own database, next to a
# running app's WAL database, the app's table in PostgreSQL (tests/e2e/host_pg.py), upgrade,
# uninstall. Between them it provokes each failure the
# README's old text led to and checks that `journalctl -u geod -p err` names the cause.
# The one test-only change to the operator's path: ip-api.com is a local fake (no network).
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
"$PYTHON" -m pip wheel -q -w "$PAYLOAD/wheels" "$REPO[postgresql]" >"$WORK/wheel.log" 2>&1 \
    || fail "pip wheel failed: $(tail -5 "$WORK/wheel.log")"
# `pip install .` from the checkout builds geod in the container: it needs setuptools offline.
"$PYTHON" -m pip download -q -d "$PAYLOAD/wheels" "setuptools>=68" wheel >>"$WORK/wheel.log" 2>&1 \
    || fail "pip download setuptools failed: $(tail -5 "$WORK/wheel.log")"
# The checkout the README's blocks run in (what `git clone` would give, plus uncommitted edits).
mkdir -p "$PAYLOAD/src"
tar -C "$REPO" --exclude=./.venv --exclude=./.git --exclude='*.egg-info' --exclude=./build \
    --exclude=__pycache__ --exclude=./.mypy_cache --exclude=./.ruff_cache --exclude=./.hypothesis \
    --exclude=./.pytest_cache -cf - . | tar -C "$PAYLOAD/src" -xf -
cp "$REPO/tests/fake_ipapi.py" "$PAYLOAD/"
# The app's PostgreSQL for the PostgreSQL deployment: on the host (the container has no
# network), its socket directory bound in at /run/postgresql. No PostgreSQL 15 here: skipped.
PGSOCK=""
PGSTATE=$WORK/pg.json
if pg=$("$PYTHON" "$REPO/tests/e2e/host_pg.py" start "$PGSTATE" 2>"$WORK/pg.log"); then
    PGSOCK=${pg% *}
    PGPORT=${pg#* }
else
    say "the PostgreSQL deployment is skipped: $(tail -1 "$WORK/pg.log")"
fi

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
    [ -n "$PGSOCK" ] && "$PYTHON" "$REPO/tests/e2e/host_pg.py" stop "$PGSTATE"
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
        --bind-ro="$PAYLOAD:/payload" ${PGSOCK:+--bind="$PGSOCK:/run/postgresql"} \
        --machine="$name"
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
    # "offline": systemctl did not reach the manager yet (seen once at boot); ask again.
    [ -n "$state" ] && [ "$state" != offline ] && break
    sleep 0.1
done
case "$state" in
    running|degraded) ok "container booted with systemd as PID 1 ($state)" ;;
    *) fail "container did not boot: '$state'; $(tail -5 "$WORK/nspawn.log")" ;;
esac

# -- the README's blocks -------------------------------------------------------------------------

block() {  # the ```sh block after the line `<!-- e2e: $1 -->` in README.md
    awk -v marker="<!-- e2e: $1 -->" '
        $0 == marker {found = 1; next}
        found && /^```sh$/ {inside = 1; next}
        inside && /^```$/ {exit}
        inside {print}
    ' "$REPO/README.md"
}
TIMINGS=""
readme() {  # run README block $1 verbatim, as root, in the checkout; pip finds the wheels
    # offline; any further arguments are VAR=value the reader is told to set (KEY=your key)
    local name=$1 text t0 ms
    shift
    text=$(block "$name")
    [ -n "$text" ] || fail "README.md has no block marked '<!-- e2e: $name -->'"
    say "README block '$name':"
    printf '%s\n' "$text" | sed 's/^/e2e:   | /'
    t0=$(date +%s%N)
    c env PIP_NO_INDEX=1 PIP_FIND_LINKS=/payload/wheels "$@" sh -ec "cd /root/geod
$text" >"$WORK/block-$name.log" 2>&1 \
        || fail "README block '$name' failed: $(tail -20 "$WORK/block-$name.log")"
    ms=$(( ($(date +%s%N) - t0) / 1000000 ))
    TIMINGS="$TIMINGS $name=${ms}ms"
    sed -n '1,15s/^/e2e:   > /p' "$WORK/block-$name.log"
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
err_log() { c journalctl -u geod -p err --no-pager -o cat; }
# grep -q quits at the first match; the writer then dies of SIGPIPE and pipefail fails the check.
has() { grep "$@" >/dev/null; }
resolved_rows() {  # $1 = database
    c /usr/bin/python3 -c "
import sqlite3
db = sqlite3.connect('file:$1?mode=ro', uri=True)
print(db.execute('SELECT COUNT(*) FROM geo_cache WHERE country_code IS NOT NULL').fetchone()[0])
"
}
requests_seen() { c sh -c 'wc -l </tmp/fake-ipapi.jsonl 2>/dev/null || echo 0'; }
failed_start() {  # $1 = expected exit status; geod must end failed, not in a restart loop
    if c systemctl start geod 2>/dev/null; then fail "geod started: $(c journalctl -u geod -n 5 --no-pager)"; fi
    sleep 6  # RestartSec=5s: a restart would have happened by now
    [ "$(prop ExecMainStatus)" = "$1" ] || fail "exit status $(prop ExecMainStatus), wanted $1"
    [ "$(prop NRestarts)" = 0 ] || fail "restarted $(prop NRestarts) times"
    [ "$(prop ActiveState)" = failed ] || fail "state $(prop ActiveState)"
}

c sh -ec 'cp -a /payload/src /root/geod'
readme install
c /opt/geod/bin/geod --version | has '^geod [0-9]' || fail "geod --version"
c /opt/geod/bin/geod --version | has 'SQLite .*aiohttp .*rir data' || fail "geod --version details"
for f in /etc/systemd/system/geod.service /usr/lib/sysusers.d/geod.conf /etc/geod/config.toml \
    /usr/local/share/man/man8/geod.8 /usr/local/share/man/man5/geod.toml.5; do
    c test -f "$f" || fail "install-files did not install $f"
done
prop Documentation | has 'man:geod(8)' || fail "no Documentation=man:geod(8): $(prop Documentation)"
c id geod >/dev/null || fail "no geod user"
ok "README 'install': pip install . offline, install-files, sysusers; --version, man pages, Documentation="

# The one test-only change: ip-api.com is the fake on this host (the container has no network).
c sh -ec "sed -i 's|^# url = .*|url = \"http://127.0.0.1:$FAKE_PORT/batch\"|' /etc/geod/config.toml"
c systemd-run --quiet --unit=fake-ipapi --property=User=nobody \
    /opt/geod/bin/python /payload/fake_ipapi.py --port "$FAKE_PORT" --limit 1 --window "$WINDOW" \
    --log /tmp/fake-ipapi.jsonl
c cp /etc/geod/config.toml /root/config.good

# -- defect 3 / finding 26: root's `geod status` creates nothing --------------------------------

if c /opt/geod/bin/geod status >/dev/null 2>&1; then fail "status succeeded without a database"; fi
c test ! -e /var/lib/geod/geo.db || fail "geod status created /var/lib/geod/geo.db"
ok "geod status as root before the first start: an error, and no database created"

# -- defect 1: the old shipped path (geo.db beside the config, /etc/geod, read-only) ------------

c sed -i 's|^path = .*|path = "geo.db"|' /etc/geod/config.toml
if c /opt/geod/bin/geod check-config --quiet 2>"$WORK/cc.txt"; then fail "check-config passed"; fi
grep -q '/etc/geod' "$WORK/cc.txt" || fail "check-config did not name /etc/geod: $(cat "$WORK/cc.txt")"
failed_start 77
err_log | has '^geod: user geod .*/etc/geod .*fix: .*under /var/lib/geod' \
    || fail "journalctl -p err does not name the cause: $(err_log)"
ok "relative path: check-config and start refuse (77, no restart loop); -p err: $(err_log | grep '^geod:' | tail -1 | cut -c1-150)"
c cp /root/config.good /etc/geod/config.toml
c systemctl reset-failed geod

# -- deployment 1: geod's own database, README verbatim -----------------------------------------

readme own-database
[ "$(prop ActiveState)" = active ] || fail "not active: $(prop ActiveState)"
wait_status "nothing to resolve" 20
[ "$(c stat -c '%U:%G %a' /var/lib/geod/geo.db)" = "geod:geod 600" ] \
    || fail "own database: $(c stat -c '%U:%G %a' /var/lib/geod/geo.db)"
ok "README 'own-database': active; /var/lib/geod/geo.db created geod:geod 0600"

c runuser -u geod -- /usr/bin/python3 -c '
import sqlite3
db = sqlite3.connect("/var/lib/geod/geo.db")
db.executemany("INSERT INTO geo_cache (ip) VALUES (?)", [("8.8.8.8",), ("1.1.1.1",)])
db.commit()
'
c systemctl reload geod
wait_status "2/2 resolved" 30
[ "$(resolved_rows /var/lib/geod/geo.db)" = 2 ] || fail "own database: rows not resolved"
journal=$(c journalctl -u geod --no-pager -o cat)
printf '%s\n' "$journal" | has '^geod_starting version=[0-9.]* python=.* sqlite=.* aiohttp=' \
    || fail "no versions at start-up: $journal"
printf '%s\n' "$journal" | has -E '^geo_re_resolve_start .*providers=ip-api( |$)' \
    || fail "providers not a plain list: $(printf '%s\n' "$journal" | grep resolve_start)"
printf '%s\n' "$journal" | has 'resolved_by=ip-api:2' \
    || fail "resolved_by not key:value: $(printf '%s\n' "$journal" | grep resolve_complete)"
ok "own database: rows resolved after reload ($(prop StatusText)); versions logged; values plain"

# -- issue 9 item 7: metrics under the shipped unit (ProcSubset=pid hides /proc/stat) --------------

c runuser -u geod -- /usr/bin/python3 -c '
import sqlite3
db = sqlite3.connect("/var/lib/geod/geo.db")
db.executemany("INSERT INTO geo_cache (ip) VALUES (?)", [("10.0.0.1",), (None,)])
db.commit()
'
c sed -i 's|^listen = ""|listen = "127.0.0.1:9108"|' /etc/geod/config.toml
c systemctl restart geod  # the address is bound at start
wait_status "0/2 resolved" 20
scrape() {
    c /usr/bin/python3 -c '
import urllib.request
print(urllib.request.urlopen("http://127.0.0.1:9108/metrics", timeout=5).read().decode(), end="")'
}
for _ in $(seq 50); do scrape >"$WORK/metrics.txt" 2>/dev/null && grep -q '^geod_passes_total{result="success"} 1.0' "$WORK/metrics.txt" && break; sleep 0.1; done
for series in process_start_time_seconds process_cpu_seconds_total process_resident_memory_bytes \
    process_open_fds 'geod_pending_rows 0.0' 'geod_unresolvable_rows 2.0' 'geod_backing_off_rows 0.0' \
    'geod_backlog_drain_seconds 0.0' 'geod_oldest_pending_age_seconds 0.0'; do
    grep -q "^$series" "$WORK/metrics.txt" || fail "no '$series' in the scrape: $(grep -v '^#' "$WORK/metrics.txt")"
done
if grep -q '_created' "$WORK/metrics.txt"; then fail "_created series: $(grep _created "$WORK/metrics.txt")"; fi
lint="promtool not installed on the host"
if command -v promtool >/dev/null; then
    promtool check metrics <"$WORK/metrics.txt" >"$WORK/promtool.txt" 2>&1 \
        || fail "promtool check metrics: $(cat "$WORK/promtool.txt")"
    lint="promtool check metrics clean"
fi
ok "metrics under the shipped unit: process_* present, no _created, pending 0 / unresolvable 2; $lint"
c runuser -u geod -- /usr/bin/python3 -c '
import sqlite3
db = sqlite3.connect("/var/lib/geod/geo.db")
db.execute("DELETE FROM geo_cache WHERE country_code IS NULL")
db.commit()
'
c cp /root/config.good /etc/geod/config.toml
c systemctl restart geod
wait_status "nothing to resolve" 20

# -- defect 5: reload with an invalid config fails, geod keeps the old one ------------------------

c sed -i 's/^interval = 600/interval = -1/' /etc/geod/config.toml
if c systemctl reload geod 2>/dev/null; then fail "reload of an invalid config succeeded"; fi
[ "$(prop ActiveState)" = active ] || fail "an invalid config on reload stopped geod"
err_log | has 'interval' || fail "journalctl -p err does not name the bad key: $(err_log)"
c cp /root/config.good /etc/geod/config.toml
c systemctl reload geod || fail "reload of the good config failed"
ok "reload with an invalid config fails (geod stays active); -p err: $(err_log | grep interval | tail -1 | cut -c1-120)"

c systemctl stop geod
[ "$(prop Result)" = success ] && [ "$(prop ExecMainStatus)" = 0 ] \
    || fail "stop: result $(prop Result), status $(prop ExecMainStatus)"
c journalctl -u geod --no-pager -o cat | has '^shutdown passes=' || fail "no shutdown event"
ok "systemctl stop geod: clean, exit 0"

# -- deployment 2: next to a running app's WAL database -----------------------------------------

# The app: its own user, a database it created with the usual umask (0644 files), in WAL mode,
# and still running (its open connection keeps geo.db-wal and geo.db-shm in place).
c sh -ec 'printf "u app - \"the app\" /var/lib/app\n" >/usr/lib/sysusers.d/app.conf; systemd-sysusers
    install -d -o app -g app -m 0755 /var/lib/app'
c systemd-run --quiet --unit=app --property=User=app --property=Group=app /usr/bin/python3 -c '
import sqlite3, time
db = sqlite3.connect("/var/lib/app/geo.db")
db.execute("PRAGMA journal_mode=WAL")
db.execute("CREATE TABLE geo_cache (ip TEXT PRIMARY KEY, country_code TEXT, country_name TEXT, asn TEXT, org TEXT, cached_at TEXT)")
db.executemany("INSERT INTO geo_cache (ip) VALUES (?)", [("9.9.9.9",), ("4.4.4.4",)])
db.commit()
while True:
    db.execute("SELECT COUNT(*) FROM geo_cache").fetchone()
    time.sleep(1)
'
for _ in $(seq 50); do c test -e /var/lib/app/geo.db-wal && break; sleep 0.1; done
modes=$(c stat -c '%n %U:%G %a' /var/lib/app/geo.db /var/lib/app/geo.db-wal /var/lib/app/geo.db-shm)
ok "a running app: $(printf '%s' "$modes" | tr '\n' ';')"

readme app-config

# Defect 2: the README's old chmod left the app's -wal/-shm at 0644.
c chmod g+w /var/lib/app /var/lib/app/geo.db
before=$(requests_seen)
if c /opt/geod/bin/geod check-config --quiet 2>"$WORK/cc.txt"; then fail "check-config passed"; fi
grep -q 'geo.db-wal.*chmod g+rw /var/lib/app/geo.db\*' "$WORK/cc.txt" \
    || fail "check-config (as root, for geod:app) did not name the -wal: $(cat "$WORK/cc.txt")"
failed_start 77
err_log | has '^geod: user geod .*may not read and write /var/lib/app/geo.db-wal.*mode 0644.*fix: chmod g+rw /var/lib/app/geo.db\*' \
    || fail "journalctl -p err does not name the -wal and the fix: $(err_log)"
[ "$(requests_seen)" = "$before" ] || fail "an ip-api request was spent before the failure"
ok "-wal left 0644: check-config and start refuse (77, no request spent); -p err: $(err_log | grep '^geod:' | tail -1 | cut -c1-160)"
c systemctl reset-failed geod

readme app-permissions
readme app-start
[ "$(prop ActiveState)" = active ] || fail "not active: $(prop ActiveState)"
wait_status "last pass" 30
[ "$(resolved_rows /var/lib/app/geo.db)" -ge 2 ] || fail "app database: rows not resolved"
[ "$(c stat -c %U:%G /var/lib/app/geo.db)" = app:app ] || fail "the database changed owner"
c runuser -u app -- /usr/bin/python3 -c '
import sqlite3
db = sqlite3.connect("/var/lib/app/geo.db")
db.execute("INSERT INTO geo_cache (ip) VALUES (?)", ("8.8.4.4",))
db.commit()
' || fail "the app cannot write its database while geod has it open"
ok "README 'app-permissions' + 'app-start': rows resolved in the app's database ($(prop StatusText)); the app still writes"

readme diagnose
grep -q '"path": "/var/lib/app/geo.db"' "$WORK/block-diagnose.log" \
    || fail "check-config in 'diagnose' did not print the config"
ok "README 'diagnose': status, -p err, check-config, -p warning all run"

readme journal
has 'geod\[[0-9]*\]: geo_re_resolve_complete ' "$WORK/block-journal.log" \
    || fail "'journal': no pass summary: $(cat "$WORK/block-journal.log")"
has '"PRIORITY" : "6"' "$WORK/block-journal.log" \
    || fail "'journal': no PRIORITY in json-pretty: $(tail -20 "$WORK/block-journal.log")"
ok "README 'journal': -p warning, the pass summaries, -b -p err, json-pretty with PRIORITY all run"

[ "$(prop WatchdogUSec)" = 30s ] || fail "WatchdogUSec is $(prop WatchdogUSec)"
[ "$(prop WatchdogTimestampMonotonic)" -gt 0 ] || fail "no WATCHDOG=1 seen"
c systemctl status geod --no-pager >"$WORK/status.txt" || true
grep -qE '^ +Status: "' "$WORK/status.txt" || fail "no Status: line: $(cat "$WORK/status.txt")"
ok "watchdog armed and pinged; systemctl status shows the STATUS= line"

# -- a pro key through LoadCredential= (README "Keeping an ip-api pro key out of the config") ----

KEY=e2e-pro-key-0123456789
readme pro-key KEY=$KEY
[ "$(c stat -c '%U %a' /etc/geod/ipapi.key)" = "root 600" ] || fail "key file not root-only"
c runuser -u app -- /usr/bin/python3 -c '
import sqlite3
db = sqlite3.connect("/var/lib/app/geo.db")
db.execute("INSERT INTO geo_cache (ip) VALUES (?)", ("1.0.0.1",))
db.commit()
'
c systemctl reload geod || fail "reload with the key: $(c journalctl -u geod -n 8 --no-pager -o cat)"
for _ in $(seq 300); do c grep -q "\"key\": \"$KEY\"" /tmp/fake-ipapi.jsonl && break; sleep 0.1; done
c grep -q "\"key\": \"$KEY\"" /tmp/fake-ipapi.jsonl || fail "the key did not reach ip-api"
if c journalctl --no-pager | has "$KEY"; then fail "the key is in the journal"; fi
ok "pro key from LoadCredential= + key_file reached ip-api, and never the journal"

# -- priorities: the journal's PRIORITY fields ---------------------------------------------------

c journalctl -u geod --no-pager -o json | "$PYTHON" -c '
import json, sys
ours = [e for e in map(json.loads, sys.stdin) if e.get("SYSLOG_IDENTIFIER") == "geod"]
levels = {}
for entry in ours:
    event = entry["MESSAGE"].split(" ", 1)[0]
    levels.setdefault(event, set()).add(entry["PRIORITY"])
    assert not entry["MESSAGE"][:1].isdigit(), entry["MESSAGE"]  # no timestamp of our own
assert levels["geod:"] == {"3"}, levels  # every fatal reason (start-up, refused reload) at err
assert levels["geo_re_resolve_complete"] == {"6"}, levels
assert levels["geod_starting"] == {"6"}, levels
' || fail "journal entries have the wrong priorities"
if err_log | has -E '^(geo_re_resolve_complete|config_reloaded|geod_starting)'; then
    fail "info events under -p err: $(err_log)"
fi
ok "journalctl -p err holds only the reasons; passes at info"

# -- PostgreSQL: the app's table on a server, the password from LoadCredential= ----------------

if [ -n "$PGSOCK" ]; then
    c /opt/geod/bin/pip install -q --no-index --find-links /payload/wheels 'psycopg[binary]'
    c cp /etc/geod/config.toml /root/config.app
    c sh -ec "umask 077; printf '%s\n' e2e-pg-password > /etc/geod/pg-password"
    c sh -ec "cat > /etc/geod/config.toml <<CONF
[database]
url = \"postgresql://geod@/app?host=/run/postgresql&port=$PGPORT\"
password_file = \"\\\$CREDENTIALS_DIRECTORY/pg-password\"

[ipapi]
url = \"http://127.0.0.1:$FAKE_PORT/batch\"
CONF"
    c mkdir -p /etc/systemd/system/geod.service.d
    c sh -ec 'printf "[Service]\nLoadCredential=pg-password:/etc/geod/pg-password\n" \
        > /etc/systemd/system/geod.service.d/postgresql.conf'
    c systemctl daemon-reload
    since=$(c date +%s)
    c systemctl restart geod || fail "PostgreSQL start: $(c journalctl -u geod -n 10 --no-pager -o cat)"
    wait_status "2/2 resolved" 30
    "$PYTHON" "$REPO/tests/e2e/host_pg.py" insert "$PGSTATE" 1.0.0.2
    # ExecReload= runs check-config in the sandbox, where systemd 252 gives no credentials.
    c systemctl reload geod || fail "PostgreSQL reload: $(c journalctl -u geod -n 10 --no-pager -o cat)"
    wait_status "1/1 resolved" 30
    [ "$("$PYTHON" "$REPO/tests/e2e/host_pg.py" resolved "$PGSTATE")" = 3 ] \
        || fail "PostgreSQL rows not resolved"
    pg_err=$(c journalctl -u geod -p err --since "@$since" --no-pager -o cat)
    [ -z "$pg_err" ] || fail "PostgreSQL deployment logged errors: $pg_err"
    ok "PostgreSQL with the password from LoadCredential=: started, reloaded, 3 rows resolved"
    c rm /etc/systemd/system/geod.service.d/postgresql.conf /etc/geod/pg-password
    c cp /root/config.app /etc/geod/config.toml
    c systemctl daemon-reload
    c systemctl restart geod
fi

# -- upgrade and uninstall, README verbatim --------------------------------------------------------

starts=$(c journalctl -u geod --no-pager -o cat | grep -c '^geod_starting')
readme upgrade
[ "$(prop ActiveState)" = active ] || fail "not active after the upgrade"
[ "$(c journalctl -u geod --no-pager -o cat | grep -c '^geod_starting')" -gt "$starts" ] \
    || fail "no new start after the upgrade"
c grep -q '^path = "/var/lib/app/geo.db"' /etc/geod/config.toml || fail "the upgrade lost the config"
ok "README 'upgrade': reinstalled, restarted, config kept"

readme uninstall
if c systemctl cat geod >/dev/null 2>&1; then fail "the unit is still there"; fi
c test ! -e /opt/geod || fail "/opt/geod still there"
ok "README 'uninstall': unit, venv, sysusers file and man pages gone"

say "README blocks:$TIMINGS"
say "$checks checks passed in $(($(date +%s) - started)) s"
