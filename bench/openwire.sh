#!/usr/bin/env bash
# bench/openwire.sh — ferromq's OpenWire transport against ActiveMQ 5.17.2 (KahaDB), same machine,
# same run, same client: ActiveMQ's own JMS client (bench/java/JmsBench.java, OpenWire), the
# figures of issue 4. Benchmarks, not tests.
#
# Compiles JmsBench (javac, Debian's activemq-client jars), builds ferromq (release), starts
# ActiveMQ (bench/activemq.sh, fresh KahaDB store, OpenWire on 127.0.0.1:$AMQ_OPENWIRE_PORT) and a
# standalone ferromq (tcp:// connector on a free port, fresh journal in a temp dir, sync =
# local_disk), checks that each one answers an OpenWire connection (`JmsBench probe`), warms
# both up ($WARMUP messages, 16 producers, drained; not counted), then runs, with 1 KiB
# persistent BytesMessages, every send synchronous (DeliveryMode.PERSISTENT outside a
# transaction: the stock client waits for the broker's answer):
#
#   sync   one synchronous producer          JmsBench produce --producers 1  --count $N_SYNC
#   conc   16 concurrent producers           JmsBench produce --producers 16 --count $N_CONC
#          (each its own connection and session)
#   drain  one consumer (AUTO_ACKNOWLEDGE,   fill: JmsBench produce --producers 16 --count $N_DRAIN
#          default prefetch) draining a      timed: JmsBench consume --count $N_DRAIN
#          pre-filled queue
#
# $REPS repetitions of each, alternating which broker goes first; medians reported. Each run
# uses its own queue, and a produce run's queue is drained afterwards (not timed), so every run
# starts from an empty broker. Every JmsBench run first warms its own JVM up with
# $CLIENT_WARMUP messages on "<queue>.warmup" (sent and drained, not counted).
#
# A broker that fails (no OpenWire, a JMS error, a timeout, fewer messages than sent) is
# reported as failed with the client's error and skipped from then on; the other broker's runs
# go on, the report is still written, and the script exits 1. Every JmsBench run is bounded by
# $RUN_TIMEOUT seconds and fails after $STALL seconds without a message moving (its own
# watchdog, and `timeout` around it), so nothing hangs.
#
# stdout: a markdown report (machine, table of medians with the ratio ferromq/ActiveMQ and the
# issue's targets, every run, load). stderr: progress.
# Raw data in $RESULTS: runs.jsonl (one object per run: JmsBench's RESULT json, CPU seconds of
# the broker process and of the client, the broker's fsync/fdatasync calls when perf works),
# failures.jsonl, runs/ (stdout and stderr of every JmsBench run), summary.json (the medians and
# ratios), report.md (a copy of stdout), broker logs.
#
# Priorities: the build (cargo) and javac run under `nice` so that they yield to other people's
# work on the 2 shared cores; the brokers and the client being measured run at normal priority
# (niced, they would measure the machine's other jobs). Other jobs cannot be made to yield, so
# each scenario waits for a quiet moment first and the load is recorded.
#
# Environment (defaults in brackets):
#   REPS [3]  N_SYNC [5000]  N_CONC [50000]  N_DRAIN [50000]  SIZE [1024]  MSG_TYPE [bytes|text]
#   WARMUP [100000] (per broker)  CLIENT_WARMUP [5000] (per JmsBench run)
#   SCENARIOS ["sync conc drain"]          BROKERS ["ferromq activemq"]
#   WORK [/tmp/ferromq-bench-openwire]     RESULTS [bench/results/openwire-<UTC date>]
#   FERROMQ_PORT [a free port]  AMQ_OPENWIRE_PORT [61626]  AMQ_STOMP_PORT [61623]
#   FERROMQ_SYNC [local_disk]   RUN_TIMEOUT [600] seconds per JmsBench run
#   STALL [60]                  a JmsBench run fails after this many seconds without progress
#   JAVA [Java 17 from /usr/lib/jvm, else java]  JAVA_OPTS ["-Xms256m -Xmx256m"] (client JVM)
#   BUSY_MAX [30] LOAD_WAIT [120]          before each scenario, wait up to LOAD_WAIT s for the CPU
#                                          time used by other processes to drop below BUSY_MAX %
#   NO_BUILD [0]                           1: use the existing target/release/ferromq
set -euo pipefail

