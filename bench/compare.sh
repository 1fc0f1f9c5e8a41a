#!/usr/bin/env bash
# bench/compare.sh — ferromq against ActiveMQ 5.17 (KahaDB), same machine, same run, same client.
# (This one speaks STOMP with ferromq's own client; bench/openwire.sh runs the same scenarios over
# OpenWire with ActiveMQ's JMS client, bench/java/JmsBench.java.)
#
# Builds ferromq (release), starts ActiveMQ (bench/activemq.sh) and a standalone ferromq
# (tcp://127.0.0.1:61633, journal in a temp dir, sync = local_disk), then runs
# `target/release/ferromq bench` — one STOMP client for both brokers — with 1 KiB persistent
# messages, every send confirmed by its RECEIPT before it counts:
#
#   sync   one synchronous producer          bench -p 1  -w 1 -n $N_SYNC
#   conc   16 concurrent producers           bench -p 16 -w 1 -n $N_CONC
#   drain  one consumer (ack auto) draining  bench -p 16 -w 1 -n $N_DRAIN  (fill, not timed)
#          a pre-filled queue                bench --drain-only -c 1        (timed)
#
# $REPS repetitions of each, alternating which broker goes first. Each run uses its own queue,
# and a produce run's queue is drained afterwards (not timed), so every run starts from an
# empty broker. Each broker first gets a warm-up that is not counted: $WARMUP messages sent by
# 16 producers and drained, in rounds of 20000 (ActiveMQ's CPU per message falls by half over
# its first ~100k messages while the JIT compiles; measured on the reference machine).
#
# stdout: a markdown report (machine, fsync rate, per-run figures, the table of medians with the
# ratio ferromq/ActiveMQ, load before/after each scenario). stderr: progress.
# Raw data: $RESULTS/runs.jsonl (one object per run: bench --json output, CPU seconds of the
# broker process and of the client, the broker's fsync/fdatasync calls counted by
# `perf stat` tracepoints when perf works), $RESULTS/report.md (a copy of stdout), broker logs.
#
# Environment (defaults in brackets):
#   REPS [3]  N_SYNC [5000]  N_CONC [40000]  N_DRAIN [40000]  SIZE [1024]  WARMUP [100000]
#   SCENARIOS ["sync conc drain"]      BROKERS ["ferromq activemq"]
#   WORK [/tmp/ferromq-bench]          RESULTS [$WORK/results-<date>]
#   FERROMQ_PORT [61633]  AMQ_OPENWIRE_PORT [61626]  AMQ_STOMP_PORT [61623]
#   FERROMQ_SYNC [local_disk]          (e.g. local_mem, to see what fsync costs)
#   BENCH_EXTRA [""]                   extra `ferromq bench` arguments for the timed produce runs
#                                      (e.g. "--persistent false")
#   BUSY_MAX [30] LOAD_WAIT [120]      before each scenario, wait up to LOAD_WAIT s for the CPU
#                                      time used by other processes to drop below BUSY_MAX %
#   NO_BUILD [0]                       1: use the existing target/release/ferromq
set -euo pipefail

ROOT=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
REPS=${REPS:-3}
N_SYNC=${N_SYNC:-5000}
N_CONC=${N_CONC:-40000}
N_DRAIN=${N_DRAIN:-40000}
SIZE=${SIZE:-1024}
WARMUP=${WARMUP:-100000}
SCENARIOS=${SCENARIOS:-"sync conc drain"}
BROKERS=${BROKERS:-"ferromq activemq"}
WORK=${WORK:-/tmp/ferromq-bench}
RESULTS=${RESULTS:-$WORK/results-$(date -u +%Y%m%dT%H%M%SZ)}
FERROMQ_PORT=${FERROMQ_PORT:-61633}
FERROMQ_SYNC=${FERROMQ_SYNC:-local_disk}
BENCH_EXTRA=${BENCH_EXTRA:-}
BUSY_MAX=${BUSY_MAX:-30}
LOAD_WAIT=${LOAD_WAIT:-120}
NO_BUILD=${NO_BUILD:-0}
export AMQ_WORK=${AMQ_WORK:-$WORK/activemq}
export AMQ_OPENWIRE_PORT=${AMQ_OPENWIRE_PORT:-61626}
export AMQ_STOMP_PORT=${AMQ_STOMP_PORT:-61623}
export AMQ_FRESH=1

