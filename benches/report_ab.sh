#!/usr/bin/env bash
# Two or more builds of `veris-jobs report` side by side over the same database:
# one discarded run of each, then each run of each build in turn (every other round
# in reverse order), then the medians of the wall time, the command's CPU time (user
# + system) and, when PostgreSQL runs on this machine as PG_USER (default postgres),
# the CPU time its processes spent meanwhile, read from /proc.
#
#   DATABASE_URL=... benches/report_ab.sh BUILD_A BUILD_B [...]
#
# RUNS (default 9) and REPORT_ARGS (default: a year by week before 2024-03-12, as
# the benchmark's year report) change what is run. It fails when the builds' answers
# differ as JSON (whitespace aside), unless ANSWERS_MAY_DIFFER=1 (a build that adds
# to the report, such as percentiles); each build's last answer is left in
# $TMPDIR/report-ab-N.json. COMMAND_ARGS runs another command than `report` (its
# whole arguments), and BEFORE_EACH is a shell command run, untimed, before every
# run: benches/job_ab.sh times the job this way.
set -euo pipefail
: "${DATABASE_URL:?set DATABASE_URL to the database to report on}"
if (($# < 2)); then
    echo "usage: DATABASE_URL=... $0 BUILD_A BUILD_B [...]" >&2
    exit 2
fi
RUNS=${RUNS:-9}
((RUNS >= 1)) || { echo "RUNS must be at least 1" >&2; exit 2; }
PG_USER=${PG_USER:-postgres}
read -ra command_args <<< "${COMMAND_ARGS:-"report ${REPORT_ARGS:-"--start-date 2023-03-13 --end-date 2024-03-11 --by week --json"}"}"
OUT=$(mktemp)
trap 'rm -f "$OUT" "$OUT.time" "$OUT.time.cpu"' EXIT
builds=("$@")

# Clock ticks used by PostgreSQL's processes, ended children included, or "n/a"
# (for a database that is not PostgreSQL, or one elsewhere).
# The postmaster is read last, so that a backend that ends meanwhile is still counted
# in its children's time.
server_ticks() {
    local postmaster total=0 pid
    if [[ $DATABASE_URL != postgres* ]]; then
        echo n/a
        return
    fi
    postmaster=$(pgrep -o -u "$PG_USER" postgres 2>/dev/null || true)
    if [[ -z $postmaster ]]; then
        echo n/a
        return
    fi
    for pid in $(pgrep -u "$PG_USER" 2>/dev/null | grep -vx "$postmaster" || true) "$postmaster"; do
        total=$((total + $(awk '{print $14 + $15 + $16 + $17}' "/proc/$pid/stat" 2>/dev/null || echo 0)))
    done
    echo "$total"
}

# Runs build number $1 once, appending "n wall user system ticks" to $OUT: the wall
# time to the microsecond (`/usr/bin/time` gives hundredths), the CPU time as
# `/usr/bin/time` reads it (Python's `getrusage` read more than the wall time for a
# single-threaded loop on these machines).
run() {
    local n=$1 before after
    if [[ -n ${BEFORE_EACH:-} ]]; then
        bash -c "$BEFORE_EACH"
    fi
    before=$(server_ticks)
    python3 - "$OUT.time" "${builds[n - 1]}" "${command_args[@]}" \
        > "${TMPDIR:-/tmp}/report-ab-$n.json" <<'PY'
import subprocess, sys, time
out = sys.argv[1]
started = time.perf_counter()
subprocess.run(["/usr/bin/time", "-f", "%U %S", "-o", out + ".cpu", *sys.argv[2:]], check=True)
wall = time.perf_counter() - started
cpu = open(out + ".cpu").read().split()
with open(out, "w") as file:
    print(wall, *cpu, file=file)
PY
    after=$(server_ticks)
    if [[ $before == n/a || $after == n/a ]]; then
        echo "$n $(cat "$OUT.time") n/a" >> "$OUT"
    else
        echo "$n $(cat "$OUT.time") $((after - before))" >> "$OUT"
    fi
}

for n in $(seq ${#builds[@]}); do
    run "$n"
done
: > "$OUT"
for round in $(seq "$RUNS"); do
    order=$(seq ${#builds[@]})
    ((round % 2 == 0)) && order=$(seq ${#builds[@]} -1 1)
    for n in $order; do
        run "$n"
    done
done

# The same JSON values in the same order (keys included), whitespace aside.
same_json() {
    python3 - "$1" "$2" <<'PY'
import json, sys
a, b = (json.load(open(p), object_pairs_hook=list) for p in sys.argv[1:])
sys.exit(a != b)
PY
}
for n in $(seq 2 ${#builds[@]}); do
    [[ ${ANSWERS_MAY_DIFFER:-0} == 1 ]] && break
    if ! same_json "${TMPDIR:-/tmp}/report-ab-1.json" "${TMPDIR:-/tmp}/report-ab-$n.json"; then
        echo "the answers of ${builds[0]} and ${builds[n - 1]} differ" >&2
        exit 1
    fi
done

python3 - "$OUT" "$(getconf CLK_TCK)" "${builds[@]}" <<'PY'
import collections, os, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    n, wall, user, system, ticks = line.split()
    runs[int(n)].append((float(wall), float(user) + float(system), None if ticks == "n/a" else int(ticks)))
tick = 1.0 / int(sys.argv[2])
print("| build | wall | the command's CPU | PostgreSQL's CPU meanwhile |")
print("|---|---:|---:|---:|")
for n, build in enumerate(sys.argv[3:], start=1):
    got = runs[n]
    wall = statistics.median(r[0] for r in got)
    cpu = statistics.median(r[1] for r in got)
    ticks = [r[2] for r in got if r[2] is not None]
    server = f"{statistics.median(ticks) * tick:.3f} s" if len(ticks) == len(got) else "n/a"
    print(f"| {build} | {wall:.3f} s | {cpu:.3f} s | {server} |")
same = "answers not compared" if sys.argv[4:] and os.environ.get("ANSWERS_MAY_DIFFER") == "1" else "the same answers"
print(f"\nmedians of {len(runs[1])} runs each, the builds alternated, {same}")
PY