ROOT=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
REPS=${REPS:-3}
N_SYNC=${N_SYNC:-5000}
N_CONC=${N_CONC:-50000}
N_DRAIN=${N_DRAIN:-50000}
SIZE=${SIZE:-1024}
MSG_TYPE=${MSG_TYPE:-bytes}
WARMUP=${WARMUP:-100000}
CLIENT_WARMUP=${CLIENT_WARMUP:-5000}
SCENARIOS=${SCENARIOS:-"sync conc drain"}
BROKERS=${BROKERS:-"ferromq activemq"}
WORK=${WORK:-/tmp/ferromq-bench-openwire}
RESULTS=${RESULTS:-$ROOT/bench/results/openwire-$(date -u +%Y%m%dT%H%M%SZ)}
FERROMQ_PORT=${FERROMQ_PORT:-}
FERROMQ_SYNC=${FERROMQ_SYNC:-local_disk}
RUN_TIMEOUT=${RUN_TIMEOUT:-600}
STALL=${STALL:-60}
JAVA_OPTS=${JAVA_OPTS:-"-Xms256m -Xmx256m"}
BUSY_MAX=${BUSY_MAX:-30}
LOAD_WAIT=${LOAD_WAIT:-120}
NO_BUILD=${NO_BUILD:-0}
export AMQ_WORK=${AMQ_WORK:-$WORK/activemq}
export AMQ_OPENWIRE_PORT=${AMQ_OPENWIRE_PORT:-61626}
export AMQ_STOMP_PORT=${AMQ_STOMP_PORT:-61623}
export AMQ_FRESH=1

JMS_CP=/usr/share/java/activemq-client.jar:/usr/share/java/geronimo-jms_1.1_spec.jar:/usr/share/java/hawtbuf.jar:/usr/share/java/slf4j-api.jar:/usr/share/java/geronimo-j2ee-management-1.1-spec.jar:/usr/share/java/slf4j-nop.jar
CLASSES=$WORK/jmsbench-classes
FERROMQ=$ROOT/target/release/ferromq   # copied into $RESULTS after the build (others may rebuild meanwhile)
declare -A URL=()
declare -A PID=()
declare -A FAILED=()                    # broker -> why it was given up on
FERROMQ_DIR=""
FERROMQ_BUILT="?"
AMQ_STARTED=0

log() { echo "openwire.sh: $*" >&2; }
. "$ROOT/bench/lib.sh"

pick_java() {
  if [ -n "${JAVA:-}" ]; then echo "$JAVA"; return; fi
  for j in /usr/lib/jvm/java-17-openjdk-*/bin/java /usr/lib/jvm/default-java/bin/java; do
    [ -x "$j" ] && { echo "$j"; return; }
  done
  command -v java
}
JAVA=$(pick_java)
JAVAC=$(dirname "$(readlink -f "$JAVA")")/javac
[ -x "$JAVAC" ] || JAVAC=$(command -v javac)

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "${PID[ferromq]:-}" ] && kill -0 "${PID[ferromq]}" 2>/dev/null; then
    kill "${PID[ferromq]}" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "${PID[ferromq]}" 2>/dev/null || break; sleep 0.2; done
    kill -9 "${PID[ferromq]}" 2>/dev/null || true
    log "stopped ferromq (pid ${PID[ferromq]})"
  fi
  if [ "$AMQ_STARTED" = 1 ]; then
    "$ROOT/bench/activemq.sh" stop || true
    cp "$AMQ_WORK/activemq.log" "$RESULTS/activemq.log" 2>/dev/null || true
  fi
  [ -n "$FERROMQ_DIR" ] && rm -rf "$FERROMQ_DIR"
  rm -f "$RESULTS/ferromq" "$RESULTS/run.time" "$RESULTS/run.perf"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Counting fsync/fdatasync calls of a process through tracepoints (cheap), if perf can.