FERROMQ=$ROOT/target/release/ferromq   # copied into $RESULTS after the build (others may rebuild meanwhile)
declare -A URL=([ferromq]="tcp://127.0.0.1:$FERROMQ_PORT" [activemq]="tcp://127.0.0.1:$AMQ_STOMP_PORT")
declare -A PID=()
FERROMQ_DIR=""
AMQ_STARTED=0

log() { echo "compare.sh: $*" >&2; }
. "$ROOT/bench/lib.sh"

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "${PID[ferromq]:-}" ] && kill -0 "${PID[ferromq]}" 2>/dev/null; then
    kill "${PID[ferromq]}" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "${PID[ferromq]}" 2>/dev/null || break; sleep 0.2; done
    kill -9 "${PID[ferromq]}" 2>/dev/null || true
    log "stopped ferromq (pid ${PID[ferromq]})"
  fi
  [ "$AMQ_STARTED" = 1 ] && "$ROOT/bench/activemq.sh" stop || true
  [ -n "$FERROMQ_DIR" ] && rm -rf "$FERROMQ_DIR"
  rm -f "$RESULTS/ferromq" "$RESULTS/run.out" "$RESULTS/run.time" "$RESULTS/run.perf"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Counting fsync/fdatasync calls of a process through tracepoints (cheap), if perf can.
PERF_FSYNC=0
if command -v perf > /dev/null && perf stat -x, -e syscalls:sys_enter_fdatasync true > /dev/null 2>&1; then
  PERF_FSYNC=1
fi

start_ferromq() {
  FERROMQ_DIR=$(mktemp -d "$WORK/ferromq.XXXXXX")
  cat > "$RESULTS/ferromq.toml" <<TOML
[transport]
connectors = ["tcp://127.0.0.1:$FERROMQ_PORT"]
[store]
directory = "$FERROMQ_DIR/data"
sync = "$FERROMQ_SYNC"
TOML
  if port_open "$FERROMQ_PORT"; then log "port $FERROMQ_PORT is already in use"; exit 1; fi
  "$FERROMQ" broker --config "$RESULTS/ferromq.toml" > "$RESULTS/ferromq.log" 2>&1 < /dev/null &
  PID[ferromq]=$!
  local deadline=$(( $(date +%s) + 30 ))
  until port_open "$FERROMQ_PORT"; do
    if ! kill -0 "${PID[ferromq]}" 2>/dev/null || [ "$(date +%s)" -ge "$deadline" ]; then
      log "ferromq did not start; tail of its log:"; tail -20 "$RESULTS/ferromq.log" >&2; exit 1
    fi
    sleep 0.1
  done
  log "ferromq up, pid ${PID[ferromq]}, ${URL[ferromq]}, journal $FERROMQ_DIR/data (sync=$FERROMQ_SYNC)"
}

start_activemq() {
  AMQ_STARTED=1
  "$ROOT/bench/activemq.sh" start
  PID[activemq]=$(cat "$AMQ_WORK/activemq.pid")
}

