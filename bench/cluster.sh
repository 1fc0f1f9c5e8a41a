#!/usr/bin/env bash
# bench/cluster.sh — the replicated cluster (3 ferromq nodes + a 3-member ZooKeeper ensemble on
# this machine, scripts/local-cluster.sh: replicas = 3, sync = "local_disk", zk_session_timeout
# 2 s, ZooKeeper tickTime 500) measured with `ferromq bench` (STOMP), 1 KiB persistent messages,
# every send counted only once its RECEIPT arrived. Benchmarks, not tests.
#
#   failover    $FAILOVER_REPS times: `bench -p 1 -w 1 --duration $FAILOVER_DURATION` on the
#               failover URL (initialReconnectDelay=100&maxReconnectDelay=500&randomize=false);
#               after $KILL_AFTER s, kill -9 of the master (found with `ferromq status`). The
#               run's max send latency (send -> RECEIPT) is the longest gap between two
#               confirmations (-w 1: the next send leaves as soon as the previous is confirmed),
#               i.e. kill -> first confirmed send on the new master, within one round trip.
#               From the logs: election = new master's `role change: master` - kill time;
#               reconnect = client's `reconnected` - kill time. The killed node is restarted and
#               the next repetition waits until it is a slave that has caught up.
#   catchup     $CATCHUP_REPS times: kill -9 a slave, send $CATCHUP_N messages (-p 4 -w 16) to
#               the master, restart the slave; restart -> its `caught up with the master` line
#               (which gives records, bytes, seconds, MiB/s of the catch-up itself).
#   throughput  ActiveMQ 5.17 single node (bench/activemq.sh, KahaDB defaults) beside the
#               cluster's master, same client: `-p 16 -w 1 -n $N_CONC` and `-p 1 -w 1 -n $N_SYNC`,
#               $REPS times each, alternating which goes first; both warmed up first with
#               $WARMUP messages (16 producers, drained). Every run on its own queue, drained after.
#
# stdout: a markdown report; stderr: progress. Raw data in $RESULTS: runs.jsonl (one object per
# run), loads.jsonl (uptime around each scenario), broker/ZooKeeper/ActiveMQ logs, client.log.
#
# Environment (defaults in brackets):
#   SCENARIOS ["failover catchup throughput"]  WORK [/tmp/ferromq-cluster-bench]
#   RESULTS [$WORK/results-<date>]  ZK_PORT_BASE [22181]  CLIENT_PORT_BASE [21616]
#   AMQ_OPENWIRE_PORT [21626] AMQ_STOMP_PORT [21623]
#   FAILOVER_REPS [5] FAILOVER_DURATION [12s] KILL_AFTER [4]
#   CATCHUP_REPS [3] CATCHUP_N [100000]
#   REPS [3] N_SYNC [5000] N_CONC [40000] WARMUP [100000] SIZE [1024]
#   BUSY_MAX [30] LOAD_WAIT [120]   before each scenario wait up to LOAD_WAIT s for other
#                                   processes' CPU to drop below BUSY_MAX %
#   FERROMQ_BIN [target/release/ferromq, copied into $RESULTS first; no build is started]
set -euo pipefail

ROOT=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
SCENARIOS=${SCENARIOS:-"failover catchup throughput"}
WORK=${WORK:-/tmp/ferromq-cluster-bench}
RESULTS=${RESULTS:-$WORK/results-$(date -u +%Y%m%dT%H%M%SZ)}
export ZK_PORT_BASE=${ZK_PORT_BASE:-22181}
export CLIENT_PORT_BASE=${CLIENT_PORT_BASE:-21616}
export ADMIN_PORT_BASE=${ADMIN_PORT_BASE-}   # no admin endpoints unless asked for
export CLUSTER_DIR=$RESULTS/cluster
FAILOVER_REPS=${FAILOVER_REPS:-5}
FAILOVER_DURATION=${FAILOVER_DURATION:-12s}
KILL_AFTER=${KILL_AFTER:-4}
CATCHUP_REPS=${CATCHUP_REPS:-3}
CATCHUP_N=${CATCHUP_N:-100000}
REPS=${REPS:-3}
N_SYNC=${N_SYNC:-5000}
N_CONC=${N_CONC:-40000}
WARMUP=${WARMUP:-100000}
SIZE=${SIZE:-1024}
BUSY_MAX=${BUSY_MAX:-30}
LOAD_WAIT=${LOAD_WAIT:-120}
export AMQ_WORK=${AMQ_WORK:-$WORK/activemq}
export AMQ_OPENWIRE_PORT=${AMQ_OPENWIRE_PORT:-21626}
export AMQ_STOMP_PORT=${AMQ_STOMP_PORT:-21623}
export AMQ_FRESH=1