PERF_FSYNC=0
# Counted over the client's timed phase only: perf starts with its events disabled and the client
# enables them through perf's control fifos (perf >= 5.10).
if command -v perf > /dev/null && perf stat -x, -e syscalls:sys_enter_fdatasync true > /dev/null 2>&1 \
   && [[ "$(perf stat -h 2>&1 || true)" == *--control* ]]; then
  PERF_FSYNC=1
fi

# fail BROKER WHAT MESSAGE: give up on BROKER for the rest of the run, say why, keep going.
fail() {
  local broker=$1 what=$2 msg=$3
  FAILED[$broker]="$what: $msg"
  log "FAILED: $broker, $what: $msg"
  log "         (no more runs against $broker; the other broker's runs continue; exit status will be 1)"
  jq -nc --arg b "$broker" --arg w "$what" --arg m "$msg" '{broker: $b, what: $w, error: $m}' \
    >> "$RESULTS/failures.jsonl"
}

# Why a JmsBench run failed: its ERROR lines, and for ferromq what its log says about OpenWire.
why() {
  local err=$1 broker=$2 rc=$3 m a l
  m=$(grep -m1 'ERROR' "$err" | sed 's/^JmsBench: ERROR: //' || true)
  a=$(grep -m1 'connection failure reported' "$err" | sed 's/^JmsBench: connection failure reported by the client[^:]*: //' || true)
  if [ -n "$a" ] && [[ "$m" != *"$a"* ]]; then m="$m; the client's transport reported: $a"; fi
  if [ -z "$m" ]; then m="exit status $rc, no error message (tail of stderr: $(tail -2 "$err" | tr '\n' ' '))"; fi
  if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then m="killed by timeout after ${RUN_TIMEOUT}s. $m"; fi
  if [ "$broker" = ferromq ] && [ -f "$RESULTS/ferromq.log" ]; then
    # What ferromq said about the connection, without timestamp and colours.
    l=$(grep -i 'openwire' "$RESULTS/ferromq.log" | tail -1 | sed 's/\x1b\[[0-9;]*m//g; s/^[0-9T:.Z-]* *//' || true)
    if [ -n "$l" ]; then m="$m; ferromq.log: $l"; fi
  fi
  echo "$m"
}

