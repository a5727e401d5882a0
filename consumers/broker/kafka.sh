#!/usr/bin/env bash
# kafka.sh - a real single-node Apache Kafka 4.x broker (KRaft, combined
# broker+controller) for local development, tests and demos.
#
# The Kafka release tarball cannot be downloaded here, so the broker is assembled
# from its published Maven Central jars (pom.xml beside this script, resolved once with
# `mvn dependency:copy-dependencies` and cached). Needs only Java 17+ and Maven.
#
# Usage:
#   scripts/kafka.sh start            fetch jars if needed, format storage, start the
#                                     broker in the background, wait until it answers
#                                     metadata; prints the bootstrap address on stdout
#                                     (already running: just prints it)
#   scripts/kafka.sh stop [--clean]   SIGTERM, wait, then SIGKILL; --clean also deletes
#                                     the data dir and the run dir (config, logs)
#   scripts/kafka.sh status           exit 0 and print the bootstrap address if running
#                                     and reachable, else exit 1
#   scripts/kafka.sh topics ARGS...   org.apache.kafka.tools.TopicCommand with
#                                     --bootstrap-server added, e.g.
#                                     topics --create --topic t1 --partitions 3
#   scripts/kafka.sh fetch            only download the jars (e.g. to warm a CI cache)
#   scripts/kafka.sh logs [N]         last N (default 100) lines of the broker log
#
# Only the bootstrap address goes to stdout (BOOT=$(scripts/kafka.sh start) works);
# progress and errors go to stderr.
#
# Environment:
#   HIDDENSTATE_KAFKA_HOME  cache/state root
#                           (default ${XDG_CACHE_HOME:-$HOME/.cache}/hiddenstate/kafka);
#                           jars in <home>/lib-<version>, per-port config, pid and
#                           logs in <home>/run-<port>
#   KAFKA_VERSION           Kafka version to fetch (default 4.4.0)
#   KAFKA_PORT              PLAINTEXT listener on 127.0.0.1 (default 9092)
#   KAFKA_CONTROLLER_PORT   CONTROLLER listener on 127.0.0.1 (default 9093)
#   KAFKA_DATA_DIR          log.dirs (default <home>/data-<port>)
#   KAFKA_NUM_PARTITIONS    num.partitions for auto-created topics (default 4)
#   KAFKA_START_TIMEOUT     seconds to wait for the broker to come up (default 90)
#   KAFKA_STOP_TIMEOUT      seconds between SIGTERM and SIGKILL (default 30)
#   KAFKA_HEAP_OPTS         broker heap (default "-Xmx512m -Xms256m")
#   KAFKA_EXTRA_PROPERTIES  extra server.properties lines (newline separated key=value),
#                           appended last so they override the defaults
#   KAFKA_SECURITY          plaintext (default) or sasl_ssl: then the listener on KAFKA_PORT
#                           is SASL_SSL (mechanisms PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) and
#                           there is no plaintext listener for clients
#   KAFKA_SSL_DIR           sasl_ssl: a directory with ca.pem (the CA certificate that signed
#                           the broker's certificate; client certificates are checked against
#                           it too) and broker.pem (the broker's unencrypted PKCS#8 private
#                           key followed by its certificate chain; its SAN must hold 127.0.0.1)
#   KAFKA_SSL_CLIENT_AUTH   sasl_ssl: none (default), requested or required (mutual TLS)
#   KAFKA_SASL_USERS        sasl_ssl: user:password[,user:password...] (letters, digits, . _ -);
#                           each user gets SCRAM-SHA-256 and SCRAM-SHA-512 credentials when the
#                           storage is formatted (change them: stop --clean) and a PLAIN login.
#                           The first user is the broker's own (inter-broker) and the one the
#                           script's tools (status, topics) use; their client settings are in
#                           <home>/run-<port>/admin.properties (mode 600)
#   JAVA_HOME               Java to use (else `java` on PATH); MAVEN_OPTS is honoured
#                           by mvn (e.g. -Dmaven.repo.local=...)
set -euo pipefail

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
POM="$SCRIPT_DIR/pom.xml"

