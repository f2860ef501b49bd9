#!/usr/bin/env bash
# Local test stack for Taishi: a real single-node Apache Kafka (KRaft) and a
# single-node Elasticsearch, both on loopback, without Docker.
#
#   bash deploy/local/stack.sh up [kafka|es|all]     start (idempotent)
#   bash deploy/local/stack.sh down [kafka|es|all]   stop gracefully (keeps data)
#   bash deploy/local/stack.sh status                show what runs where
#   bash deploy/local/stack.sh reset                 down + wipe runtime data
#   bash deploy/local/stack.sh env                   print TAISHI_* settings
#
# Add --secure (or export TAISHI_ES_SECURE=1) to up/down/status/env to act on a
# second, security-enabled Elasticsearch instead (TLS, file-realm users, one
# role per institution; port 39201), which runs beside the normal one.
#
# Downloads come from Maven Central through `mvn` and are cached in
# .cache/ next to this script (plus ~/.m2), so only the first `up` is slow.
# Versions and ports live in versions.env; see README.md for the details.
set -euo pipefail

SCRIPT_DIR="$(cd -P -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=versions.env
. "$SCRIPT_DIR/versions.env"

CACHE_DIR="$SCRIPT_DIR/.cache"
STACK_DIR="$SCRIPT_DIR/.stack"
KAFKA_DIR="$STACK_DIR/kafka"
# The jar set depends on both versions, so both are in the folder name.
KAFKA_LIBS="$CACHE_DIR/kafka-$KAFKA_VERSION-log4j-$LOG4J_VERSION/libs"
ES_ZIP="$CACHE_DIR/elasticsearch-$ES_VERSION.zip"

# Two cores and CI running both servers plus the Python tests: keep heaps modest.
KAFKA_HEAP="${TAISHI_KAFKA_HEAP:-768m}"
ES_HEAP="${TAISHI_ES_HEAP:-1g}"
KAFKA_START_TIMEOUT="${TAISHI_KAFKA_START_TIMEOUT:-90}"
ES_START_TIMEOUT="${TAISHI_ES_START_TIMEOUT:-120}"
STOP_TIMEOUT="${TAISHI_STOP_TIMEOUT:-30}"
# Elasticsearch refuses to run as root; as root we run it as this system user.
ES_USER="${TAISHI_ES_USER:-taishi-es}"
HOST="127.0.0.1"

# The secure Elasticsearch (--secure): its own port, runtime dir and smaller
# heap, so it runs beside the normal one. Users and roles come from the
# institutions file through `python -m taishi.pipeline.tenancy`.
ES_SECURE_PORT="${TAISHI_ES_SECURE_PORT:-39201}"
ES_SECURE_HEAP="${TAISHI_ES_SECURE_HEAP:-512m}"
ES_SECURE_INSTITUTIONS="${TAISHI_ES_SECURE_INSTITUTIONS:-$SCRIPT_DIR/secure/institutions.toml}"
# Client side of the secure stack: generated passwords (0600) and a copy of
# the CA that signed its HTTP certificate.
SECURE_CLIENT_DIR="$STACK_DIR/es-secure-client"
SECURE_CREDENTIALS="$SECURE_CLIENT_DIR/credentials.json"
SECURE_CA="$SECURE_CLIENT_DIR/http_ca.crt"
SECURE_PIPELINE_USER="taishi-pipeline"
SECURE="${TAISHI_ES_SECURE:-0}"
[[ "$SECURE" == 1 || "$SECURE" == true ]] && SECURE=1 || SECURE=0

# Fallback runtime dir for Elasticsearch, unique per checkout so two clones
# on one machine do not share data.
REPO_ROOT="$(cd -P -- "$SCRIPT_DIR/../.." && pwd)"
REPO_HASH="$(printf '%s' "$REPO_ROOT" | sha256sum | cut -c1-10)"
ES_FALLBACK_BASE="/var/tmp/taishi-stack-$REPO_HASH"

log() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] ERROR: %s\n' "$*" >&2; exit 1; }

# Print the end of a log so a failed start explains itself without digging.
# With a byte offset (the log's size when this start began), only what this
# start wrote is shown, not the previous run's shutdown.
show_tail() {
  local file=$1 from=${2:-0}
  if [[ -s "$file" ]] && (($(file_size "$file") > from)); then
    printf '[stack] ---- last 30 lines of %s ----\n' "$file" >&2
    tail -c "+$((from + 1))" -- "$file" | tail -n 30 >&2
    printf '[stack] ---- end of %s ----\n' "$file" >&2
  fi
}

file_size() {
  if [[ -f "$1" ]]; then
    wc -c <"$1" | tr -d ' '
  else
    echo 0
  fi
}

need() {
  command -v "$1" >/dev/null 2>&1 || die "'$1' is required ($2)"
}

# True if PID is alive and its command line matches PATTERN. Checking the
# command line (not just `kill -0`) guards against a recycled pid and
# against zombies, whose cmdline is empty.
pid_matches() {
  local pid=$1 pattern=$2
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  [[ -r "/proc/$pid/cmdline" ]] || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$pattern"
}

# Print the pid stored in FILE if that process is alive and matches PATTERN.
read_pid() {
  local file=$1 pattern=$2 pid
  [[ -r "$file" ]] || return 1
  pid="$(tr -dc '0-9' <"$file")"
  pid_matches "$pid" "$pattern" || return 1
  printf '%s\n' "$pid"
}

port_open() {
  timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null
}

