#!/usr/bin/env bash
# The test command: installs what the integration tests need when it is missing (ZooKeeper 3.8
# and 3.4.13 for the cluster tests, stomp.py for the independent-client tests; needs root or
# sudo the first time), then runs every test of the workspace. Extra arguments go to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import stomp' 2>/dev/null || python3 -m pip install --quiet 'stomp.py>=8'
scripts/zk.sh install
exec cargo test --workspace "$@"
