#!/usr/bin/env bash
# Local infrastructure without Docker, all on 127.0.0.1: a real Apache Kafka 4.x broker
# (KRaft, jars from Maven Central, run on this machine's Java 17) and the store: FerretDB
# 2.5 on a PostgreSQL 15 cluster of our own with the DocumentDB extension (built once by
# scripts/build-store.sh).
#
#   scripts/infra.sh up      install what is missing, start all three, wait until healthy
#   scripts/infra.sh down    stop what this script started (by process id)
#   scripts/infra.sh status  print what runs where
#   scripts/infra.sh start-kafka|stop-kafka          the broker alone (fault tests)
#   scripts/infra.sh start-ferretdb|stop-ferretdb    the store's wire server alone (fault
#                                                    tests: PostgreSQL keeps running)
#
# Everything it writes (classpath, data, logs, pids) lives under $BZPEER_HOME (default
# .local/ in the repo, ignored by git). Maven and Go keep their own caches, so a second
# `up` starts in seconds without downloading anything.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HOME_DIR="${BZPEER_HOME:-$ROOT/.local}"
RUN="$HOME_DIR/run"
LOGS="$HOME_DIR/logs"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
FERRETDB_PORT="${FERRETDB_PORT:-27017}"
POSTGRES_PORT="${POSTGRES_PORT:-15432}"
FERRETDB_VERSION="v2.5.0"
KAFKA_DATA="$HOME_DIR/data/kafka"
POSTGRES_DATA="$HOME_DIR/data/postgres"
KAFKA_CP="$HOME_DIR/kafka/classpath.txt"
FERRETDB_BIN="$HOME_DIR/bin/ferretdb-$FERRETDB_VERSION"
PG_BIN="/usr/lib/postgresql/15/bin"

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

install_store() {
  "$ROOT/scripts/build-store.sh" --check && return 0
  "$ROOT/scripts/build-store.sh"
}

as_postgres() { # PostgreSQL refuses to run as root: as root, run its commands as the postgres user
  if [[ $EUID -eq 0 ]]; then setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; else "$@"; fi
}

init_postgres() {
  [[ -f "$POSTGRES_DATA/PG_VERSION" ]] && return 0
  echo "infra: creating the PostgreSQL cluster in $POSTGRES_DATA (first run only)"
  rm -rf "$POSTGRES_DATA"; mkdir -p "$POSTGRES_DATA"
  if [[ $EUID -eq 0 ]]; then
    chown postgres:postgres "$POSTGRES_DATA"
    as_postgres test -x "$POSTGRES_DATA" \
      || die "the postgres user cannot reach $POSTGRES_DATA (a parent folder is not searchable by others)"
  fi
  chmod 700 "$POSTGRES_DATA"
  as_postgres "$PG_BIN/initdb" -D "$POSTGRES_DATA" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 \
    >"$LOGS/postgres-initdb.log" 2>&1 || die "initdb failed; see $LOGS/postgres-initdb.log"
  # DocumentDB's settings at its tag (packaging/10-preload.sh); loopback only, trusted: a
  # development store. pg_cron runs DocumentDB's background jobs.
  as_postgres tee -a "$POSTGRES_DATA/postgresql.conf" >/dev/null <<CONF
listen_addresses = '127.0.0.1'
port = $POSTGRES_PORT
unix_socket_directories = ''
max_connections = 300
shared_buffers = 512MB
shared_preload_libraries = 'pg_cron,pg_documentdb_core,pg_documentdb'
cron.database_name = 'postgres'
documentdb.enableCompact = true
documentdb.enableLetAndCollationForQueryMatch = true
documentdb.enableNowSystemVariable = true
documentdb.enableSortbyIdPushDownToPrimaryKey = true
documentdb.enableSchemaValidation = true
documentdb.enableBypassDocumentValidation = true
documentdb.enableUserCrud = true
documentdb.maxUserLimit = 100
# DocumentDB's unique indexes are exclusion constraints: racing inserts of one key can
# wait on each other and are broken up by deadlock detection, after this long (1 s by
# default); see service_runtime.store.insert_unique.
deadlock_timeout = 100ms
CONF
}