# jms BROKER SCENARIO REP MODE ARGS...: one JmsBench run. Raw output in $RESULTS/runs/; on
# success appends a line to runs.jsonl (unless SCENARIO is "-": untimed helper) and sets
# LAST_RESULT to the RESULT json; on failure calls fail and returns 1. (Not to be called in a
# subshell: FAILED and RUN_NO must stay in this shell.)
RUN_NO=0
LAST_RESULT=""
jms() {
  local broker=$1 scenario=$2 rep=$3 mode=$4; shift 4
  RUN_NO=$((RUN_NO + 1))
  local tag what
  if [ "$scenario" = - ]; then tag=$mode; what=$mode; else tag=$scenario-$rep; what="$scenario #$rep ($mode)"; fi
  tag=$(printf '%03d-%s-%s' "$RUN_NO" "$broker" "$tag")
  local out="$RESULTS/runs/$tag.out" err="$RESULTS/runs/$tag.err" timing="$RESULTS/run.time"
  local rc=0 perf_pid="" fsyncs=null
  local -a measure=()
  if [ "$scenario" != - ]; then
    # The client opens these around its timed phase only (warm-up and JVM start excluded).
    measure=(--broker-pid "${PID[$broker]}")
    if [ "$COUNTING" = 1 ]; then
      rm -f "$WORK/perf.ctl" "$WORK/perf.ack"
      mkfifo "$WORK/perf.ctl" "$WORK/perf.ack"
      perf stat -x, -D -1 --control "fifo:$WORK/perf.ctl,$WORK/perf.ack" \
        -e syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync -p "${PID[$broker]}" \
        -o "$RESULTS/run.perf" > /dev/null 2>&1 &
      perf_pid=$!
      sleep 0.3   # perf has opened its fifos
      measure+=(--perf-control "$WORK/perf.ctl,$WORK/perf.ack")
    fi
  fi
  # shellcheck disable=SC2086
  timeout -k 10 $((RUN_TIMEOUT + 30)) /usr/bin/time -f '%e %U %S' -o "$timing" \
    "$JAVA" $JAVA_OPTS -cp "$CLASSES:$JMS_CP" JmsBench "$mode" --url "${URL[$broker]}" \
      --size "$SIZE" --type "$MSG_TYPE" --timeout "$RUN_TIMEOUT" --stall "$STALL" --label "$broker $what" \
      "${measure[@]}" "$@" > "$out" 2> "$err" || rc=$?
  local result; result=$(sed -n 's/^RESULT //p' "$out" || true)
  LAST_RESULT=$result
  if [ -n "$perf_pid" ]; then
    kill -INT "$perf_pid" 2> /dev/null || true
    wait "$perf_pid" 2> /dev/null || true
    rm -f "$WORK/perf.ctl" "$WORK/perf.ack"
    if jq -e '.window.perf_counted' <<< "$result" > /dev/null 2>&1; then
      fsyncs=$(awk -F, '/sys_enter_f(data)?sync/ { n += $1 } END { print n + 0 }' "$RESULTS/run.perf")
    fi
  fi
  if [ "$rc" != 0 ] || ! jq -e . <<< "$result" > /dev/null 2>&1; then
    fail "$broker" "$what" "$(why "$err" "$broker" "$rc")"
    return 1
  fi
  grep -v '^RESULT ' "$out" | sed 's/^/  /' >&2
  if [ "$scenario" != - ]; then
    local wall cu cs
    read -r wall cu cs < <(tail -1 "$timing")
    jq -c --arg b "$broker" --arg s "$scenario" --argjson r "$rep" \
       --argjson ccpu "$(awk -v u="$cu" -v s="$cs" 'BEGIN { print u + s }')" --argjson wall "$wall" \
       --arg load "$(load1)" --argjson fsyncs "$fsyncs" --argjson counting "$COUNTING" \
       '{broker: $b, scenario: $s, rep: $r, broker_cpu_s: .window.broker_cpu_s,
         client_cpu_s: .window.client_cpu_s, broker_fsyncs: $fsyncs, counting: ($counting == 1),
         client_process_cpu_s: $ccpu, client_process_wall_s: $wall, load1_after: ($load | tonumber),
         result: .}' \
       <<< "$result" >> "$RESULTS/runs.jsonl"
  fi
}

# drain BROKER QUEUE EXPECTED: empties QUEUE (not timed); fewer than EXPECTED is a failure.
drain() {
  local broker=$1 queue=$2 want=$3 got
  jms "$broker" - 0 drain --queue "$queue" --count "$want" --idle 5000 --warmup 0 || return 1
  got=$(jq '.received' <<< "$LAST_RESULT")
  if [ "$got" != "$want" ]; then
    fail "$broker" "drain of $queue" "received $got of the $want messages sent"
    return 1
  fi
}