# bench BROKER SCENARIO REP ARGS...: one `ferromq bench --json` run; appends a line to runs.jsonl.
bench() {
  local broker=$1 scenario=$2 rep=$3; shift 3
  local out="$RESULTS/run.out" timing="$RESULTS/run.time" cpu0 cpu1 rc=0
  local perf_pid="" fsyncs=null
  if [ "$COUNTING" = 1 ]; then
    perf stat -x, -e syscalls:sys_enter_fsync,syscalls:sys_enter_fdatasync -p "${PID[$broker]}" \
      -o "$RESULTS/run.perf" 2> /dev/null &
    perf_pid=$!
    sleep 0.3   # attached before the first send
  fi
  cpu0=$(cpu_of "${PID[$broker]}")
  /usr/bin/time -f '%e %U %S' -o "$timing" \
    "$FERROMQ" bench --url "${URL[$broker]}" --size "$SIZE" --json "$@" > "$out" 2>> "$RESULTS/client.log" || rc=$?
  cpu1=$(cpu_of "${PID[$broker]}")
  if [ -n "$perf_pid" ]; then
    kill -INT "$perf_pid" 2> /dev/null || true
    wait "$perf_pid" 2> /dev/null || true
    fsyncs=$(awk -F, '/sys_enter_f(data)?sync/ { n += $1 } END { print n + 0 }' "$RESULTS/run.perf")
  fi
  if [ "$rc" != 0 ] || ! jq -e . "$out" > /dev/null 2>&1; then
    log "$broker $scenario #$rep failed (exit $rc): $(cat "$out") $(tail -3 "$RESULTS/client.log")"
    exit 1
  fi
  read -r wall cu cs < <(tail -1 "$timing")
  jq -c --arg b "$broker" --arg s "$scenario" --argjson r "$rep" \
     --argjson bcpu "$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { print b - a }')" \
     --argjson ccpu "$(awk -v u="$cu" -v s="$cs" 'BEGIN { print u + s }')" --argjson wall "$wall" \
     --arg load "$(load1)" --argjson fsyncs "$fsyncs" --argjson counting "$COUNTING" \
     '{broker: $b, scenario: $s, rep: $r, broker_cpu_s: $bcpu, client_cpu_s: $ccpu,
       client_wall_s: $wall, load1_after: ($load | tonumber), broker_fsyncs: $fsyncs,
       counting: ($counting == 1), bench: .}' \
     "$out" >> "$RESULTS/runs.jsonl"
  jq -r --arg b "$broker" --arg s "$scenario" --argjson r "$rep" '
    "\($s) #\($r) \($b): " +
    (if .produce then "produce \(.produce.msgs_per_sec | floor) msg/s p50 \(.produce.latency.p50_us | floor) µs p99 \(.produce.latency.p99_us | floor) µs"
     else "consume \(.consume.received) in \(.consume.seconds * 1000 | floor) ms: \(.consume.msgs_per_sec | floor) msg/s" end)' \
     "$out" >&2
  cat "$out"
}

# Empties DEST on BROKER (not timed).
drain() {
  local broker=$1 dest=$2 n
  n=$("$FERROMQ" bench --url "${URL[$broker]}" -d "$dest" --drain-only -c 1 --idle-timeout 2s --json \
        2>> "$RESULTS/client.log" | jq '.consume.received')
  log "  drained $n from $dest on $broker"
}

run_scenario() {
  local scenario=$1 rep=$2 broker=$3 dest="queue://bench.$1.$2"
  case $scenario in
    sync)  bench "$broker" sync "$rep" -d "$dest" -p 1 -w 1 -n "$N_SYNC" $BENCH_EXTRA > /dev/null
           drain "$broker" "$dest" ;;
    conc)  bench "$broker" conc "$rep" -d "$dest" -p 16 -w 1 -n "$N_CONC" $BENCH_EXTRA > /dev/null
           drain "$broker" "$dest" ;;
    drain) bench "$broker" fill "$rep" -d "$dest" -p 16 -w 1 -n "$N_DRAIN" > /dev/null
           local got
           got=$(bench "$broker" drain "$rep" -d "$dest" --drain-only -c 1 --idle-timeout 3s | jq '.consume.received')
           if [ "$got" != "$N_DRAIN" ]; then log "drain on $broker received $got of $N_DRAIN"; exit 1; fi ;;
    *) log "unknown scenario $scenario"; exit 2 ;;
  esac
}

# ---------------------------------------------------------------------------------------------
mkdir -p "$WORK" "$RESULTS"
: > "$RESULTS/runs.jsonl"
: > "$RESULTS/loads.jsonl"
if [ "$NO_BUILD" != 1 ]; then
  log "cargo build --release"
  (cd "$ROOT" && cargo build --release --quiet)
fi

# Run a private copy: a `cargo build` elsewhere in the tree must not swap the binary mid-run.
cp "$FERROMQ" "$RESULTS/ferromq"
FERROMQ=$RESULTS/ferromq

log "measuring append+fdatasync on $WORK"
FSYNC_JSON=$(python3 "$ROOT/bench/fsync.py" "$WORK" --count 3000 --json)

for b in $BROKERS; do
  case $b in
    ferromq) start_ferromq ;;
    activemq) start_activemq ;;
  esac
done