start_postgres() {
  if alive postgres; then return 0; fi
  warn_ephemeral "$POSTGRES_PORT"
  port_open "$POSTGRES_PORT" && die "127.0.0.1:$POSTGRES_PORT is taken by a process this script did not start (set POSTGRES_PORT)"
  install_store
  init_postgres
  rm -f "$POSTGRES_DATA/postmaster.pid"  # left by a killed server; the port check above says none runs
  touch "$LOGS/postgres.log"; [[ $EUID -eq 0 ]] && chown postgres "$LOGS/postgres.log"
  as_postgres "$PG_BIN/pg_ctl" -D "$POSTGRES_DATA" -l "$LOGS/postgres.log" -w -t 60 start >/dev/null \
    || die "PostgreSQL did not start; see $LOGS/postgres.log"
  head -1 "$POSTGRES_DATA/postmaster.pid" >"$RUN/postgres.pid"
  "$PG_BIN/psql" -X -q -h 127.0.0.1 -p "$POSTGRES_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 \
    -c "CREATE EXTENSION IF NOT EXISTS documentdb CASCADE" >>"$LOGS/postgres.log" 2>&1 \
    || die "CREATE EXTENSION documentdb failed; see $LOGS/postgres.log"
}

start_ferretdb() {
  if alive ferretdb; then return 0; fi
  port_open "$FERRETDB_PORT" && die "127.0.0.1:$FERRETDB_PORT is taken by a process this script did not start"
  start_postgres
  # --no-auth: FerretDB 2 authenticates by default; this store is for local development.
  nohup "$FERRETDB_BIN" --postgresql-url="postgres://postgres@127.0.0.1:$POSTGRES_PORT/postgres" \
    --no-auth --listen-addr="127.0.0.1:$FERRETDB_PORT" --debug-addr=- --telemetry=disable \
    --log-level=warn >>"$LOGS/ferretdb.log" 2>&1 &
  echo $! >"$RUN/ferretdb.pid"
  wait_port ferretdb "$FERRETDB_PORT" 30
}

stop() { # stop NAME [SIGNAL]: SIGNAL (default TERM), then KILL after a grace period
  local f="$RUN/$1.pid" sig="${2:-TERM}"
  [[ -f "$f" ]] || return 0
  local pid; pid="$(cat "$f")"
  if kill -0 "$pid" 2>/dev/null; then
    kill -s "$sig" "$pid" 2>/dev/null || true
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
  for name in kafka postgres ferretdb; do
    if alive "$name"; then echo "$name: running (pid $(cat "$RUN/$name.pid"))"; else echo "$name: stopped"; fi
  done
  echo "kafka:    127.0.0.1:$KAFKA_PORT"
  echo "postgres: 127.0.0.1:$POSTGRES_PORT (data $POSTGRES_DATA)"
  echo "ferretdb: mongodb://127.0.0.1:$FERRETDB_PORT (FerretDB $FERRETDB_VERSION)"
  echo "logs:     $LOGS"
}

mkdir -p "$RUN" "$LOGS"
case "${1:-}" in
  up) start_kafka; start_ferretdb; status ;;
  # SIGINT is PostgreSQL's fast shutdown (SIGTERM waits for every client to leave).
  down) stop ferretdb; stop postgres INT; stop kafka ;;
  status) status ;;
  start-kafka) start_kafka ;;
  stop-kafka) stop kafka ;;
  install-store) install_store ;;
  start-ferretdb) start_ferretdb ;;
  stop-ferretdb) stop ferretdb ;;
  *) echo "usage: $0 up|down|status|install-store|start-kafka|stop-kafka|start-ferretdb|stop-ferretdb" >&2; exit 2 ;;
esac