KAFKA_VERSION="${KAFKA_VERSION:-4.4.0}"
KHOME="${HIDDENSTATE_KAFKA_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/hiddenstate/kafka}"
HOST=127.0.0.1
PORT="${KAFKA_PORT:-9092}"
CPORT="${KAFKA_CONTROLLER_PORT:-9093}"
DATA_DIR="${KAFKA_DATA_DIR:-$KHOME/data-$PORT}"
NUM_PARTITIONS="${KAFKA_NUM_PARTITIONS:-4}"
START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"
HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xmx512m -Xms256m}"
SECURITY="${KAFKA_SECURITY:-plaintext}"
SSL_DIR="${KAFKA_SSL_DIR:-}"
SSL_CLIENT_AUTH="${KAFKA_SSL_CLIENT_AUTH:-none}"
SASL_USERS="${KAFKA_SASL_USERS:-}"
BOOTSTRAP="$HOST:$PORT"

LIB_DIR="$KHOME/lib-$KAFKA_VERSION"
RUN_DIR="$KHOME/run-$PORT"
PID_FILE="$RUN_DIR/kafka.pid"
LOG_DIR="$RUN_DIR/logs"
OUT_FILE="$RUN_DIR/kafka.out"
if [[ -n "${JAVA_HOME:-}" ]]; then JAVA="$JAVA_HOME/bin/java"; else JAVA=java; fi
# short-lived CLI JVMs (storage format, topic command): small heap, fast startup
TOOL_JVM_OPTS=(-Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true)

say() { echo "kafka.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}" >&2; }

# Serialise start/stop/fetch that touch the same files (e.g. parallel test runs).
# fd 8: jar download lock, fd 9: per-port start/stop lock (closed for the broker).
lock() { # lock NAME FD
    mkdir -p "$KHOME"
    if command -v flock >/dev/null 2>&1; then
        eval "exec $2>\"\$KHOME/.lock-\$1\""
        flock -w 900 "$2" || die "could not take lock $KHOME/.lock-$1"
    fi
}

need_java() {
    command -v "$JAVA" >/dev/null 2>&1 || die "java not found (set JAVA_HOME or put java on PATH; Kafka 4 needs Java 17+)"
}

# --- jars ------------------------------------------------------------------
jars_key() { echo "$KAFKA_VERSION $(sha256sum "$POM" | cut -c1-64)"; }

ensure_jars() {
    local key; key="$(jars_key)"
    if [[ -f "$LIB_DIR/.complete" && "$(cat "$LIB_DIR/.complete")" == "$key" ]]; then
        return 0
    fi
    lock fetch 8
    # another process may have finished the download while we waited
    if [[ -f "$LIB_DIR/.complete" && "$(cat "$LIB_DIR/.complete")" == "$key" ]]; then
        return 0
    fi
    command -v mvn >/dev/null 2>&1 || die "mvn not found; it is needed once to fetch the Kafka jars"
    local tmp="$LIB_DIR.tmp.$$"
    rm -rf "$tmp"
    say "fetching Kafka $KAFKA_VERSION jars with Maven into $LIB_DIR ..."
    local mvnlog="$KHOME/mvn-fetch.log"
    if ! mvn -B -q -Dstyle.color=never -f "$POM" dependency:copy-dependencies \
            -Dkafka.version="$KAFKA_VERSION" -DincludeScope=runtime \
            -DoutputDirectory="$tmp" >"$mvnlog" 2>&1; then
        rm -rf "$tmp"
        tail -n 40 "$mvnlog" >&2 || true
        die "mvn could not resolve Kafka $KAFKA_VERSION (full output in $mvnlog)"
    fi
    [[ -f "$tmp/kafka_2.13-$KAFKA_VERSION.jar" ]] || { rm -rf "$tmp"; die "kafka_2.13-$KAFKA_VERSION.jar missing after mvn"; }
    echo "$key" >"$tmp/.complete"
    rm -rf "$LIB_DIR"
    mv "$tmp" "$LIB_DIR"
    say "jars ready ($(find "$LIB_DIR" -name '*.jar' | wc -l) jars)"
}