for b in $BROKERS; do
  left=$WARMUP
  while [ "$left" -gt 0 ]; do
    n=$(( left < 20000 ? left : 20000 )); left=$(( left - n ))
    log "warm-up $b: $n messages (not counted)"
    "$FERROMQ" bench --url "${URL[$b]}" -d queue://bench.warmup -p 16 -w 1 -n "$n" --json \
      > /dev/null 2>> "$RESULTS/client.log"
    drain "$b" queue://bench.warmup
  done
done

run_scenarios

# ---------------------------------------------------------------------------------------------
{
  echo "# ferromq vs ActiveMQ 5.17.2 (KahaDB): $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "## Machine"
  echo
  echo '```'
  machine_lines
  echo "ferromq: $(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- src Cargo.toml || echo ' + uncommitted changes in src/'), $(rustc --version), sync=$FERROMQ_SYNC"
  echo "activemq: $(dpkg-query -W -f '${Version}' activemq 2>/dev/null), $(java -version 2>&1 | head -1), heap ${AMQ_HEAP:-512M}, KahaDB defaults"
  echo "client:  target/release/ferromq bench (STOMP), ${SIZE}-byte persistent messages, RECEIPT per send${BENCH_EXTRA:+, extra: $BENCH_EXTRA}"
  echo '```'
  echo
  PYTHONPATH="$ROOT/bench" python3 - "$RESULTS/runs.jsonl" "$RESULTS/loads.jsonl" "$REPS" <<'PY'
import sys
from report import add_fsync_counts, lines, load_table, results_table, summarize, timed_and_counted

runs, counted = timed_and_counted(lines(sys.argv[1]))
loads = {l["scenario"]: l for l in lines(sys.argv[2])}
reps = sys.argv[3]
names = {"sync": "1 producer, sync (-p 1 -w 1)",
         "conc": "16 producers (-p 16 -w 1)",
         "drain": "1 consumer draining (ack auto)"}
targets = {"sync": 1.5, "conc": 10.0, "drain": 2.0}

def figures(r):
    b = r["bench"]
    f = b["produce"] if b["produce"] else b["consume"]
    lat = f.get("latency") or {}
    n = f.get("confirmed", f.get("received"))
    return {"rate": f["msgs_per_sec"], "p50": lat.get("p50_us"), "p99": lat.get("p99_us"),
            "bcpu": r["broker_cpu_s"] / n * 1e6 if n else None,
            "per_fsync": n / r["broker_fsyncs"] if r.get("broker_fsyncs") else None,
            "ccpu": r["client_cpu_s"] / n * 1e6 if n else None}

summary = summarize(runs, figures, ("sync", "conc", "drain"))
add_fsync_counts(summary, counted, figures)

results_table(summary, names, targets, f"median of {reps} runs each, brokers alternating", skip_empty=True)
print("\nLatency: send to RECEIPT, median over the runs of each run's p50 and p99. "
      "Drain: first SUBSCRIBE to last message received, ack auto, default prefetch.\n")

print("### Every run\n")
print("| scenario | broker | msg/s of each run | broker CPU µs/msg | client CPU µs/msg | msgs per fsync |")
print("|---|---|---|---:|---:|---:|")
for s in ("sync", "conc", "drain"):
    for b in ("ferromq", "activemq"):
        x = summary.get((s, b))
        if x:
            per_fsync = "–" if x["per_fsync"] is None else f"{x['per_fsync']:.1f}"
            print(f"| {s} | {b} | {', '.join(f'{v:,.0f}' for v in x['all'])} | "
                  f"{x['bcpu']:.1f} | {x['ccpu']:.1f} | {per_fsync} |")
fills = [r for r in runs if r["scenario"] == "fill"]
if fills:
    for b in ("ferromq", "activemq"):
        v = [r["bench"]["produce"]["msgs_per_sec"] for r in fills if r["broker"] == b]
        if v: print(f"| fill for drain (-p 16) | {b} | {', '.join(f'{x:,.0f}' for x in v)} | | | |")
print("\nCPU µs/msg: CPU seconds (user + system, all threads) used during the run, per message "
      "(10 ms clock ticks); the machine's cores are shared by broker, client and anything else "
      "running. msgs per fsync: messages confirmed per fsync/fdatasync call of the broker, "
      "counted with perf tracepoints in one more run of each scenario that is not timed; for "
      "drain, messages consumed per fsync the broker made meanwhile.\n")

load_table(loads)
PY
} | tee "$RESULTS/report.md"
log "raw results in $RESULTS"
