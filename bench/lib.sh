# bench/lib.sh — helpers shared by the benchmark scripts (sourced, never run). The caller
# defines `log MESSAGE` (to stderr) and sets BUSY_MAX and LOAD_WAIT before wait_for_quiet, and
# WORK and FSYNC_JSON before machine_lines; run_scenarios wants `run_scenario SCENARIO REP
# BROKER` and SCENARIOS, REPS, BROKERS and RESULTS.

# Whether something listens on 127.0.0.1:PORT.
port_open() { timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }

# CPU seconds (user + system, all threads) a process has used.
cpu_of() { awk -v t="$(getconf CLK_TCK)" '{ print ($14 + $15) / t }' "/proc/$1/stat"; }

# Percent of the machine's CPU busy over one second (everything: ours is idle between runs).
busy_pct() {
  local a b
  a=($(head -1 /proc/stat)); sleep 1; b=($(head -1 /proc/stat))
  awk -v u=$((b[1] + b[2] + b[3] + b[6] + b[7] - a[1] - a[2] - a[3] - a[6] - a[7])) \
      -v i=$((b[4] + b[5] - a[4] - a[5])) 'BEGIN { printf "%.0f", 100 * u / (u + i) }'
}

load1() { cut -d' ' -f1 /proc/loadavg; }

# Waits (up to LOAD_WAIT s) until other processes use less than BUSY_MAX % of the CPU; prints
# the last busy percentage measured.
wait_for_quiet() {
  local deadline=$(( $(date +%s) + LOAD_WAIT )) busy
  while busy=$(busy_pct); [ "$busy" -gt "$BUSY_MAX" ]; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      log "machine still ${busy}% busy after ${LOAD_WAIT}s of waiting; running anyway"
      break
    fi
    log "machine ${busy}% busy (load $(load1)); waiting for < ${BUSY_MAX}%"
    sleep 5
  done
  echo "${busy}"
}

# The machine lines of a report: cores, CPU, memory, kernel, the disk and file system of WORK,
# and the fsync rate measured by bench/fsync.py (FSYNC_JSON).
machine_lines() {
  echo "nproc:   $(nproc)"
  echo "cpu:     $(lscpu | sed -n 's/^Model name: *//p' | head -1) ($(lscpu | sed -n 's/^Hypervisor vendor: *//p') guest)"
  echo "memory:  $(free -h | awk '/^Mem:/ { print $2 }')"
  echo "kernel:  $(uname -sr)"
  echo "disk:    $(df -h "$WORK" | tail -1)"
  echo "fs:      $(findmnt -n -o FSTYPE,OPTIONS --target "$WORK" 2>/dev/null || true)"
  echo "fsync:   $(jq -r '"\(.fdatasync_per_sec | floor) append+fdatasync/s of \(.size) B (p50 \(.p50_us | floor) µs, p99 \(.p99_us | floor) µs)"' <<< "$FSYNC_JSON")"
}

# Runs each of SCENARIOS REPS times on every broker of BROKERS (run_scenario SCENARIO REP
# BROKER), alternating which broker goes first, after waiting for a quiet machine; records the
# load around each scenario in $RESULTS/loads.jsonl. Stops early when the caller defines
# `any_broker_left` and it fails.
run_scenarios() {
  local scenario busy before after rep order b
  for scenario in $SCENARIOS; do
    if declare -F any_broker_left > /dev/null && ! any_broker_left; then
      log "no broker left to measure"
      break
    fi
    busy=$(wait_for_quiet)
    before=$(uptime)
    log "scenario $scenario; before: $before (other processes ${busy}% CPU)"
    for rep in $(seq "$REPS"); do
      if [ $((rep % 2)) = 1 ]; then order=$BROKERS; else order=$(echo "$BROKERS" | tr ' ' '\n' | tac | tr '\n' ' '); fi
      for b in $order; do run_scenario "$scenario" "$rep" "$b"; done
    done
    after=$(uptime)
    log "scenario $scenario; after: $after"
    jq -nc --arg s "$scenario" --arg before "$before" --arg after "$after" --argjson busy "$busy" \
      '{scenario: $s, before: $before, after: $after, busy_before_pct: $busy}' >> "$RESULTS/loads.jsonl"
  done
  count_fsyncs
}

# When PERF_FSYNC=1: one more, untimed run of each scenario per broker (rep 0) with COUNTING=1,
# during which the caller counts the broker's fsync/fdatasync calls with perf tracepoints. Not
# during the timed runs: while a syscall tracepoint is enabled every system call of the machine
# takes the kernel's tracing path, which cost ferromq ~10% of its rate with one synchronous
# producer here (6,300 against 6,900-7,400 msg/s) and ~2% with 16.
COUNTING=0
count_fsyncs() {
  [ "${PERF_FSYNC:-0}" = 1 ] || return 0
  local scenario b
  COUNTING=1
  for scenario in $SCENARIOS; do
    for b in $BROKERS; do
      if declare -F any_broker_left > /dev/null && ! any_broker_left; then break 2; fi
      log "scenario $scenario on $b: counting its fsyncs (not timed)"
      run_scenario "$scenario" 0 "$b"
    done
  done
  COUNTING=0
}