ZK="127.0.0.1:$ZK_PORT_BASE,127.0.0.1:$((ZK_PORT_BASE+1)),127.0.0.1:$((ZK_PORT_BASE+2))"
P1=$CLIENT_PORT_BASE; P2=$((CLIENT_PORT_BASE+1)); P3=$((CLIENT_PORT_BASE+2))
FAILOVER_URL="failover:(tcp://127.0.0.1:$P1,tcp://127.0.0.1:$P2,tcp://127.0.0.1:$P3)?initialReconnectDelay=100&maxReconnectDelay=500&randomize=false"
AMQ_URL="tcp://127.0.0.1:$AMQ_STOMP_PORT"

mkdir -p "$WORK" "$RESULTS"
# A private copy: a `cargo build` elsewhere in the tree must not swap the binary mid-run.
cp "${FERROMQ_BIN:-$ROOT/target/release/ferromq}" "$RESULTS/ferromq"
BIN_INFO="$(stat -c '%y' "${FERROMQ_BIN:-$ROOT/target/release/ferromq}" | cut -d. -f1), sha256 $(sha256sum "$RESULTS/ferromq" | cut -c1-12)"
B=$RESULTS/ferromq
export FERROMQ_BIN=$B
CLUSTER_UP=0
AMQ_STARTED=0

log() { echo "cluster.sh: $(date -u +%T) $*" >&2; }
. "$ROOT/bench/lib.sh"
lc() { "$ROOT/scripts/local-cluster.sh" "$@"; }

cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  [ "$AMQ_STARTED" = 1 ] && { "$ROOT/bench/activemq.sh" stop || true; cp "$AMQ_WORK/activemq.log" "$RESULTS/" 2>/dev/null || true; }
  if [ "$CLUSTER_UP" = 1 ]; then
    local pids=() i
    for i in 1 2 3; do [ -f "$CLUSTER_DIR/node$i/broker.pid" ] && pids+=("$(cat "$CLUSTER_DIR/node$i/broker.pid")"); done
    lc down >&2 || true
    for pid in "${pids[@]}"; do  # the brokers we started: SIGTERM sent, SIGKILL after 10 s
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -9 "$pid" 2>/dev/null || true
    done
  fi
  rm -f "$RESULTS/ferromq"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s.%N; }
# RFC 3339 timestamp (the first field of a log line) -> epoch seconds
ts() { date -d "$1" +%s.%N; }
# Like lib.sh's, but 0 for a node that is gone.
cpu_of() { awk -v t="$(getconf CLK_TCK)" '{ print ($14 + $15) / t }' "/proc/$1/stat" 2>/dev/null || echo 0; }
record_load() { # SCENARIO BUSY BEFORE AFTER
  jq -nc --arg s "$1" --argjson busy "$2" --arg before "$3" --arg after "$4" \
    '{scenario: $s, busy_before_pct: $busy, before: $before, after: $after}' >> "$RESULTS/loads.jsonl"
}

# The members as a JSON array: each one's znode data, with its znode name added as "znode".
members() {
  "$B" status --zk-address "$ZK" --json 2>/dev/null || echo '[]'
}
# jq: the elected master's znode entry. As in ActiveMQ, the coordinator (the member with the
# lowest sequence, not necessarily the master) announces the elected member's id in its
# "elected" field; the elected member's znode name ends with that id.
ELECTED_MASTER='(map(.elected | select(. != null)) | .[0]) as $e
  | map(select($e != null and .role == "master" and (.znode | endswith($e))))'