# --- helpers -------------------------------------------------------------------
port_open() { # port_open PORT
    timeout 2 bash -c "exec 3<>/dev/tcp/$HOST/$1" 2>/dev/null
}

# pid of the broker this script started for $PORT, if it is alive
our_pid() {
    [[ -f "$PID_FILE" ]] || return 1
    local pid; pid="$(cat "$PID_FILE" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    # guard against pid reuse: it must be our kafka.Kafka with our config
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "kafka.Kafka $RUN_DIR/server.properties" || return 1
    echo "$pid"
}

write_tools_log4j() {
    mkdir -p "$RUN_DIR"
    cat >"$RUN_DIR/tools-log4j2.properties" <<'EOF'
status = warn
appender.stderr.type = Console
appender.stderr.name = STDERR
appender.stderr.target = SYSTEM_ERR
appender.stderr.layout.type = PatternLayout
appender.stderr.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.stderr.ref = STDERR
EOF
}

run_tool() { # run_tool CLASS ARGS...
    [[ -f "$RUN_DIR/tools-log4j2.properties" ]] || write_tools_log4j
    "$JAVA" "${TOOL_JVM_OPTS[@]}" \
        -Dlog4j2.configurationFile="$RUN_DIR/tools-log4j2.properties" \
        -cp "$LIB_DIR/*" "$@"
}

# sasl_ssl: check the settings; sets USER_PAIRS, ADMIN_USER, ADMIN_PASSWORD (the first user)
check_security() {
    case "$SECURITY" in
        plaintext) return 0 ;;
        sasl_ssl) ;;
        *) die "KAFKA_SECURITY must be plaintext or sasl_ssl, not '$SECURITY'" ;;
    esac
    [[ -n "$SSL_DIR" ]] || die "KAFKA_SECURITY=sasl_ssl needs KAFKA_SSL_DIR (a directory with ca.pem and broker.pem)"
    SSL_DIR="$(cd -- "$SSL_DIR" && pwd -P)" || die "KAFKA_SSL_DIR $KAFKA_SSL_DIR is not a directory"
    local f
    for f in ca.pem broker.pem; do [[ -r "$SSL_DIR/$f" ]] || die "KAFKA_SSL_DIR has no readable $f"; done
    case "$SSL_CLIENT_AUTH" in
        none | requested | required) ;;
        *) die "KAFKA_SSL_CLIENT_AUTH must be none, requested or required" ;;
    esac
    [[ -n "$SASL_USERS" ]] || die "KAFKA_SECURITY=sasl_ssl needs KAFKA_SASL_USERS=user:password[,user:password...]"
    local pair
    IFS=, read -r -a USER_PAIRS <<<"$SASL_USERS"
    for pair in "${USER_PAIRS[@]}"; do
        [[ "$pair" =~ ^[A-Za-z0-9._-]+:[A-Za-z0-9._-]+$ ]] \
            || die "KAFKA_SASL_USERS: each entry must be user:password (letters, digits, . _ -)"
    done
    ADMIN_USER="${USER_PAIRS[0]%%:*}"
    ADMIN_PASSWORD="${USER_PAIRS[0]#*:}"
}