start_ferromq() {
  if [ -z "$FERROMQ_PORT" ]; then
    FERROMQ_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  fi
  URL[ferromq]="tcp://127.0.0.1:$FERROMQ_PORT"
  FERROMQ_DIR=$(mktemp -d "$WORK/ferromq.XXXXXX")
  cat > "$RESULTS/ferromq.toml" <<TOML
[transport]
connectors = ["tcp://127.0.0.1:$FERROMQ_PORT"]
[store]
directory = "$FERROMQ_DIR/data"
sync = "$FERROMQ_SYNC"
TOML
  if port_open "$FERROMQ_PORT"; then fail ferromq start "port $FERROMQ_PORT is already in use"; return 1; fi
  "$FERROMQ" broker --config "$RESULTS/ferromq.toml" > "$RESULTS/ferromq.log" 2>&1 < /dev/null &
  PID[ferromq]=$!
  local deadline=$(( $(date +%s) + 30 ))
  until port_open "$FERROMQ_PORT"; do
    if ! kill -0 "${PID[ferromq]}" 2>/dev/null || [ "$(date +%s)" -ge "$deadline" ]; then
      fail ferromq start "did not start; tail of its log: $(tail -5 "$RESULTS/ferromq.log" | tr '\n' ' ')"
      return 1
    fi
    sleep 0.1
  done
  log "ferromq up, pid ${PID[ferromq]}, ${URL[ferromq]}, journal $FERROMQ_DIR/data (sync=$FERROMQ_SYNC)"
}

start_activemq() {
  URL[activemq]="tcp://127.0.0.1:$AMQ_OPENWIRE_PORT"
  AMQ_STARTED=1
  if ! "$ROOT/bench/activemq.sh" start; then fail activemq start "bench/activemq.sh start failed"; return 1; fi
  PID[activemq]=$(cat "$AMQ_WORK/activemq.pid")
}

alive() { [ -z "${FAILED[$1]:-}" ]; }

# For run_scenarios (bench/lib.sh): a broker that already failed is skipped, a failing run is
# reported and the other broker's runs go on.
run_scenario() { alive "$3" || return 0; run_jms_scenario "$@" || true; }
any_broker_left() { local b; for b in $BROKERS; do alive "$b" && return 0; done; return 1; }

run_jms_scenario() {
  local scenario=$1 rep=$2 broker=$3 q="bench.$1.$2"
  case $scenario in
    sync)  jms "$broker" sync "$rep" produce --queue "$q" --producers 1 --count "$N_SYNC" --warmup "$CLIENT_WARMUP" \
             && drain "$broker" "$q" "$N_SYNC" ;;
    conc)  jms "$broker" conc "$rep" produce --queue "$q" --producers 16 --count "$N_CONC" --warmup "$CLIENT_WARMUP" \
             && drain "$broker" "$q" "$N_CONC" ;;
    drain) jms "$broker" fill "$rep" produce --queue "$q" --producers 16 --count "$N_DRAIN" --warmup 0 \
             && jms "$broker" drain "$rep" consume --queue "$q" --count "$N_DRAIN" --warmup "$CLIENT_WARMUP" ;;
    *) log "unknown scenario $scenario"; exit 2 ;;
  esac
}

# ---------------------------------------------------------------------------------------------
mkdir -p "$WORK" "$RESULTS/runs"
: > "$RESULTS/runs.jsonl"
: > "$RESULTS/loads.jsonl"
: > "$RESULTS/failures.jsonl"

