#!/usr/bin/env bash
# Local infrastructure without Docker: a real Apache Kafka 4.x broker (KRaft, jars from
# Maven Central, run on this machine's Java 17) and FerretDB v1.24.2 (built with
# `go install`, SQLite backend), both on 127.0.0.1.
#
#   scripts/infra.sh up      install what is missing, start both, wait until healthy
#   scripts/infra.sh down    stop what this script started (by process id)
#   scripts/infra.sh status  print what runs where
#
# Everything it writes (binaries, classpath, data, logs, pids) lives under $BZPEER_HOME
# (default .local/ in the repo, ignored by git). Maven and Go keep their own caches, so a
# second `up` starts in seconds without downloading anything.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOME_DIR="${BZPEER_HOME:-$ROOT/.local}"
RUN="$HOME_DIR/run"
LOGS="$HOME_DIR/logs"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
FERRETDB_PORT="${FERRETDB_PORT:-27017}"
FERRETDB_VERSION="v1.24.2"
KAFKA_DATA="$HOME_DIR/data/kafka"
FERRETDB_DATA="$HOME_DIR/data/ferretdb"
KAFKA_CP="$HOME_DIR/kafka/classpath.txt"
FERRETDB_BIN="$HOME_DIR/bin/ferretdb"

die() { echo "infra: $*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "$1 is required but not installed ($2)"; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

alive() { # alive NAME: the pid file names a running process
  local f="$RUN/$1.pid"
  [[ -f "$f" ]] && kill -0 "$(cat "$f")" 2>/dev/null
}

wait_port() { # wait_port NAME PORT SECONDS
  local name=$1 port=$2 deadline=$((SECONDS + $3))
  until port_open "$port"; do
    alive "$name" || die "$name exited during start; see $LOGS/$name.log"
    (( SECONDS < deadline )) || die "$name not listening on 127.0.0.1:$port after $3 s; see $LOGS/$name.log"
    sleep 0.3
  done
}

install_kafka() {
  [[ -s "$KAFKA_CP" && "$KAFKA_CP" -nt "$ROOT/infra/kafka/pom.xml" ]] && return 0
  need java "Java 17 or newer, e.g. apt-get install openjdk-17-jre-headless"
  need mvn "Apache Maven, e.g. apt-get install maven"
  echo "infra: resolving Apache Kafka from Maven Central (first run only)"
  mkdir -p "$(dirname "$KAFKA_CP")"
  mvn -q -B -f "$ROOT/infra/kafka/pom.xml" dependency:build-classpath \
    -Dmdep.outputFile="$KAFKA_CP.tmp" >"$LOGS/maven.log" 2>&1 \
    || die "mvn could not resolve Kafka; see $LOGS/maven.log"
  mv "$KAFKA_CP.tmp" "$KAFKA_CP"
}

install_ferretdb() {
  local patch="$ROOT/infra/ferretdb/sqlite-id-index.patch"
  [[ -x "$FERRETDB_BIN" && "$FERRETDB_BIN" -nt "$patch" ]] && return 0
  need go "Go 1.22 or newer, e.g. apt-get install golang"
  need patch "patch, e.g. apt-get install patch"
  echo "infra: building FerretDB $FERRETDB_VERSION from the Go module proxy (first run only, ~2 min)"
  # A bare `go install ...@v1.24.2` builds a binary that panics at start: the module has no
  # build/version/version.txt (FerretDB's release tooling generates it). So we fetch the
  # very same module through the proxy, add that one file, and build it with `go build`.
  local src="$HOME_DIR/src/ferretdb-$FERRETDB_VERSION" mod
  mod="$(go mod download -json "github.com/FerretDB/FerretDB@$FERRETDB_VERSION" 2>>"$LOGS/go-install.log" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [[ -n "$mod" && -d "$mod" ]] || die "go mod download of FerretDB failed; see $LOGS/go-install.log"
  rm -rf "$src"; mkdir -p "$(dirname "$src")" "$(dirname "$FERRETDB_BIN")"
  cp -r "$mod" "$src"; chmod -R u+w "$src"
  echo "$FERRETDB_VERSION" >"$src/build/version/version.txt"
  # Our one fix to FerretDB: _id lookups written the way the _id index is (see the patch).
  patch -s -p1 -d "$src" <"$patch" || die "patching FerretDB failed"
  (cd "$src" && go build -trimpath -o "$FERRETDB_BIN" ./cmd/ferretdb) >>"$LOGS/go-install.log" 2>&1 \
    || die "building FerretDB failed; see $LOGS/go-install.log"
  rm -rf "$src"
}

kafka_config() {
  cat >"$KAFKA_DATA/../kafka.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs=$KAFKA_DATA
# Topics are created by the project with explicit partition counts (contracts/topics.py).
auto.create.topics.enable=false
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
log.retention.hours=-1
PROPS
}

warn_ephemeral() { # warn_ephemeral PORT: a port in the ephemeral range can be taken by a client's self-connect
  local range lo hi
  range="$(cat /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null)" || return 0
  read -r lo hi <<<"$range"
  if (( $1 >= lo && $1 <= hi )); then
    echo "infra: warning: port $1 is in the ephemeral range $lo-$hi; a restart may find it taken (see README, Ports)" >&2
  fi
}

start_kafka() {
  if alive kafka; then return 0; fi
  warn_ephemeral "$KAFKA_PORT"
  port_open "$KAFKA_PORT" && die "127.0.0.1:$KAFKA_PORT is taken by a process this script did not start"
  install_kafka
  mkdir -p "$KAFKA_DATA"
  kafka_config
  local cp; cp="$(cat "$KAFKA_CP")"
  if [[ ! -f "$KAFKA_DATA/meta.properties" ]]; then
    local cluster_id; cluster_id="$(java -cp "$cp" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -1)"
    java -Dlog4j2.configurationFile="$ROOT/infra/kafka/log4j2.properties" -Dkafka.logs.dir="$LOGS" \
      -cp "$cp" kafka.tools.StorageTool format -t "$cluster_id" -c "$KAFKA_DATA/../kafka.properties" \
      >"$LOGS/kafka-format.log" 2>&1 || die "formatting Kafka storage failed; see $LOGS/kafka-format.log"
  fi
  nohup java -Xms256m -Xmx1g -XX:+UseG1GC -Djava.awt.headless=true \
    -Dkafka.logs.dir="$LOGS" -Dlog4j2.configurationFile="$ROOT/infra/kafka/log4j2.properties" \
    -cp "$cp" kafka.Kafka "$KAFKA_DATA/../kafka.properties" >"$LOGS/kafka.log" 2>&1 &
  echo $! >"$RUN/kafka.pid"
  wait_port kafka "$KAFKA_PORT" 90
}

start_ferretdb() {
  if alive ferretdb; then return 0; fi
  port_open "$FERRETDB_PORT" && die "127.0.0.1:$FERRETDB_PORT is taken by a process this script did not start"
  install_ferretdb
  mkdir -p "$FERRETDB_DATA"
  nohup "$FERRETDB_BIN" --handler=sqlite --sqlite-url="file:$FERRETDB_DATA/" \
    --listen-addr="127.0.0.1:$FERRETDB_PORT" --debug-addr=- --telemetry=disable \
    --log-level=warn >"$LOGS/ferretdb.log" 2>&1 &
  echo $! >"$RUN/ferretdb.pid"
  wait_port ferretdb "$FERRETDB_PORT" 30
}

stop() { # stop NAME: SIGTERM, then SIGKILL after a grace period
  local f="$RUN/$1.pid"
  [[ -f "$f" ]] || return 0
  local pid; pid="$(cat "$f")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    if kill -0 "$pid" 2>/dev/null; then
      kill -9 "$pid" 2>/dev/null || true
      # Gone for good before we return: a restart right after must find its ports free.
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    fi
  fi
  rm -f "$f"
}

status() {
  for name in kafka ferretdb; do
    if alive "$name"; then echo "$name: running (pid $(cat "$RUN/$name.pid"))"; else echo "$name: stopped"; fi
  done
  echo "kafka:    127.0.0.1:$KAFKA_PORT"
  echo "ferretdb: mongodb://127.0.0.1:$FERRETDB_PORT"
  echo "logs:     $LOGS"
}

mkdir -p "$RUN" "$LOGS"
case "${1:-}" in
  up) start_kafka; start_ferretdb; status ;;
  down) stop ferretdb; stop kafka ;;
  status) status ;;
  start-kafka) start_kafka ;;
  stop-kafka) stop kafka ;;
  start-ferretdb) start_ferretdb ;;
  stop-ferretdb) stop ferretdb ;;
  *) echo "usage: $0 up|down|status|start-kafka|stop-kafka|start-ferretdb|stop-ferretdb" >&2; exit 2 ;;
esac
