#!/usr/bin/env bash
# A two-shard ClickHouse cluster on loopback, for the tests and the benchmark.
#
#   cluster.sh start DIR HTTP1 TCP1 INTER1 HTTP2 TCP2 INTER2 [WATCH_PID]
#   cluster.sh stop DIR
#
# `start` runs two clickhouse-server processes (Debian's package, as plain
# processes, one config file each in DIR/s1 and DIR/s2), waits until both answer,
# and returns. With WATCH_PID, a watchdog stops them once that process is gone, so
# a test run that ends in any way leaves no server behind, and removes DIR unless
# CLICKHOUSE_KEEP_DATA=1 (the benchmark keeps its loaded events). The cluster is
# named veris_test_cluster; tables are the caller's to create.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
server=${CLICKHOUSE_SERVER:-$(command -v clickhouse-server || echo /usr/bin/clickhouse-server)}

start() {
  local dir=$1 http1=$2 tcp1=$3 inter1=$4 http2=$5 tcp2=$6 inter2=$7 watch=${8:-}
  [ -x "$server" ] || { echo "clickhouse-server not found (apt-get install clickhouse-server)" >&2; exit 3; }
  mkdir -p "$dir" && dir=$(cd "$dir" && pwd)
  local n http tcp inter
  for n in 1 2; do
    if [ "$n" = 1 ]; then http=$http1 tcp=$tcp1 inter=$inter1; else http=$http2 tcp=$tcp2 inter=$inter2; fi
    mkdir -p "$dir/s$n/log"
    sed -e "s#@DIR@#$dir/s$n#g" -e "s#@HTTP@#$http#g" -e "s#@TCP@#$tcp#g" \
        -e "s#@INTERSERVER@#$inter#g" -e "s#@TCP1@#$tcp1#g" -e "s#@TCP2@#$tcp2#g" \
        "$here/server.xml" > "$dir/s$n/config.xml"
    # Not --daemon: the process stays ours, to stop by its pid.
    ( cd "$dir/s$n" && exec "$server" --config-file="$dir/s$n/config.xml" \
        >"$dir/s$n/log/stdout.log" 2>&1 ) &
    echo $! > "$dir/s$n/pid"
    echo "$http" > "$dir/s$n/http_port"
  done
  for n in 1 2; do
    http=$(cat "$dir/s$n/http_port")
    for _ in $(seq 1 600); do
      [ "$(curl -s "http://127.0.0.1:$http/ping" 2>/dev/null || true)" = "Ok." ] && break
      if ! kill -0 "$(cat "$dir/s$n/pid")" 2>/dev/null; then
        echo "clickhouse server $n exited while starting:" >&2
        tail -n 20 "$dir/s$n/log/stdout.log" "$dir/s$n/log/clickhouse-server.err.log" >&2 || true
        stop "$dir"; exit 1
      fi
      sleep 0.1
    done
    [ "$(curl -s "http://127.0.0.1:$http/ping" 2>/dev/null || true)" = "Ok." ] \
      || { echo "clickhouse server $n did not answer within 60 s" >&2; stop "$dir"; exit 1; }
  done
  if [ -n "$watch" ]; then
    ( trap '' HUP
      while kill -0 "$watch" 2>/dev/null; do sleep 1; done
      stop "$dir"
      [ "${CLICKHOUSE_KEEP_DATA:-}" = 1 ] || rm -rf "$dir" ) >/dev/null 2>&1 </dev/null &
    disown
  fi
}

stop() {
  local dir=$1 n pid
  for n in 1 2; do
    [ -f "$dir/s$n/pid" ] || continue
    pid=$(cat "$dir/s$n/pid")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$dir/s$n/pid"
  done
}

case ${1:-} in
  start) shift; [ $# -ge 7 ] || { echo "usage: $0 start DIR HTTP1 TCP1 INTER1 HTTP2 TCP2 INTER2 [WATCH_PID]" >&2; exit 2; }; start "$@" ;;
  stop) shift; [ $# -eq 1 ] || { echo "usage: $0 stop DIR" >&2; exit 2; }; stop "$1" ;;
  *) echo "usage: $0 start|stop DIR ..." >&2; exit 2 ;;
esac