# The node number (1..3) serving as master, or nothing.
master_node() {
  local port
  port=$(members | jq -r "$ELECTED_MASTER | .[].client_address" | sed 's/.*://' | head -1)
  [ -n "$port" ] && echo $((port - CLIENT_PORT_BASE + 1))
}
node_pid() { cat "$CLUSTER_DIR/node$1/broker.pid"; }
start_node() { lc start "$1" >&2; }
kill_node() { lc kill "$1"; }
log_lines() { wc -l < "$CLUSTER_DIR/node$1/broker.log"; }
# First line matching PATTERN in node N's log after line OFFSET (waits up to T seconds).
wait_log() { # N OFFSET PATTERN T
  local deadline=$(( $(date +%s) + $4 )) line
  while :; do
    line=$(tail -n +"$(( $2 + 1 ))" "$CLUSTER_DIR/node$1/broker.log" | grep -m1 -- "$3" || true)
    [ -n "$line" ] && { echo "$line"; return 0; }
    [ "$(date +%s)" -ge "$deadline" ] && return 1
    sleep 0.2
  done
}
# What an unhealthy cluster looked like: the members as the health check read them, the
# status table, and each node's log (the cluster directory itself is deleted after a run).
unhealthy_evidence() {
  local dir; dir="$RESULTS/unhealthy-$(date -u +%H%M%S)"
  mkdir -p "$dir"
  members > "$dir/members.json" 2>&1 || true
  "$B" status --zk-address "$ZK" --json > "$dir/status.json" 2> "$dir/status.err" || true
  "$B" status --zk-address "$ZK" >&2 || true
  for i in 1 2 3; do cp "$CLUSTER_DIR/node$i/broker.log" "$dir/node$i.log" 2>/dev/null || true; done
  log "evidence in $dir"
}