# does a broker on $PORT answer a metadata request (list topics)?
answers_metadata() {
    [[ -f "$RUN_DIR/tools-log4j2.properties" ]] || write_tools_log4j
    [[ -f "$RUN_DIR/admin.properties" ]] || {
        mkdir -p "$RUN_DIR"
        printf 'request.timeout.ms=5000\ndefault.api.timeout.ms=10000\n' >"$RUN_DIR/admin.properties"
    }
    timeout 30 "$JAVA" "${TOOL_JVM_OPTS[@]}" \
        -Dlog4j2.configurationFile="$RUN_DIR/tools-log4j2.properties" \
        -cp "$LIB_DIR/*" org.apache.kafka.tools.TopicCommand \
        --bootstrap-server "$BOOTSTRAP" --command-config "$RUN_DIR/admin.properties" \
        --list >/dev/null 2>&1
}

write_config() {
    mkdir -p "$RUN_DIR" "$LOG_DIR" "$DATA_DIR"
    local client=PLAINTEXT
    [[ "$SECURITY" == sasl_ssl ]] && client=SASL_SSL
    (umask 077 && : >"$RUN_DIR/server.properties")  # holds the SASL passwords in sasl_ssl mode
    cat >"$RUN_DIR/server.properties" <<EOF
# generated by scripts/kafka.sh - rewritten on every start
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$CPORT
controller.listener.names=CONTROLLER
listeners=$client://$HOST:$PORT,CONTROLLER://$HOST:$CPORT
advertised.listeners=$client://$HOST:$PORT,CONTROLLER://$HOST:$CPORT
inter.broker.listener.name=$client
listener.security.protocol.map=CONTROLLER:PLAINTEXT,$client:$client
log.dirs=$DATA_DIR
num.partitions=$NUM_PARTITIONS
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=true
delete.topic.enable=true
group.initial.rebalance.delay.ms=0
offsets.topic.replication.factor=1
# fewer internal partitions than the default 50: much faster first group/txn use
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.retention.hours=24
log.segment.bytes=104857600
EOF
    if [[ "$SECURITY" == sasl_ssl ]]; then write_security_config; else rm -f "$RUN_DIR/admin.properties"; fi
    if [[ -n "${KAFKA_EXTRA_PROPERTIES:-}" ]]; then
        printf '# KAFKA_EXTRA_PROPERTIES\n%s\n' "$KAFKA_EXTRA_PROPERTIES" >>"$RUN_DIR/server.properties"
    fi
    cat >"$RUN_DIR/log4j2.properties" <<'EOF'
status = warn
appender.file.type = RollingFile
appender.file.name = FILE
appender.file.fileName = ${sys:kafka.logs.dir}/server.log
appender.file.filePattern = ${sys:kafka.logs.dir}/server.log.%i
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
appender.file.policies.type = Policies
appender.file.policies.size.type = SizeBasedTriggeringPolicy
appender.file.policies.size.size = 50MB
appender.file.strategy.type = DefaultRolloverStrategy
appender.file.strategy.max = 3
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
EOF
    write_tools_log4j
}

# sasl_ssl: the listener's TLS and SASL settings, and the tools' client settings (admin.properties)
write_security_config() {
    local scram='org.apache.kafka.common.security.scram.ScramLoginModule required'
    local plain="org.apache.kafka.common.security.plain.PlainLoginModule required"
    plain+=" username=\"$ADMIN_USER\" password=\"$ADMIN_PASSWORD\""
    local pair
    for pair in "${USER_PAIRS[@]}"; do plain+=" user_${pair%%:*}=\"${pair#*:}\""; done
    cat >>"$RUN_DIR/server.properties" <<EOF
# KAFKA_SECURITY=sasl_ssl
ssl.keystore.type=PEM
ssl.keystore.location=$SSL_DIR/broker.pem
ssl.truststore.type=PEM
ssl.truststore.location=$SSL_DIR/ca.pem
# a SASL_SSL listener reads only the listener-prefixed setting
listener.name.sasl_ssl.ssl.client.auth=$SSL_CLIENT_AUTH
sasl.enabled.mechanisms=PLAIN,SCRAM-SHA-256,SCRAM-SHA-512
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.plain.sasl.jaas.config=$plain;
listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=$scram username="$ADMIN_USER" password="$ADMIN_PASSWORD";
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=$scram username="$ADMIN_USER" password="$ADMIN_PASSWORD";
EOF
    (umask 077 && cat >"$RUN_DIR/admin.properties" <<EOF
request.timeout.ms=5000
default.api.timeout.ms=10000
security.protocol=SASL_SSL
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=$scram username="$ADMIN_USER" password="$ADMIN_PASSWORD";
ssl.truststore.type=PEM
ssl.truststore.location=$SSL_DIR/ca.pem
EOF
    )
    if [[ "$SSL_CLIENT_AUTH" != none ]]; then  # the tools present the broker's own certificate
        printf 'ssl.keystore.type=PEM\nssl.keystore.location=%s\n' "$SSL_DIR/broker.pem" >>"$RUN_DIR/admin.properties"
    fi
}

