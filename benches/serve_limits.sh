#!/usr/bin/env bash
# What a caller can take from `serve`: the memory of the runs listing with 3,010
# stored 366-day runs, and the connections held under a flood of idle ones.
#
#   cargo build --release && benches/serve_limits.sh [path/to/veris-jobs]
#
# Prints the listing's body size and serve's resident memory (VmRSS, peak VmHWM),
# then the file descriptors and memory serve holds with as many idle connections
# open as this shell's file limit allows. Needs python3 and curl.
set -euo pipefail
BIN=${1:-target/release/veris-jobs}
DIR=$(mktemp -d)
trap 'kill $PID 2>/dev/null || true; rm -rf "$DIR"' EXIT
DB="sqlite://$DIR/runs.db"
SECRET=serve-limits-secret-0123456789
PORT=3917
"$BIN" --database-url "$DB" migrate >/dev/null
python3 - "$DIR/runs.db" <<'PY'
import datetime, json, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
start = datetime.date(2024, 1, 1)
days = [{"date": (start + datetime.timedelta(days=i)).isoformat(), "status": "written",
         "eventsRead": 1200000, "eventsSkipped": 3,
         "skipped": {"invalid_meta": 2, "missing_event": 1}, "rows": 50, "inserted": 0,
         "updated": 50, "deleted": 0, "unchanged": 0, "durationMs": 812, "error": None}
        for i in range(366)]
totals = {"eventsRead": 1200000 * 366, "eventsSkipped": 3 * 366, "rows": 50 * 366,
          "inserted": 0, "updated": 50 * 366, "deleted": 0, "unchanged": 0}
report = json.dumps({"job": "telemetry-daily", "dryRun": False, "ok": True,
                     "startDate": "2024-01-01", "endDate": "2024-12-31", "timezone": "UTC",
                     "days": days, "totals": totals, "durationMs": 297192})
summary = json.dumps({"ok": True, "dryRun": False, "totals": totals, "durationMs": 297192,
                      "failedDaysTotal": 0, "failedDays": []})
row = ("telemetry-daily", "http", "2026-11-29T10:00:00.000Z", "2026-11-29T10:05:00.000Z",
       "2024-01-01", "2024-12-31", "UTC", "ok", 366, 366, report, summary)
db.executemany("INSERT INTO job_runs (job, trigger, started_at, finished_at, start_date, "
               "end_date, timezone, status, days_done, days_total, report, summary) "
               "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", [row] * 3010)
db.commit()
print(f"3,010 runs stored, {len(report)} bytes of report each")
PY
CRON_SECRET=$SECRET "$BIN" --database-url "$DB" serve --bind 127.0.0.1:$PORT 2>/dev/null &
PID=$!
for _ in $(seq 100); do curl -s -o /dev/null http://127.0.0.1:$PORT/healthz && break; sleep 0.1; done
memory() { awk '/VmRSS|VmHWM/ {printf "%s %d MiB  ", $1, $2/1024}' /proc/$PID/status; echo; }
echo -n "serve at start: "; memory
for query in "/api/jobs/runs?limit=100" "/api/jobs/runs/3000"; do
  for _ in 1 2 3 4 5; do
    size=$(curl -s -H "Authorization: Bearer $SECRET" "http://127.0.0.1:$PORT$query" | wc -c)
  done
  echo -n "$query: $size bytes; serve: "; memory
done
python3 - "$PID" "$PORT" <<'PY'
import os, resource, socket, sys, time
pid, port = int(sys.argv[1]), int(sys.argv[2])
soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
sockets = []
for _ in range(soft - 50):
    s = socket.socket()
    s.setblocking(False)
    try:
        s.connect(("127.0.0.1", port))
    except BlockingIOError:
        pass
    sockets.append(s)
time.sleep(2)
fds = len(os.listdir(f"/proc/{pid}/fd"))
status = {l.split(":")[0]: l.split()[1] for l in open(f"/proc/{pid}/status") if len(l.split()) > 1}
print(f"{len(sockets)} idle connections opened: serve holds {fds} file descriptors, "
      f"VmRSS {int(status['VmRSS']) // 1024} MiB, VmHWM {int(status['VmHWM']) // 1024} MiB")
PY