# Waits until one master and two slaves of its epoch are registered.
wait_healthy() {
  local deadline=$(( $(date +%s) + ${1:-60} ))
  until members | jq -e "($ELECTED_MASTER | length == 1) and
        (map(select(.role == \"slave\")) | length == 2) and
        ((map(select(.role == \"master\")) | .[0].epoch) as \$e | all(.[]; .master_epoch == \$e))" > /dev/null 2>&1; do
    [ "$(date +%s)" -ge "$deadline" ] && { log "cluster not healthy after ${1:-60}s"; unhealthy_evidence; return 1; }
    sleep 0.3
  done
}
master_url() { echo "tcp://127.0.0.1:$((CLIENT_PORT_BASE + $(master_node) - 1))"; }
drain() { # URL DEST
  local n
  n=$("$B" bench --url "$1" -d "$2" --drain-only -c 1 --idle-timeout 2s --json 2>> "$RESULTS/client.log" | jq '.consume.received')
  log "  drained $n from $2"
}

start_cluster() {
  log "starting ZooKeeper (ports $ZK_PORT_BASE..) and 3 brokers (clients on $P1..$P3) in $CLUSTER_DIR"
  CLUSTER_UP=1
  lc up >&2
  wait_healthy 60
  log "cluster up: master is node$(master_node)"
}

# ---------------------------------------------------------------------------------------------
failover() {
  local rep=$1 m kill_t off1 off2 off3 out="$RESULTS/failover.$rep.json" err="$RESULTS/failover.$rep.err"
  wait_healthy 60
  m=$(master_node)
  local dest="queue://cluster.failover.$rep"
  # A failover that never completes (no master elected) ends the run instead of hanging it.
  timeout 120 "$B" bench --url "$FAILOVER_URL" -d "$dest" -p 1 -w 1 --size "$SIZE" --duration "$FAILOVER_DURATION" --json > "$out" 2> "$err" &
  local bpid=$!
  sleep "$KILL_AFTER"
  for i in 1 2 3; do eval "off$i=\$(log_lines $i)"; done
  kill_t=$(now)
  kill_node "$m"
  log "failover #$rep: kill -9 node$m (the master) at $(date -u -d "@$kill_t" +%T.%N)"
  wait "$bpid" || { log "bench failed (status $?; 124: no failover within 120 s): $(tail -3 "$err")"; exit 1; }
  # the new master's `role change: master` line
  local new="" line="" t_master=null t_reconnect=null
  for i in 1 2 3; do
    [ "$i" = "$m" ] && continue
    eval "local off=\$off$i"
    if l=$(wait_log "$i" "$off" 'role change: master' 1); then new=$i; line=$l; fi
  done
  [ -n "$line" ] && t_master=$(ts "$(awk '{print $1}' <<< "$line")")
  line=$(grep -m1 'reconnected' "$err" || true)
  [ -n "$line" ] && t_reconnect=$(ts "$(awk '{print $1}' <<< "$line")")
  jq -c --argjson rep "$rep" --argjson killed "$m" --argjson new "${new:-null}" --argjson kill_t "$kill_t" \
     --argjson t_master "$t_master" --argjson t_reconnect "$t_reconnect" --arg load "$(cut -d' ' -f1 /proc/loadavg)" \
     '{scenario: "failover", rep: $rep, killed: $killed, new_master: $new, kill_t: $kill_t,
       election_s: (if $t_master then $t_master - $kill_t else null end),
       reconnect_s: (if $t_reconnect then $t_reconnect - $kill_t else null end),
       max_gap_s: (.produce.latency.max_us / 1e6), load1_after: ($load | tonumber), bench: .}' \
     "$out" >> "$RESULTS/runs.jsonl"
  tail -1 "$RESULTS/runs.jsonl" | jq -r '"failover #\(.rep): node\(.killed) -> node\(.new_master): election \(.election_s*1000|floor) ms, client reconnected \(.reconnect_s*1000|floor) ms, longest gap between confirmations \(.max_gap_s*1000|floor) ms (\(.bench.produce.confirmed) confirmed)"' >&2
  # restart the killed node; wait until it has caught up as a slave
  local offk; offk=$(log_lines "$m")
  start_node "$m"
  wait_log "$m" "$offk" 'caught up with the master' 60 > /dev/null || log "node$m did not log 'caught up' within 60 s"
  wait_healthy 60
  drain "$FAILOVER_URL" "$dest"
}

catchup() {
  local rep=$1 m s off t0 line
  wait_healthy 60
  m=$(master_node)
  s=$(( m % 3 + 1 ))
  local dest="queue://cluster.catchup.$rep" url; url=$(master_url)
  kill_node "$s"
  log "catch-up #$rep: kill -9 node$s (a slave); sending $CATCHUP_N messages to node$m"
  sleep 1
  "$B" bench --url "$url" -d "$dest" -p 4 -w 16 -n "$CATCHUP_N" --size "$SIZE" --json > "$RESULTS/catchup.$rep.send.json" 2>> "$RESULTS/client.log"
  local sent_rate; sent_rate=$(jq '.produce.msgs_per_sec' "$RESULTS/catchup.$rep.send.json")
  log "  sent at $(printf %.0f "$sent_rate") msg/s with node$s down"
  off=$(log_lines "$s")
  t0=$(now)
  start_node "$s"
  line=$(wait_log "$s" "$off" 'caught up with the master' 300) || { log "node$s did not catch up within 300 s"; exit 1; }
  local t1 started_t=null sline
  t1=$(ts "$(awk '{print $1}' <<< "$line")")
  # when the node became a slave (its follower started)
  sline=$(tail -n +"$((off + 1))" "$CLUSTER_DIR/node$s/broker.log" | grep -m1 'role change: slave' || true)
  [ -n "$sline" ] && started_t=$(ts "$(awk '{print $1}' <<< "$sline")")
  kv() { grep -o " $1=[^ ]*" <<< "$line" | head -1 | cut -d= -f2; }
  jq -nc --argjson rep "$rep" --argjson slave "$s" --argjson t0 "$t0" --argjson t1 "$t1" --argjson ts "$started_t" \
     --argjson records "$(kv records)" --argjson bytes "$(kv bytes)" --argjson seconds "$(kv seconds)" \
     --argjson mibs "$(kv mib_per_second)" --arg snapshot "$(kv snapshot)" --argjson rate "$sent_rate" \
     --arg load "$(cut -d' ' -f1 /proc/loadavg)" \
     '{scenario: "catchup", rep: $rep, slave: $slave, restart_to_caught_up_s: ($t1 - $t0),
       restart_to_slave_s: (if $ts then $ts - $t0 else null end), records: $records, bytes: $bytes,
       follower_seconds: $seconds, mib_per_second: $mibs, snapshot: ($snapshot == "true"),
       send_rate_one_slave_down: $rate, load1_after: ($load | tonumber)}' >> "$RESULTS/runs.jsonl"
  tail -1 "$RESULTS/runs.jsonl" | jq -r '"  restart -> caught up \(.restart_to_caught_up_s*1000|floor) ms; follower: \(.records) records, \(.bytes) bytes in \(.follower_seconds) s = \(.mib_per_second) MiB/s"' >&2
  wait_healthy 60
  drain "$url" "$dest"
}

# bench on BROKER (cluster|activemq): appends a line to runs.jsonl
tput_run() {
  local broker=$1 scen=$2 rep=$3; shift 3
  local url pids=() cpu0=() cpu1=() out="$RESULTS/run.out" timing="$RESULTS/run.time"
  if [ "$broker" = cluster ]; then
    url=$(master_url); local m; m=$(master_node)
    pids=("$(node_pid "$m")"); for i in 1 2 3; do [ "$i" != "$m" ] && pids+=("$(node_pid "$i")"); done
  else
    url=$AMQ_URL; pids=("$(cat "$AMQ_WORK/activemq.pid")")
  fi
  for p in "${pids[@]}"; do cpu0+=("$(cpu_of "$p")"); done
  /usr/bin/time -f '%e %U %S' -o "$timing" "$B" bench --url "$url" --size "$SIZE" --json "$@" > "$out" 2>> "$RESULTS/client.log" \
    || { log "$broker $scen #$rep failed: $(tail -3 "$RESULTS/client.log")"; exit 1; }
  for p in "${pids[@]}"; do cpu1+=("$(cpu_of "$p")"); done
  local master_cpu slaves_cpu=0
  master_cpu=$(awk -v a="${cpu0[0]}" -v b="${cpu1[0]}" 'BEGIN { print b - a }')
  for k in 1 2; do [ -n "${pids[$k]:-}" ] && slaves_cpu=$(awk -v s="$slaves_cpu" -v a="${cpu0[$k]}" -v b="${cpu1[$k]}" 'BEGIN { print s + b - a }'); done
  read -r wall cu cs < <(tail -1 "$timing")
  jq -c --arg b "$broker" --arg s "$scen" --argjson r "$rep" --argjson mcpu "$master_cpu" --argjson scpu "$slaves_cpu" \
     --argjson ccpu "$(awk -v u="$cu" -v s="$cs" 'BEGIN { print u + s }')" --arg load "$(cut -d' ' -f1 /proc/loadavg)" \
     '{scenario: $s, broker: $b, rep: $r, broker_cpu_s: $mcpu, slaves_cpu_s: $scpu, client_cpu_s: $ccpu,
       load1_after: ($load | tonumber), bench: .}' "$out" >> "$RESULTS/runs.jsonl"
  jq -r --arg b "$broker" --arg s "$scen" --argjson r "$rep" \
     '"\($s) #\($r) \($b): \(.produce.msgs_per_sec | floor) msg/s p50 \(.produce.latency.p50_us | floor) µs p99 \(.produce.latency.p99_us | floor) µs"' "$out" >&2
  drain "$url" "$(awk '{for (i=1;i<=NF;i++) if ($i=="-d") print $(i+1)}' <<< "$*")"
}

throughput() {
  AMQ_STARTED=1
  "$ROOT/bench/activemq.sh" start
  for b in cluster activemq; do
    local left=$WARMUP n url
    while [ "$left" -gt 0 ]; do
      n=$(( left < 20000 ? left : 20000 )); left=$(( left - n ))
      if [ "$b" = cluster ]; then url=$(master_url); else url=$AMQ_URL; fi
      log "warm-up $b: $n messages (not counted)"
      "$B" bench --url "$url" -d queue://cluster.warmup -p 16 -w 1 -n "$n" --json > /dev/null 2>> "$RESULTS/client.log"
      drain "$url" queue://cluster.warmup
    done
  done
  for scen in conc sync; do
    local busy before after
    busy=$(wait_for_quiet); before=$(uptime)
    log "scenario $scen; before: $before (others ${busy}% CPU)"
    for rep in $(seq "$REPS"); do
      local order="cluster activemq"; [ $((rep % 2)) = 0 ] && order="activemq cluster"
      for b in $order; do
        case $scen in
          conc) tput_run "$b" conc "$rep" -d "queue://cluster.conc.$rep" -p 16 -w 1 -n "$N_CONC" ;;
          sync) tput_run "$b" sync "$rep" -d "queue://cluster.sync.$rep" -p 1 -w 1 -n "$N_SYNC" ;;
        esac
      done
    done
    after=$(uptime); log "scenario $scen; after: $after"
    record_load "$scen" "$busy" "$before" "$after"
  done
  "$ROOT/bench/activemq.sh" stop; cp "$AMQ_WORK/activemq.log" "$RESULTS/" 2>/dev/null || true
  AMQ_STARTED=0
}

# ---------------------------------------------------------------------------------------------
: > "$RESULTS/runs.jsonl"; : > "$RESULTS/loads.jsonl"
log "results in $RESULTS"
start_cluster
for scenario in $SCENARIOS; do
  case $scenario in
    failover|catchup)
      busy=$(wait_for_quiet); before=$(uptime)
      log "scenario $scenario; before: $before (others ${busy}% CPU)"
      reps=$FAILOVER_REPS; [ "$scenario" = catchup ] && reps=$CATCHUP_REPS
      for rep in $(seq "$reps"); do "$scenario" "$rep"; done
      after=$(uptime); log "scenario $scenario; after: $after"
      record_load "$scenario" "$busy" "$before" "$after" ;;
    throughput) throughput ;;
    *) log "unknown scenario $scenario"; exit 2 ;;
  esac