for j in ${JMS_CP//:/ }; do
  [ -f "$j" ] || { log "$j missing (Debian packages activemq / libactivemq-java, libgeronimo-jms-1.1-spec-java, libslf4j-java)"; exit 1; }
done
log "javac JmsBench ($JAVAC)"
rm -rf "$CLASSES"; mkdir -p "$CLASSES"
nice "$JAVAC" -nowarn -cp "$JMS_CP" -d "$CLASSES" "$ROOT/bench/java/JmsBench.java"

if [[ " $BROKERS " == *" ferromq "* ]]; then
  if [ "$NO_BUILD" != 1 ]; then
    log "nice cargo build --release"
    if ! (cd "$ROOT" && nice cargo build --release --quiet) 2> "$RESULTS/build.log"; then
      fail ferromq build "cargo build --release failed; see $RESULTS/build.log"
    fi
  fi
  if alive ferromq; then
    if [ -x "$FERROMQ" ]; then
      # Run a private copy: a `cargo build` elsewhere in the tree must not swap the binary mid-run.
      FERROMQ_BUILT=$(date -u -r "$FERROMQ" '+%Y-%m-%d %H:%M UTC')
      cp "$FERROMQ" "$RESULTS/ferromq"
      FERROMQ=$RESULTS/ferromq
    else
      fail ferromq build "$FERROMQ does not exist"
    fi
  fi
fi

log "measuring append+fdatasync on $WORK"
FSYNC_JSON=$(python3 "$ROOT/bench/fsync.py" "$WORK" --count 3000 --json)

for b in $BROKERS; do
  alive "$b" || continue
  case $b in
    ferromq) start_ferromq || true ;;
    activemq) start_activemq || true ;;
    *) log "unknown broker $b"; exit 2 ;;
  esac
done

# Does each broker speak OpenWire to the stock client at all?
for b in $BROKERS; do
  alive "$b" || continue
  log "probe $b at ${URL[$b]}"
  jms "$b" - 0 probe --timeout 30 || true
done

for b in $BROKERS; do
  left=$WARMUP
  while alive "$b" && [ "$left" -gt 0 ]; do
    n=$(( left < 20000 ? left : 20000 )); left=$(( left - n ))
    log "warm-up $b: $n messages (not counted)"
    jms "$b" - 0 produce --queue bench.warmup --producers 16 --count "$n" --warmup 0 \
      && drain "$b" bench.warmup "$n" || true
  done
done

run_scenarios

