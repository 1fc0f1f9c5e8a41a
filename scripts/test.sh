#!/usr/bin/env bash
# The test command: installs what the integration tests need when it is missing
# (scripts/test-deps.sh: ZooKeeper, stomp.py, a JDK and the ActiveMQ Java client, and MinGW and
# Wine for the Windows build; root or sudo the first time), then runs every test of the
# workspace, all of them even after a failure, so one run reports every failing test. Extra
# arguments go to cargo test.
#
# A failing test's panic message sits in the middle of its captured output (the cluster tests
# print every node's log), far from the end of a long run; so after a failure the panic lines
# are printed again, last, where a CI log's tail shows them.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/test-deps.sh
log=$(mktemp -t ferromq-test-XXXXXX.log)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --no-fail-fast "$@" 2>&1 | tee "$log" || status=$?
if [ "$status" -ne 0 ]; then
    echo
    echo "== the tests failed (exit $status); their panic messages again:"
    grep -a -A 6 "panicked at" "$log" | cut -c1-400 | head -n 200 || true
fi
exit "$status"