done

# ---------------------------------------------------------------------------------------------
{
  echo "# ferromq replicated cluster (3 nodes + 3 ZooKeeper on one machine): $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo '```'
  echo "nproc:   $(nproc); $(lscpu | sed -n 's/^Model name: *//p' | head -1); memory $(free -h | awk '/^Mem:/ { print $2 }'); $(uname -sr)"
  echo "disk:    $(df -h "$WORK" | tail -1 | awk '{print $1, $2}'), $(findmnt -n -o FSTYPE,OPTIONS --target "$WORK" 2>/dev/null || true)"
  echo "ferromq: $(cd "$ROOT" && git rev-parse --short HEAD)$(cd "$ROOT" && git diff --quiet HEAD -- src Cargo.toml || echo ' + uncommitted changes in src/'); binary built $BIN_INFO; replicas=3, sync=local_disk, zk_session_timeout=2s, ZooKeeper 3.8 tickTime=500"
  echo "activemq: $(dpkg-query -W -f '${Version}' activemq 2>/dev/null), KahaDB defaults, single node"
  echo "client:  ferromq bench (STOMP), ${SIZE}-byte persistent messages, RECEIPT per send"
  echo '```'
  echo
  python3 - "$RESULTS/runs.jsonl" "$RESULTS/loads.jsonl" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
loads = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
med = lambda xs: statistics.median(xs) if xs else None
fo = [r for r in runs if r["scenario"] == "failover"]
if fo:
    print("## Failover (kill -9 of the master, 1 producer -w 1 on the failover URL)\n")
    print("| # | killed → new master | election (kill → `role change: master`) | client reconnected | longest gap between confirmations (max send latency) | under 3 s |")
    print("|---|---|---:|---:|---:|:---:|")
    for r in fo:
        g = r["max_gap_s"]
        print(f"| {r['rep']} | node{r['killed']} → node{r['new_master']} | {r['election_s']:.2f} s | {r['reconnect_s']:.2f} s | {g:.2f} s | {'yes' if g < 3 else '**no**'} |")
    print(f"| median | | {med([r['election_s'] for r in fo]):.2f} s | {med([r['reconnect_s'] for r in fo]):.2f} s | {med([r['max_gap_s'] for r in fo]):.2f} s | |\n")
cu = [r for r in runs if r["scenario"] == "catchup"]
if cu:
    print("## Catch-up of a restarted slave\n")
    print("| # | records | MiB | restart → slave role | restart → caught up | follower (login → caught up) | MiB/s | sends with one slave down |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in cu:
        rs = "–" if r["restart_to_slave_s"] is None else f"{r['restart_to_slave_s']:.2f} s"
        print(f"| {r['rep']} | {r['records']:,} | {r['bytes']/2**20:.1f} | {rs} | {r['restart_to_caught_up_s']:.2f} s | {r['follower_seconds']:.2f} s | {r['mib_per_second']:.1f} | {r['send_rate_one_slave_down']:,.0f} msg/s |")
    print()
tp = [r for r in runs if r["scenario"] in ("conc", "sync")]
if tp:
    print("## Throughput: cluster master vs ActiveMQ single node\n")
    print("| scenario | cluster msg/s (each run) | ActiveMQ msg/s (each run) | ratio of medians | target | met | cluster p50 / p99 | ActiveMQ p50 / p99 | CPU µs/msg master + slaves / ActiveMQ |")
    print("|---|---|---|---:|---:|:---:|---|---|---|")
    for s, name, tgt in (("conc", "16 producers (-p 16 -w 1)", 5.0), ("sync", "1 producer (-p 1 -w 1)", 1.0)):
        c = [r for r in tp if r["scenario"] == s and r["broker"] == "cluster"]
        a = [r for r in tp if r["scenario"] == s and r["broker"] == "activemq"]
        if not c or not a: continue
        rate = lambda rs: [r["bench"]["produce"]["msgs_per_sec"] for r in rs]
        mc, ma = med(rate(c)), med(rate(a))
        lat = lambda rs: f"{med([r['bench']['produce']['latency']['p50_us'] for r in rs]):.0f} µs / {med([r['bench']['produce']['latency']['p99_us'] for r in rs])/1000:.2f} ms"
        cpu = lambda rs, k: med([r[k] / r["bench"]["produce"]["confirmed"] * 1e6 for r in rs])
        print(f"| {name} | **{mc:,.0f}** ({', '.join(f'{x:,.0f}' for x in rate(c))}) | **{ma:,.0f}** ({', '.join(f'{x:,.0f}' for x in rate(a))}) | {mc/ma:.2f}× | ≥ {tgt:g}× | {'yes' if mc/ma >= tgt else '**no**'} | {lat(c)} | {lat(a)} | {cpu(c,'broker_cpu_s'):.0f} + {cpu(c,'slaves_cpu_s'):.0f} / {cpu(a,'broker_cpu_s'):.0f} |")
    print()
if loads:
    print("## Load (uptime) around each scenario\n")
    print("| scenario | others' CPU before | before | after |\n|---|---:|---|---|")
    for l in loads:
        s = lambda u: u.split("load average:")[-1].strip()
        print(f"| {l['scenario']} | {l['busy_before_pct']}% | {s(l['before'])} | {s(l['after'])} |")
PY
} | tee "$RESULTS/report.md"
log "raw results in $RESULTS"
