#!/usr/bin/env bash
# The test command: installs what the integration tests need when it is missing
# (scripts/test-deps.sh: ZooKeeper, stomp.py, a JDK and the ActiveMQ Java client, and MinGW and
# Wine for the Windows build; root or sudo the first time), then runs every test of the workspace, all of them even after a failure, so
# one run reports every failing test. Extra arguments go to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/test-deps.sh
exec cargo test --workspace --no-fail-fast "$@"