# SIGTERM, wait up to STOP_TIMEOUT seconds, then SIGKILL.
stop_pid() {
  local pid=$1 pattern=$2 name=$3 deadline
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  deadline=$((SECONDS + STOP_TIMEOUT))
  while pid_matches "$pid" "$pattern"; do
    if ((SECONDS >= deadline)); then
      log "$name did not stop within ${STOP_TIMEOUT}s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 1
      break
    fi
    sleep 0.5
  done
  if pid_matches "$pid" "$pattern"; then
    die "$name (pid $pid) is still running"
  fi
  log "$name stopped"
}

# ---------------------------------------------------------------- Java --

# Major version of a java binary; reads the JDK's release file when there is
# one because starting a JVM per candidate is slow.
java_major() {
  local bin=$1 release v=""
  [[ -x "$bin" ]] || return 1
  release="$(dirname -- "$bin")/../release"
  if [[ -r "$release" ]]; then
    v="$(sed -n 's/^JAVA_VERSION="\([^"]*\)".*/\1/p' "$release")"
  fi
  if [[ -z "$v" ]]; then
    v="$("$bin" -version 2>&1 | sed -n 's/.* version "\([^"]*\)".*/\1/p' | head -n 1)"
  fi
  v="${v#1.}" # "1.8.0_412" -> "8.0_412"
  v="${v%%[!0-9]*}"
  [[ -n "$v" ]] || return 1
  printf '%s\n' "$v"
}

# Newest JDK under /usr/lib/jvm with major version >= $1 (prints its home).
scan_jvm_dir() {
  local min=$1 home major best="" best_major=0
  for home in /usr/lib/jvm/*/; do
    home="${home%/}"
    major="$(java_major "$home/bin/java")" || continue
    if ((major >= min && major > best_major)); then
      best="$home"
      best_major=$major
    fi
  done
  [[ -n "$best" ]] || return 1
  printf '%s\n' "$best"
}

# Java home for Elasticsearch: the minimal zip ships no JDK and needs 21+.
es_java_home() {
  local major
  if [[ -n "${TAISHI_ES_JAVA_HOME:-}" ]]; then
    major="$(java_major "$TAISHI_ES_JAVA_HOME/bin/java")" ||
      die "TAISHI_ES_JAVA_HOME=$TAISHI_ES_JAVA_HOME has no usable bin/java"
    ((major >= 21)) || die "TAISHI_ES_JAVA_HOME is Java $major; Elasticsearch needs Java 21+"
    printf '%s\n' "$TAISHI_ES_JAVA_HOME"
    return
  fi
  scan_jvm_dir 21 || die "Java 21+ not found under /usr/lib/jvm (set TAISHI_ES_JAVA_HOME)"
}

# java binary for Kafka (17+). The default java is preferred: Kafka 4.1 is
# verified on 17 here, and the newest JDK is left to Elasticsearch.
kafka_java() {
  local bin major home
  if [[ -n "${TAISHI_KAFKA_JAVA_HOME:-}" ]]; then
    bin="$TAISHI_KAFKA_JAVA_HOME/bin/java"
    major="$(java_major "$bin")" || die "TAISHI_KAFKA_JAVA_HOME=$TAISHI_KAFKA_JAVA_HOME has no usable bin/java"
    ((major >= 17)) || die "TAISHI_KAFKA_JAVA_HOME is Java $major; Kafka $KAFKA_VERSION needs Java 17+"
    printf '%s\n' "$bin"
    return
  fi
  for bin in "${JAVA_HOME:+$JAVA_HOME/bin/java}" "$(command -v java 2>/dev/null || true)"; do
    [[ -n "$bin" ]] || continue
    if major="$(java_major "$bin")" && ((major >= 17)); then
      printf '%s\n' "$bin"
      return
    fi
  done
  home="$(scan_jvm_dir 17)" || die "Java 17+ not found on PATH or under /usr/lib/jvm (set TAISHI_KAFKA_JAVA_HOME)"
  printf '%s\n' "$home/bin/java"
}

# --------------------------------------------------------------- Kafka --

kafka_fetch() {
  [[ -f "$KAFKA_LIBS/.complete" ]] && return 0
  need mvn "it fetches Kafka from Maven Central; apt-get install maven"
  log "fetching Kafka $KAFKA_VERSION jars (first time only) into $KAFKA_LIBS"
  local work mvn_log="$CACHE_DIR/mvn-kafka.log"
  mkdir -p "$CACHE_DIR"
  work="$(mktemp -d)"
  # A throw-away pom: Kafka is not published as a distribution on Maven
  # Central, but its jars are, and copy-dependencies gathers the runtime set.
  # log4j-slf4j-impl is the slf4j 1.x binding: Kafka brings slf4j-api 1.7.x,
  # so with the slf4j2 binding the broker would log nothing.
  cat >"$work/pom.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.taishi</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>0</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-core</artifactId><version>$LOG4J_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j-impl</artifactId><version>$LOG4J_VERSION</version></dependency>
  </dependencies>
</project>
EOF
  rm -rf -- "$KAFKA_LIBS.tmp"
  if ! (cd "$work" && mvn -q -B dependency:copy-dependencies -DoutputDirectory="$KAFKA_LIBS.tmp") >"$mvn_log" 2>&1; then
    rm -rf -- "$work" "$KAFKA_LIBS.tmp"
    show_tail "$mvn_log"
    die "fetching Kafka jars failed (full log: $mvn_log)"
  fi
  rm -rf -- "$work" "$KAFKA_LIBS" "$mvn_log"
  # Rename then mark complete, so an interrupted fetch is never mistaken
  # for a finished one.
  mv -- "$KAFKA_LIBS.tmp" "$KAFKA_LIBS"
  touch "$KAFKA_LIBS/.complete"
}

# Written on every start so port overrides take effect; the data survives.
kafka_write_config() {
  mkdir -p "$KAFKA_DIR/data" "$KAFKA_DIR/logs"
  cat >"$KAFKA_DIR/server.properties" <<EOF
# Generated by stack.sh on every start; edit stack.sh, not this file.
process.roles=broker,controller
node.id=1
# Static voter set, formatted without --standalone (the tool refuses both).
controller.quorum.voters=1@$HOST:$TAISHI_KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$TAISHI_KAFKA_PORT,CONTROLLER://$HOST:$TAISHI_KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$TAISHI_KAFKA_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$KAFKA_DIR/data
num.partitions=4
auto.create.topics.enable=true
# One broker: every internal topic gets one replica.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Fewer __consumer_offsets partitions than the default 50: the first consumer
# group on a fresh node gets its coordinator sooner on a 2-core machine.
offsets.topic.num.partitions=8
# Tests should not wait 3 s for the first rebalance.
group.initial.rebalance.delay.ms=0
EOF
  cat >"$KAFKA_DIR/log4j2.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by stack.sh. Size-capped so a long-lived CI machine does not fill up. -->
<Configuration status="warn">
  <Appenders>
    <RollingFile name="file" fileName="$KAFKA_DIR/logs/server.log"
                 filePattern="$KAFKA_DIR/logs/server.log.%i">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
      <Policies><SizeBasedTriggeringPolicy size="50 MB"/></Policies>
      <DefaultRolloverStrategy max="3"/>
    </RollingFile>
  </Appenders>
  <Loggers>
    <Logger name="state.change.logger" level="warn"/>
    <Logger name="kafka.request.logger" level="warn"/>
    <Root level="info"><AppenderRef ref="file"/></Root>
  </Loggers>
</Configuration>
EOF
}

# Kafka refuses a cluster id that starts with '-'; keep it CLI-safe as well.
new_cluster_id() {
  python3 -c '
import base64, uuid
while True:
    s = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    if not s.startswith("-"):
        print(s)
        break'
}

kafka_format() {
  local java=$1 cid
  need python3 "it makes the Kafka cluster id and checks readiness"
  cid="$(new_cluster_id)"
  log "formatting Kafka storage (cluster id $cid)"
  if ! "$java" -Dlog4j2.configurationFile="$KAFKA_DIR/log4j2.xml" -cp "$KAFKA_LIBS/*" \
    kafka.tools.StorageTool format -t "$cid" -c "$KAFKA_DIR/server.properties" \
    >"$KAFKA_DIR/logs/format.log" 2>&1; then
    show_tail "$KAFKA_DIR/logs/format.log"
    die "formatting Kafka storage failed (log: $KAFKA_DIR/logs/format.log)"
  fi
}

# Ready means a Metadata request lists the broker, not merely an open port:
# the socket opens a moment before the broker has registered itself.
# Metadata v4 is the oldest version Kafka 4.x still accepts (KIP-896).
kafka_ready() {
  if ! command -v python3 >/dev/null 2>&1; then
    port_open "$TAISHI_KAFKA_PORT"
    return
  fi
  python3 - "$HOST" "$TAISHI_KAFKA_PORT" >/dev/null 2>&1 <<'PY'
import socket, struct, sys

host, port = sys.argv[1], int(sys.argv[2])
client = b"taishi-stack"
# header v1: api_key=3 (Metadata), api_version=4, correlation_id, client_id
# body v4: topics=null (all), allow_auto_topic_creation=false
body = struct.pack(">hhih", 3, 4, 7, len(client)) + client + struct.pack(">ib", -1, 0)
with socket.create_connection((host, port), timeout=3) as s:
    s.settimeout(3)
    s.sendall(struct.pack(">i", len(body)) + body)

    def read(n):
        buf = b""
        while len(buf) < n:
            chunk = s.recv(n - len(buf))
            if not chunk:
                raise EOFError("connection closed")
            buf += chunk
        return buf

    (size,) = struct.unpack(">i", read(4))
    payload = read(size)
    correlation, _throttle, brokers = struct.unpack(">iii", payload[:12])
    sys.exit(0 if correlation == 7 and brokers >= 1 else 1)
PY
}

kafka_pid() { read_pid "$KAFKA_DIR/kafka.pid" 'kafka\.Kafka'; }

# Launch Kafka without waiting for readiness (so `up all` can start
# Elasticsearch meanwhile). Prints nothing if Kafka is already running.
kafka_launch() {
  local pid java port
  mkdir -p "$KAFKA_DIR/logs"
  if pid="$(kafka_pid)"; then
    return 0
  fi
  rm -f -- "$KAFKA_DIR/kafka.pid"
  for port in "$TAISHI_KAFKA_PORT" "$TAISHI_KAFKA_CONTROLLER_PORT"; do
    if port_open "$port"; then
      die "port $port is taken by another process (not this stack's Kafka); stop it or set TAISHI_KAFKA_PORT / TAISHI_KAFKA_CONTROLLER_PORT"
    fi
  done
  kafka_fetch
  java="$(kafka_java)"
  kafka_write_config
  if [[ ! -f "$KAFKA_DIR/data/meta.properties" ]]; then
    kafka_format "$java"
  fi
  KAFKA_LOG_FROM="$(file_size "$KAFKA_DIR/logs/server.log")"
  log "starting Kafka $KAFKA_VERSION on $HOST:$TAISHI_KAFKA_PORT (heap $KAFKA_HEAP, $java)"
  # setsid: the broker must outlive this shell and not get the terminal's
  # Ctrl-C. The launcher writes its own pid, then execs the JVM, so the pid
  # file names the JVM whether or not setsid had to fork. Fd 9 (the stack
  # lock) is closed so the broker does not hold the lock forever.
  (
    cd "$KAFKA_DIR"
    setsid bash -c 'echo "$$" > kafka.pid; exec "$@"' kafka-launcher \
      "$java" "-Xms256m" "-Xmx$KAFKA_HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
      -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
      "-Dlog4j2.configurationFile=$KAFKA_DIR/log4j2.xml" \
      -cp "$KAFKA_LIBS/*" kafka.Kafka "$KAFKA_DIR/server.properties" \
      >"$KAFKA_DIR/logs/kafka.out" 2>&1 </dev/null 9>&- &
  )
  KAFKA_STARTED_AT=$SECONDS
}

kafka_fail() {
  show_tail "$KAFKA_DIR/logs/server.log" "${KAFKA_LOG_FROM:-0}"
  show_tail "$KAFKA_DIR/logs/kafka.out"
  die "$1 (logs: $KAFKA_DIR/logs/server.log, $KAFKA_DIR/logs/kafka.out)"
}

kafka_wait() {
  local deadline=$((SECONDS + KAFKA_START_TIMEOUT)) start=${KAFKA_STARTED_AT:-$SECONDS} pid=""
  while ((SECONDS < deadline)); do
    if ! pid="$(kafka_pid)"; then
      # The launcher may not have written the pid file yet.
      if ((SECONDS - start >= 5)); then
        kafka_fail "Kafka exited during start-up"
      fi
    elif kafka_ready; then
      log "Kafka up at $HOST:$TAISHI_KAFKA_PORT (pid $pid, ready $((SECONDS - start))s after launch)"
      return 0
    fi
    sleep 0.5
  done
  kafka_fail "Kafka not ready after ${KAFKA_START_TIMEOUT}s"
}

kafka_up() {
  local pid
  if pid="$(kafka_pid)"; then
    if kafka_ready; then
      log "Kafka already up at $HOST:$TAISHI_KAFKA_PORT (pid $pid)"
      return 0
    fi
    log "Kafka (pid $pid) is running but not ready yet; waiting"
    KAFKA_STARTED_AT=$SECONDS
  else
    kafka_launch
  fi
  kafka_wait
}

kafka_down() {
  local pid
  if pid="$(kafka_pid)"; then
    stop_pid "$pid" 'kafka\.Kafka' Kafka
  else
    log "Kafka is not running"
  fi
  rm -f -- "$KAFKA_DIR/kafka.pid"
}

# ------------------------------------------------------- Elasticsearch --

is_root() { ((EUID == 0)); }

# Which Elasticsearch the es_* functions act on. Both kinds share the code;
# they differ in runtime dir, port, cluster name, heap and security.
ES_KIND=plain
ES_NAME=es
ES_PORT="$TAISHI_ES_PORT"
ES_CLUSTER_NAME="taishi-local"
ES_NODE_NAME="taishi-local-1"
ES_HEAP_CUR="$ES_HEAP"
ES_LABEL="Elasticsearch"
es_select() {
  case "$1" in
    plain)
      ES_KIND=plain ES_NAME=es ES_PORT="$TAISHI_ES_PORT" ES_CLUSTER_NAME=taishi-local
      ES_NODE_NAME=taishi-local-1 ES_HEAP_CUR="$ES_HEAP" ES_LABEL="Elasticsearch"
      ;;
    secure)
      ES_KIND=secure ES_NAME=es-secure ES_PORT="$ES_SECURE_PORT" ES_CLUSTER_NAME=taishi-local-secure
      ES_NODE_NAME=taishi-secure-1 ES_HEAP_CUR="$ES_SECURE_HEAP" ES_LABEL="secure Elasticsearch"
      ;;
  esac
  ES_BASE=""
}
es_url() {
  if [[ "$ES_KIND" == secure ]]; then
    printf 'https://%s:%s\n' "$HOST" "$ES_PORT"
  else
    printf 'http://%s:%s\n' "$HOST" "$ES_PORT"
  fi
}

# Where the unpacked Elasticsearch, its data and logs live. As root it runs
# as $ES_USER, who must be able to traverse every parent folder; a clone
# under e.g. /root is not traversable, hence the /var/tmp fallback.
ES_BASE=""
es_base() {
  if [[ -z "$ES_BASE" ]]; then
    if ! is_root; then
      ES_BASE="$STACK_DIR"
    elif read_pid "$STACK_DIR/$ES_NAME/es.pid" 'org\.elasticsearch' >/dev/null; then
      # Already running somewhere: keep finding it there even if the
      # traversal check would now answer differently.
      ES_BASE="$STACK_DIR"
    elif read_pid "$ES_FALLBACK_BASE/$ES_NAME/es.pid" 'org\.elasticsearch' >/dev/null; then
      ES_BASE="$ES_FALLBACK_BASE"
    elif [[ -d "$STACK_DIR" ]] && id -u "$ES_USER" >/dev/null 2>&1 &&
      runuser -u "$ES_USER" -- test -x "$STACK_DIR" 2>/dev/null; then
      ES_BASE="$STACK_DIR"
    else
      ES_BASE="$ES_FALLBACK_BASE"
    fi
  fi
  printf '%s\n' "$ES_BASE"
}
es_dir() { printf '%s/%s\n' "$(es_base)" "$ES_NAME"; }
es_home() { printf '%s/elasticsearch-%s\n' "$(es_dir)" "$ES_VERSION"; }
es_main_log() { printf '%s/logs/%s.log\n' "$(es_dir)" "$ES_CLUSTER_NAME"; }
es_pid() { read_pid "$(es_dir)/es.pid" 'org\.elasticsearch'; }

ensure_es_user() {
  is_root || return 0
  id -u "$ES_USER" >/dev/null 2>&1 && return 0
  need useradd "it creates the system user that runs Elasticsearch"
  log "creating system user $ES_USER (Elasticsearch refuses to run as root)"
  useradd --system --user-group --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin "$ES_USER"
}

es_fetch() {
  [[ -f "$ES_ZIP.complete" ]] && return 0
  need mvn "it fetches Elasticsearch from Maven Central; apt-get install maven"
  log "fetching Elasticsearch $ES_VERSION zip (first time only) into $CACHE_DIR"
  local work mvn_log="$CACHE_DIR/mvn-es.log"
  mkdir -p "$CACHE_DIR"
  work="$(mktemp -d)"
  # The integ-test-zip is the only Elasticsearch distribution on Maven
  # Central; it is the minimal one (no bundled JDK, few modules).
  if ! (cd "$work" && mvn -q -B dependency:copy \
    "-Dartifact=org.elasticsearch.distribution.integ-test-zip:elasticsearch:$ES_VERSION:zip" \
    "-DoutputDirectory=$work/out") >"$mvn_log" 2>&1; then
    rm -rf -- "$work"
    show_tail "$mvn_log"
    die "fetching Elasticsearch failed (full log: $mvn_log)"
  fi
  mv -- "$work/out/elasticsearch-$ES_VERSION.zip" "$ES_ZIP"
  rm -rf -- "$work" "$mvn_log"
  touch "$ES_ZIP.complete"
}

es_prepare() {
  local dir home base
  base="$(es_base)"
  dir="$(es_dir)"
  home="$(es_home)"
  if [[ "$base" == "$STACK_DIR" ]]; then
    log "$ES_LABEL runtime dir: $dir"
  else
    log "$ES_LABEL runtime dir: $dir ($ES_USER cannot traverse $STACK_DIR)"
  fi
  mkdir -p "$dir/data" "$dir/logs"
  if [[ ! -f "$home/.complete" ]]; then
    need unzip "it unpacks Elasticsearch; apt-get install unzip"
    log "unpacking Elasticsearch $ES_VERSION"
    rm -rf -- "$home" "$dir/unpack.tmp"
    unzip -q "$ES_ZIP" -d "$dir/unpack.tmp"
    mv -- "$dir/unpack.tmp/elasticsearch-$ES_VERSION" "$home"
    rm -rf -- "$dir/unpack.tmp"
    touch "$home/.complete"
  fi
  if is_root; then
    # Its config dir (keystore), data, logs and pid file must be writable by
    # the ES user. The base stays root's; it only needs to be traversable.
    chmod 755 "$base"
    chown -R "$ES_USER:" "$dir"
  fi
}

# --------------------------------------------------- secure Elasticsearch --
#
# `--secure` runs a second Elasticsearch with security on: TLS on HTTP and
# transport (auto-configured on its first start), and file-realm users whose
# roles give each institution read access to its own indices only. roles.yml,
# users and users_roles are generated by `python -m taishi.pipeline.tenancy`
# from the institutions file (no JVM per user, unlike elasticsearch-users).

# Python with Taishi installed (sets TAISHI_PY); fails if there is none.
TAISHI_PY=""
taishi_python_init() {
  local py
  [[ -n "$TAISHI_PY" ]] && return 0
  for py in "${TAISHI_PYTHON:-}" "$REPO_ROOT/.venv/bin/python" "$(command -v python3 2>/dev/null || true)"; do
    [[ -n "$py" && -x "$py" ]] || continue
    if "$py" -c 'import taishi.pipeline.tenancy' 2>/dev/null; then
      TAISHI_PY="$py"
      return 0
    fi
  done
  return 1
}

need_taishi_python() {
  taishi_python_init ||
    die "the secure Elasticsearch needs a Python with Taishi installed (run \`make setup\`, or set TAISHI_PYTHON)"
}

# The file-realm users: names in order, role and password by name.
SECURE_USERS=()
declare -A SECURE_ROLE=() SECURE_PW=()

# Parse the tenancy CLI's name<TAB>role<TAB>password lines.
secure_parse_users() {
  local name role pw
  SECURE_USERS=()
  SECURE_ROLE=()
  SECURE_PW=()
  while IFS=$'\t' read -r name role pw; do
    [[ -n "$name" ]] || continue
    SECURE_USERS+=("$name")
    SECURE_ROLE[$name]=$role
    SECURE_PW[$name]=$pw
  done <<<"$1"
}

# Users and passwords as they are now; generates nothing (for env/status).
secure_read_users() {
  local out
  taishi_python_init || return 1
  out="$("$TAISHI_PY" -m taishi.pipeline.tenancy users --institutions "$ES_SECURE_INSTITUTIONS" \
    --credentials "$SECURE_CREDENTIALS" 2>/dev/null)" || return 1
  secure_parse_users "$out"
}

# Generate roles.yml, users and users_roles and install those that changed.
# Passwords come from TAISHI_ES_PASSWORD_<USER> or are generated once into
# $SECURE_CREDENTIALS (0600). Existing hashes are kept when they still match,
# so an unchanged institutions file changes nothing. Elasticsearch watches
# these files and reloads them (about every 5 s), also while it runs.
secure_sync() {
  local conf stage out f changed=0
  need_taishi_python
  conf="$(es_home)/config"
  stage="$(es_dir)/tenancy.stage"
  mkdir -p "$SECURE_CLIENT_DIR"
  chmod 700 "$SECURE_CLIENT_DIR"
  rm -rf -- "$stage"
  if ! out="$("$TAISHI_PY" -m taishi.pipeline.tenancy write --institutions "$ES_SECURE_INSTITUTIONS" \
    --credentials "$SECURE_CREDENTIALS" --existing-users "$conf/users" --out "$stage")"; then
    rm -rf -- "$stage"
    die "generating roles and users from $ES_SECURE_INSTITUTIONS failed"
  fi
  secure_parse_users "$out"
  # Staged in the runtime dir (same file system), so each mv is atomic and
  # the node never reads a half-written or not-yet-chowned file.
  for f in roles.yml users_roles users; do
    if ! cmp -s -- "$stage/$f" "$conf/$f"; then
      chmod 600 "$stage/$f"
      if is_root; then
        chown "$ES_USER:" "$stage/$f"
      fi
      mv -f -- "$stage/$f" "$conf/$f"
      changed=1
    fi
  done
  rm -rf -- "$stage"
  if ((changed)); then
    log "installed roles and ${#SECURE_USERS[@]} file-realm users from $ES_SECURE_INSTITUTIONS"
  fi
}

es_ca() { printf '%s/config/certs/http_ca.crt\n' "$(es_home)"; }

# curl as a file-realm user. The password goes in a config on stdin, so it
# never appears in a process listing.
secure_curl() {
  local user=$1 path=$2 ca pw
  ca="$(es_ca)"
  [[ -r "$ca" ]] || return 1
  pw="${SECURE_PW[$user]-}"
  pw="${pw//\\/\\\\}"
  pw="${pw//\"/\\\"}"
  printf 'user = "%s:%s"\n' "$user" "$pw" |
    curl -fsS -m 5 --cacert "$ca" -K - "https://$HOST:$ES_PORT$path" 2>/dev/null
}

# Wait until every user authenticates with its current password and role
# (right after secure_sync the node may still be reloading the files).
secure_wait_users() {
  local deadline=$((SECONDS + 30)) name body missing
  while true; do
    missing=""
    for name in "${SECURE_USERS[@]}"; do
      if ! body="$(secure_curl "$name" /_security/_authenticate)" ||
        [[ "$body" != *"\"${SECURE_ROLE[$name]}\""* ]]; then
        missing+=" $name"
      fi
    done
    [[ -z "$missing" ]] && return 0
    ((SECONDS < deadline)) || es_fail "file-realm users not accepted after 30s:$missing"
    sleep 1
  done
}

# Copy the CA to a stable path for clients (TAISHI_ELASTICSEARCH__CA_CERTS).
secure_publish_ca() {
  local ca
  ca="$(es_ca)"
  if ! cmp -s -- "$ca" "$SECURE_CA"; then
    install -m 644 -- "$ca" "$SECURE_CA"
  fi
}

# ---------------------------------------------- Elasticsearch, both kinds --

# Cluster health (not GET /, which the minimal distribution does not serve).
# Prints the status; succeeds on yellow or green.
es_health() {
  local body status
  if [[ "$ES_KIND" == secure ]]; then
    body="$(secure_curl "$SECURE_PIPELINE_USER" /_cluster/health)" || return 1
  else
    body="$(curl -fsS -m 3 "http://$HOST:$ES_PORT/_cluster/health" 2>/dev/null)" || return 1
  fi
  status="$(printf '%s' "$body" | sed -n 's/.*"status":"\([a-z]*\)".*/\1/p')"
  printf '%s\n' "$status"
  [[ "$status" == green || "$status" == yellow ]]
}

es_fail() {
  local dir
  dir="$(es_dir)"
  show_tail "$(es_main_log)" "${ES_LOG_FROM:-0}"
  show_tail "$dir/cli.out"
  die "$1 (logs: $(es_main_log), $dir/cli.out)"
}

es_port_var() {
  if [[ "$ES_KIND" == secure ]]; then echo TAISHI_ES_SECURE_PORT; else echo TAISHI_ES_PORT; fi
}

# Ready: healthy and, for the secure one, every user accepted.
es_ready_extra() {
  if [[ "$ES_KIND" == secure ]]; then
    secure_wait_users
    secure_publish_ca
  fi
}

es_up() {
  local pid java_home dir home start=$SECONDS deadline
  need curl "it checks Elasticsearch health; apt-get install curl"
  if pid="$(es_pid)"; then
    if [[ "$ES_KIND" == secure ]]; then
      secure_sync # a changed institutions file takes effect without a restart
    fi
    if es_health >/dev/null; then
      es_ready_extra
      log "$ES_LABEL already up at $(es_url) (pid $pid)"
      return 0
    fi
    log "$ES_LABEL (pid $pid) is running but not healthy yet; waiting"
  else
    if port_open "$ES_PORT"; then
      die "port $ES_PORT is taken by another process (not this stack's $ES_LABEL); stop it or set $(es_port_var)"
    fi
    java_home="$(es_java_home)"
    ensure_es_user
    ES_BASE="" # the user may be new: decide the runtime dir again
    es_fetch
    es_prepare
    dir="$(es_dir)"
    home="$(es_home)"
    if [[ "$ES_KIND" == secure ]]; then
      secure_sync # before the first start, so the node starts with its users
    fi
    rm -f -- "$dir/es.pid"
    local -a launch=(env "ES_JAVA_HOME=$java_home" "ES_JAVA_OPTS=-Xms$ES_HEAP_CUR -Xmx$ES_HEAP_CUR"
      "$home/bin/elasticsearch" -d -p "$dir/es.pid"
      -E "cluster.name=$ES_CLUSTER_NAME" -E "node.name=$ES_NODE_NAME"
      -E "path.data=$dir/data" -E "path.logs=$dir/logs"
      -E discovery.type=single-node -E "network.host=$HOST" -E "http.port=$ES_PORT"
      # A nearly full CI disk must not make shards unassignable (red health).
      -E cluster.routing.allocation.disk.threshold_enabled=false)
    # The secure one gets no security flag on purpose: on a first start with
    # xpack.security.enabled unset, Elasticsearch auto-configures security
    # (TLS certificates, CA in config/certs/http_ca.crt) and records it in
    # elasticsearch.yml. An explicit xpack.security.enabled=true would skip
    # that auto-configuration and leave HTTP without TLS.
    if [[ "$ES_KIND" == plain ]]; then
      launch+=(-E xpack.security.enabled=false)
    fi
    if is_root; then
      launch=(runuser -u "$ES_USER" -- "${launch[@]}")
    fi
    ES_LOG_FROM="$(file_size "$(es_main_log)")"
    log "starting $ES_LABEL $ES_VERSION on $(es_url) (heap $ES_HEAP_CUR, $java_home)"
    # -d daemonizes after the node has started; setsid -w detaches it from
    # this terminal's process group and still waits for the launcher's exit
    # code. The working dir must be one the ES user can enter.
    if ! (cd "$dir" && setsid -w "${launch[@]}" >"$dir/cli.out" 2>&1 </dev/null 9>&-); then
      es_fail "$ES_LABEL failed to start"
    fi
    if [[ "$ES_KIND" == secure && ! -r "$(es_ca)" ]]; then
      es_fail "no $(es_ca): security auto-configuration did not run (it only runs on a first start with an empty data dir; \`stack.sh reset\` starts over)"
    fi
  fi
  deadline=$((SECONDS + ES_START_TIMEOUT))
  while ((SECONDS < deadline)); do
    if ! pid="$(es_pid)"; then
      es_fail "$ES_LABEL exited during start-up"
    fi
    if es_health >/dev/null; then
      es_ready_extra
      log "$ES_LABEL up at $(es_url) (pid $pid, health $(es_health || true), ready after $((SECONDS - start))s)"
      return 0
    fi
    sleep 0.5
  done
  es_fail "$ES_LABEL not healthy (yellow/green) after ${ES_START_TIMEOUT}s"
}

es_down() {
  local pid
  if pid="$(es_pid)"; then
    stop_pid "$pid" 'org\.elasticsearch' "$ES_LABEL"
  else
    log "$ES_LABEL is not running"
  fi
  rm -f -- "$(es_dir)/es.pid"
}

# ------------------------------------------------------------ commands --

# Serialise up/down/reset (e.g. two CI steps racing). Children get fd 9
# closed at launch, so the lock ends with this script.
take_lock() {
  mkdir -p "$STACK_DIR"
  exec 9>"$STACK_DIR/.lock"
  if command -v flock >/dev/null 2>&1; then
    flock -w 600 9 || die "another stack.sh holds $STACK_DIR/.lock"
  fi
}

cmd_up() {
  take_lock
  case "$1" in
    kafka) kafka_up ;;
    es) es_up ;;
    es-secure)
      es_select secure
      es_up
      ;;
    all)
      # Launch Kafka first and let it boot while Elasticsearch starts.
      if kafka_pid >/dev/null; then
        es_up
        kafka_up
      else
        kafka_launch
        es_up
        kafka_wait
      fi
      ;;
  esac
}

