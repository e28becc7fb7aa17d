#!/usr/bin/env bash
# Start/stop the services and the web app as separate processes (logs and pids under
# .local/), and load the seed record and a demo copy of it.
#   scripts/services.sh up|down|status
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOME_DIR="${BZPEER_HOME:-$ROOT/.local}"
RUN="$HOME_DIR/run"; LOGS="$HOME_DIR/logs"
PY="$ROOT/.local/venv/bin/python"
declare -A PORTS=([profile]=8001 [claims]=8002 [trust]=8003 [follow]=8004 [collab]=8005 [web]=8000)
# The web app last: it reads the services over HTTP (and is stopped first).
SERVICES=(profile claims trust follow collab web)
# A copy of the seed record with ORCID's example iD on record, to try a claim in the browser.
DEMO_COPY="demo:quoc-v-le"
mkdir -p "$RUN" "$LOGS"

alive() { [[ -f "$RUN/$1.pid" ]] && kill -0 "$(cat "$RUN/$1.pid")" 2>/dev/null; }

up() {
  "$PY" -m bzpeer_cli.main topics
  for s in "${SERVICES[@]}"; do
    [[ -f "$ROOT/services/$s/app.py" ]] || { echo "$s: not built yet"; continue; }
    if alive "$s"; then echo "$s: already running (pid $(cat "$RUN/$s.pid"))"; continue; fi
    HTTP_PORT="${PORTS[$s]}" SERVICE_NAME="$s" nohup "$PY" -m bzpeer_cli.main run "$s" >>"$LOGS/$s.log" 2>&1 &
    echo $! >"$RUN/$s.pid"
  done
  for s in "${SERVICES[@]}"; do
    alive "$s" || continue
    local deadline=$((SECONDS + 60))
    until curl -fsS "http://127.0.0.1:${PORTS[$s]}/ready" >/dev/null 2>&1; do
      alive "$s" || { echo "$s exited; see $LOGS/$s.log" >&2; exit 1; }
      (( SECONDS < deadline )) || { echo "$s not ready after 60 s; see $LOGS/$s.log" >&2; exit 1; }
      sleep 0.5
    done
    echo "$s: http://127.0.0.1:${PORTS[$s]} (pid $(cat "$RUN/$s.pid"), log $LOGS/$s.log)"
  done
  "$PY" -m bzpeer_cli.main seed
  "$PY" -m bzpeer_cli.main seed --demo-copy "$DEMO_COPY"
  if alive web; then
    echo "open http://127.0.0.1:${PORTS[web]}/authors/seed:quoc-v-le"
    echo "to claim: sign in with ORCID iD 0000-0002-1825-0097, then http://127.0.0.1:${PORTS[web]}/authors/$DEMO_COPY"
  fi
}

down() {
  # Every service of SERVICES, the web app first (the reverse of the start order).
  local i s
  for ((i = ${#SERVICES[@]} - 1; i >= 0; i--)); do
    s="${SERVICES[$i]}"
    [[ -f "$RUN/$s.pid" ]] || continue
    local pid; pid="$(cat "$RUN/$s.pid")"
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid"; for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid" || true
    fi
    rm -f "$RUN/$s.pid"
  done
}

status() {
  for s in "${SERVICES[@]}"; do
    if alive "$s"; then echo "$s: running (pid $(cat "$RUN/$s.pid")) on 127.0.0.1:${PORTS[$s]}"; else echo "$s: stopped"; fi
  done
}

case "${1:-}" in
  up) up ;; down) down ;; status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