# ---------------------------------------------------------------------------------------------
{
  echo "# ferromq vs ActiveMQ 5.17.2 (KahaDB) over OpenWire, ActiveMQ's JMS client: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "## Machine"
  echo
  echo '```'
  machine_lines
  echo "ferromq: $(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- src Cargo.toml || echo ' + uncommitted changes in src/'), $(rustc --version 2>/dev/null), binary built $FERROMQ_BUILT, sync=$FERROMQ_SYNC${URL[ferromq]:+, ${URL[ferromq]}}"
  echo "activemq: $(dpkg-query -W -f '${Version}' activemq 2>/dev/null), $("$JAVA" -version 2>&1 | head -1), heap ${AMQ_HEAP:-512M}, KahaDB defaults, tcp://127.0.0.1:$AMQ_OPENWIRE_PORT"
  echo "client:  bench/java/JmsBench.java: ActiveMQ 5.17.2 JMS client (OpenWire, stock settings), $("$JAVA" -version 2>&1 | head -1), $JAVA_OPTS"
  echo "         ${SIZE}-byte $([ "$MSG_TYPE" = text ] && echo TextMessage || echo BytesMessage), PERSISTENT, synchronous send; client warm-up $CLIENT_WARMUP msgs per run, broker warm-up $WARMUP"
  echo '```'
  echo
  PYTHONPATH="$ROOT/bench" python3 - "$RESULTS/runs.jsonl" "$RESULTS/loads.jsonl" "$RESULTS/failures.jsonl" "$REPS" "$RESULTS/summary.json" <<'PY'
import json, sys
from report import add_fsync_counts, lines, load_table, results_table, summarize, timed_and_counted

(runs, counted), loads, failures = timed_and_counted(lines(sys.argv[1])), lines(sys.argv[2]), lines(sys.argv[3])
loads = {l["scenario"]: l for l in loads}
reps = sys.argv[4]
names = {"sync": "1 producer, sync (--producers 1)",
         "conc": "16 producers (--producers 16)",
         "drain": "1 consumer draining (AUTO_ACK)"}
targets = {"sync": 2.0, "conc": 10.0, "drain": 1.0}
failed = {}
for f in failures:
    failed.setdefault(f["broker"], f)

def figures(r):
    x = r["result"]
    lat = x.get("latency_us") or {}
    n = x.get("received", x.get("count"))
    return {"rate": x["msgs_per_sec"], "mbps": x["mb_per_sec"], "p50": lat.get("p50"), "p99": lat.get("p99"),
            "bcpu": r["broker_cpu_s"] / n * 1e6 if n and r.get("broker_cpu_s") is not None else None,
            "per_fsync": n / r["broker_fsyncs"] if r.get("broker_fsyncs") else None,
            "ccpu": r["client_cpu_s"] / n * 1e6 if n and r.get("client_cpu_s") is not None else None}

summary = summarize(runs, figures, ("sync", "conc", "drain", "fill"))
add_fsync_counts(summary, counted, figures)

results_table(summary, names, targets, f"median of up to {reps} runs each, brokers alternating", failed)
keys = {"rate": "msgs_per_sec", "mbps": "mb_per_sec", "p50": "p50_us", "p99": "p99_us",
        "bcpu": "broker_cpu_us_per_msg", "ccpu": "client_cpu_us_per_msg", "per_fsync": "msgs_per_fsync",
        "all": "msgs_per_sec_each_run"}
json.dump({"medians_of": int(reps), "scenarios": {s: {"target": targets[s],
                             **{b: {keys[k]: v for k, v in summary[(s, b)].items()} for b in ("ferromq", "activemq") if (s, b) in summary},
                             "ratio": (summary[(s, "ferromq")]["rate"] / summary[(s, "activemq")]["rate"]
                                       if (s, "ferromq") in summary and (s, "activemq") in summary else None)}
                         for s in ("sync", "conc", "drain")},
           "failures": list(failed.values())}, open(sys.argv[5], "w"), indent=1)

print("\nLatency: each synchronous send() call (until the broker's answer), median over the runs of "
      "each run's p50 and p99. Drain: createConsumer() to the last message received, AUTO_ACKNOWLEDGE, "
      "default prefetch (1000).\n")

if failed:
    print("### Failures\n")
    for b, f in failed.items():
        print(f"- **{b}** failed at {f['what']}: {f['error']}")
    print()

print("### Every run\n")
print("| scenario | broker | msg/s of each run | MB/s (median) | broker CPU µs/msg | client CPU µs/msg | msgs per fsync |")
print("|---|---|---|---:|---:|---:|---:|")
for s in ("sync", "conc", "drain", "fill"):
    for b in ("ferromq", "activemq"):
        x = summary.get((s, b))
        if x:
            per_fsync = "–" if x["per_fsync"] is None else f"{x['per_fsync']:.1f}"
            cpu = lambda v: "–" if v is None else f"{v:.1f}"
            label = "fill for drain (--producers 16)" if s == "fill" else s
            print(f"| {label} | {b} | {', '.join(f'{v:,.0f}' for v in x['all'])} | {x['mbps']:.2f} | "
                  f"{cpu(x['bcpu'])} | {cpu(x['ccpu'])} | {per_fsync} |")
print("\nCPU µs/msg: CPU seconds (user + system, all threads) used during the timed phase only "
      "(warm-up and JVM start excluded), per message; broker from /proc/PID/stat (10 ms ticks), "
      "client from its JVM. msgs per fsync: messages per fsync/fdatasync call the broker made during "
      "the timed phase of one more run of each scenario, not among the timed ones (perf tracepoints "
      "enabled by the client around it: they slow every system call); for drain, messages "
      "consumed per fsync the broker made meanwhile.\n")

if loads:
    load_table(loads)
PY
} | tee "$RESULTS/report.md"
log "raw results in $RESULTS"
if [ "${#FAILED[@]}" -gt 0 ]; then
  for b in "${!FAILED[@]}"; do log "FAILED: $b: ${FAILED[$b]}"; done
  exit 1
fi