cmd_down() {
  take_lock
  case "$1" in
    kafka) kafka_down ;;
    es) es_down ;;
    es-secure)
      es_select secure
      es_down
      ;;
    all)
      kafka_down
      es_down
      # `down` (what `make test` runs at the end) also stops a secure
      # Elasticsearch that a test or a developer left running.
      es_select secure
      if es_pid >/dev/null; then
        es_down
      fi
      es_select plain
      ;;
  esac
}

# One status line for the selected Elasticsearch; fails unless it is up.
es_status_line() {
  local pid health name=elasticsearch
  if [[ "$ES_KIND" == secure ]]; then
    name=es-secure
    secure_read_users || true
  fi
  if pid="$(es_pid)"; then
    if health="$(es_health)"; then
      printf '%-14s %-9s %s (pid %s, health %s, dir %s)\n' "$name" up "$(es_url)" "$pid" "$health" "$(es_dir)"
    else
      printf '%-14s %-9s %s (pid %s, health %s)\n' "$name" starting "$(es_url)" "$pid" "${health:-none}"
      return 1
    fi
  else
    printf '%-14s %-9s %s\n' "$name" down "$(es_url)"
    return 1
  fi
}

cmd_status() {
  local pid rc=0
  if ((SECURE)); then
    es_select secure
    es_status_line
    return
  fi
  if pid="$(kafka_pid)"; then
    if kafka_ready; then
      printf '%-14s %-9s %s (pid %s)\n' kafka up "$HOST:$TAISHI_KAFKA_PORT" "$pid"
    else
      printf '%-14s %-9s %s (pid %s, not answering yet)\n' kafka starting "$HOST:$TAISHI_KAFKA_PORT" "$pid"
      rc=1
    fi
  else
    printf '%-14s %-9s %s\n' kafka down "$HOST:$TAISHI_KAFKA_PORT"
    rc=1
  fi
  es_status_line || rc=1
  # The secure one is listed when it runs, without affecting the exit code.
  es_select secure
  if es_pid >/dev/null; then
    es_status_line || true
  fi
  es_select plain
  return "$rc"
}