random_cluster_id() { # 16 random bytes, base64url without padding (Kafka Uuid format)
    local id
    while :; do
        id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
        [[ "$id" != -* && ${#id} -eq 22 ]] && { echo "$id"; return; }
    done
}

format_storage() {
    if [[ -f "$DATA_DIR/meta.properties" ]]; then
        return 0
    fi
    local cid; cid="$(random_cluster_id)"
    local -a scram=()
    if [[ "$SECURITY" == sasl_ssl ]]; then  # SCRAM credentials go into the metadata log at format time
        local pair mech
        for pair in "${USER_PAIRS[@]}"; do
            for mech in SCRAM-SHA-256 SCRAM-SHA-512; do
                scram+=(--add-scram "$mech=[name=${pair%%:*},password=${pair#*:}]")
            done
        done
    fi
    say "formatting $DATA_DIR (cluster id $cid)"
    if ! run_tool kafka.tools.StorageTool format -t "$cid" -c "$RUN_DIR/server.properties" "${scram[@]}" \
            >>"$OUT_FILE" 2>&1; then
        tail -n 30 "$OUT_FILE" >&2 || true
        die "storage format failed"
    fi
}

show_log_tail() {
    say "---- last lines of $LOG_DIR/server.log ----"
    tail -n "${1:-40}" "$LOG_DIR/server.log" >&2 2>/dev/null || true
    if [[ -s "$OUT_FILE" ]]; then
        say "---- last lines of $OUT_FILE ----"
        tail -n 20 "$OUT_FILE" >&2 || true
    fi
}

# --- commands ------------------------------------------------------------------
cmd_status() {
    if our_pid >/dev/null && port_open "$PORT"; then
        echo "$BOOTSTRAP"
        return 0
    fi
    if ! our_pid >/dev/null && port_open "$PORT" && [[ -f "$LIB_DIR/.complete" ]] && need_java && answers_metadata; then
        say "a broker not started by this script answers on $BOOTSTRAP"
        echo "$BOOTSTRAP"
        return 0
    fi
    say "not running on $BOOTSTRAP"
    return 1
}

cmd_start() {
    need_java
    check_security
    ensure_jars
    lock "port-$PORT" 9
    local pid
    if pid="$(our_pid)"; then
        say "already running (pid $pid)"
        wait_ready "$pid"
        echo "$BOOTSTRAP"
        return 0
    fi
    if port_open "$PORT"; then
        if answers_metadata; then
            say "a broker not started by this script already answers on $BOOTSTRAP; using it"
            echo "$BOOTSTRAP"
            return 0
        fi
        die "port $PORT is in use by something that is not a Kafka broker"
    fi
    port_open "$CPORT" && die "controller port $CPORT is in use (set KAFKA_CONTROLLER_PORT)"

    rm -f "$PID_FILE"
    write_config
    : >"$OUT_FILE"
    format_storage

    say "starting Kafka $KAFKA_VERSION on $BOOTSTRAP (controller $HOST:$CPORT, data $DATA_DIR)"
    local -a jvm=($HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20
        -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent
        -Djava.awt.headless=true
        -Dkafka.logs.dir="$LOG_DIR"
        -Dlog4j2.configurationFile="$RUN_DIR/log4j2.properties")
    local -a launch=()
    command -v setsid >/dev/null 2>&1 && launch=(setsid)
    # the child writes its own pid, then execs java: the pidfile is the JVM's pid
    # shellcheck disable=SC2016
    "${launch[@]}" bash -c 'echo $$ >"$1"; shift; exec "$@"' _ "$PID_FILE" \
        "$JAVA" "${jvm[@]}" -cp "$LIB_DIR/*" kafka.Kafka "$RUN_DIR/server.properties" \
        >>"$OUT_FILE" 2>&1 </dev/null 8>&- 9>&- &
    disown $! 2>/dev/null || true
    local i
    for i in $(seq 50); do [[ -s "$PID_FILE" ]] && break; sleep 0.1; done
    pid="$(cat "$PID_FILE" 2>/dev/null || true)"
    [[ -n "$pid" ]] || die "broker process did not start"
    wait_ready "$pid"
    say "ready (pid $pid)"
    echo "$BOOTSTRAP"
}

wait_ready() { # wait_ready PID
    local pid="$1" deadline=$((SECONDS + START_TIMEOUT))
    while ((SECONDS < deadline)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            show_log_tail 60
            rm -f "$PID_FILE"
            die "broker exited during startup"
        fi
        if port_open "$PORT" && answers_metadata; then
            return 0
        fi
        sleep 1
    done
    show_log_tail 60
    die "broker not ready within ${START_TIMEOUT}s (still running as pid $pid; 'scripts/kafka.sh stop' to kill it)"
}

cmd_stop() {
    local clean=0 arg
    for arg in "$@"; do
        case "$arg" in
            --clean) clean=1 ;;
            *) die "stop: unknown option $arg" ;;
        esac
    done
    lock "port-$PORT" 9
    local pid
    if pid="$(our_pid)"; then
        say "stopping pid $pid"
        kill -TERM "$pid" 2>/dev/null || true
        local deadline=$((SECONDS + STOP_TIMEOUT))
        while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.5; done
        if kill -0 "$pid" 2>/dev/null; then
            say "still alive after ${STOP_TIMEOUT}s, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
        fi
        say "stopped"
    else
        say "not running (no broker started by this script on port $PORT)"
        port_open "$PORT" && say "warning: something else still listens on $BOOTSTRAP"
    fi
    rm -f "$PID_FILE"
    if ((clean)); then
        say "removing $DATA_DIR and $RUN_DIR"
        rm -rf "$DATA_DIR" "$RUN_DIR"
    fi
    return 0
}

cmd_topics() {
    need_java
    ensure_jars
    local a has_bootstrap=0
    for a in "$@"; do [[ "$a" == --bootstrap-server* ]] && has_bootstrap=1; done
    local -a conf=()  # a sasl_ssl broker: the client settings written at its start
    grep -qs '^security.protocol=' "$RUN_DIR/admin.properties" && conf=(--command-config "$RUN_DIR/admin.properties")
    if ((has_bootstrap)); then
        run_tool org.apache.kafka.tools.TopicCommand "${conf[@]}" "$@"
    else
        run_tool org.apache.kafka.tools.TopicCommand --bootstrap-server "$BOOTSTRAP" "${conf[@]}" "$@"
    fi
}

cmd_logs() {
    tail -n "${1:-100}" "$LOG_DIR/server.log"
}

main() {
    local cmd="${1:-}"
    [[ $# -gt 0 ]] && shift
    case "$cmd" in
        start) cmd_start "$@" ;;
        stop) cmd_stop "$@" ;;
        status) cmd_status "$@" ;;
        topics) cmd_topics "$@" ;;
        fetch) need_java; ensure_jars; say "jars in $LIB_DIR" ;;
        logs) cmd_logs "$@" ;;
        -h | --help | help) usage ;;
        *) usage; exit 2 ;;
    esac
}

main "$@"