cmd_reset() {
  cmd_down all
  log "wiping runtime data (cached downloads in $CACHE_DIR are kept)"
  rm -rf -- "$KAFKA_DIR" "$STACK_DIR/es" "$STACK_DIR/es-secure" "$SECURE_CLIENT_DIR"
  # The fallback dir may hold an earlier run's Elasticsearch too.
  if [[ -d "$ES_FALLBACK_BASE" ]]; then
    rm -rf -- "$ES_FALLBACK_BASE"
  fi
  log "reset done"
}

cmd_env() {
  local name
  if ((SECURE)); then
    es_select secure
    printf 'TAISHI_ELASTICSEARCH__URL=%s\n' "$(es_url)"
    printf 'TAISHI_ELASTICSEARCH__CA_CERTS=%q\n' "$SECURE_CA"
    printf 'TAISHI_ELASTICSEARCH__USERNAME=%s\n' "$SECURE_PIPELINE_USER"
    printf 'TAISHI_ES_SECURE_INSTITUTIONS=%q\n' "$ES_SECURE_INSTITUTIONS"
    printf 'TAISHI_ES_SECURE_CREDENTIALS=%q\n' "$SECURE_CREDENTIALS"
    if secure_read_users; then
      printf 'TAISHI_ELASTICSEARCH__PASSWORD=%q\n' "${SECURE_PW[$SECURE_PIPELINE_USER]}"
      printf '# file-realm users (passwords in TAISHI_ES_SECURE_CREDENTIALS or TAISHI_ES_PASSWORD_<USER>):\n'
      for name in "${SECURE_USERS[@]}"; do
        printf '#   %-30s role %s\n' "$name" "${SECURE_ROLE[$name]}"
      done
    else
      printf '# no credentials yet: run "stack.sh up es --secure" first\n'
    fi
    if [[ ! -r "$SECURE_CA" ]]; then
      printf '# the CA file appears after the first "stack.sh up es --secure"\n'
    fi
    return
  fi
  printf 'TAISHI_KAFKA__BOOTSTRAP_SERVERS=%s:%s\n' "$HOST" "$TAISHI_KAFKA_PORT"
  printf 'TAISHI_ELASTICSEARCH__URL=http://%s:%s\n' "$HOST" "$TAISHI_ES_PORT"
}

usage() {
  cat <<'EOF'
usage: stack.sh COMMAND [TARGET] [--secure]

  up [kafka|es|all]     start (default all); no-op if already up and healthy
  down [kafka|es|all]   stop gracefully (SIGTERM, SIGKILL after TAISHI_STOP_TIMEOUT s);
                        data and downloads are kept, so `up` restarts in seconds;
                        `down all` also stops the secure Elasticsearch if it runs
  status                one line per service; exit 0 only if all are up
  reset                 down all, then wipe runtime data (downloads kept)
  env                   print TAISHI_KAFKA__BOOTSTRAP_SERVERS / TAISHI_ELASTICSEARCH__URL
  kafka-stop            same as `down kafka`
  kafka-start           same as `up kafka`

  --secure (or TAISHI_ES_SECURE=1): up/down/status/env act on the secure
  Elasticsearch only (https://127.0.0.1:39201, TLS, one file-realm user and role
  per institution of TAISHI_ES_SECURE_INSTITUTIONS); `env --secure` prints its
  URL, CA file, pipeline credentials and the list of users.
EOF
}

target_arg() {
  case "${1:-all}" in
    all) echo all ;;
    kafka) echo kafka ;;
    es | elasticsearch) echo es ;;
    *)
      usage >&2
      die "unknown target '$1' (expected kafka, es or all)"
      ;;
  esac
}

# With --secure the target is the secure Elasticsearch (the default `all`
# included); Kafka has no secure variant in this stack.
secure_target() {
  if ((SECURE)); then
    [[ "$1" == kafka ]] && die "--secure applies to Elasticsearch only"
    echo es-secure
  else
    echo "$1"
  fi
}

main() {
  local cmd target arg
  local -a args=()
  for arg in "$@"; do
    if [[ "$arg" == --secure ]]; then
      SECURE=1
    else
      args+=("$arg")
    fi
  done
  set -- "${args[@]+"${args[@]}"}"
  cmd="${1:-}"
  shift || true
  case "$cmd" in
    up)
      target="$(target_arg "${1:-all}")"
      target="$(secure_target "$target")"
      cmd_up "$target"
      ;;
    down | stop)
      target="$(target_arg "${1:-all}")"
      target="$(secure_target "$target")"
      cmd_down "$target"
      ;;
    kafka-start) cmd_up kafka ;;
    kafka-stop) cmd_down kafka ;;
    status) cmd_status ;;
    reset) cmd_reset ;;
    env) cmd_env ;;
    -h | --help | help) usage ;;
    *)
      usage >&2
      exit 2
      ;;
  esac
}

main "$@"
