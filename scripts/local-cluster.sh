#!/usr/bin/env bash
# The seed's deployment on one machine: a three-member ZooKeeper ensemble and three ferromq
# nodes (replicas = 3, zk_path = /activemq/leveldb-stores, sync = local_disk) on loopback.
#
#   scripts/local-cluster.sh up       # install ZooKeeper if needed, build, start everything
#   scripts/local-cluster.sh status   # ZooKeeper members and `ferromq status`
#   scripts/local-cluster.sh kill N   # kill -9 broker N (1..3), to watch a failover
#   scripts/local-cluster.sh kill master  # kill -9 whichever broker is the master now
#   scripts/local-cluster.sh start N  # start broker N again (refused while it runs)
#   scripts/local-cluster.sh down     # stop everything (data is kept in $CLUSTER_DIR)
#
# Environment: CLUSTER_DIR (default /tmp/ferromq-cluster), ZK_VERSION (3.8 or 3.4, default 3.8),
# ZK_PORT_BASE (default 2181), CLIENT_PORT_BASE (default 61616; node i listens on BASE+i-1),
# ADMIN_PORT_BASE (default 8161; node i's admin endpoint, /health /ready /metrics /queues, on
# http://127.0.0.1:BASE+i-1; empty: none), REPLICATION_PORT_BASE (default empty: each node's
# replication listener on a port the system picks; else node i's on BASE+i-1), FERROMQ_BIN (the
# ferromq binary to run; when set, `up` does not build; default target/release/ferromq, built).
# Clients: failover:(tcp://127.0.0.1:61616,tcp://127.0.0.1:61617,tcp://127.0.0.1:61618)?initialReconnectDelay=1000
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER_DIR=${CLUSTER_DIR:-/tmp/ferromq-cluster}
ZK_VERSION=${ZK_VERSION:-3.8}
ZK_PORT_BASE=${ZK_PORT_BASE:-2181}
CLIENT_PORT_BASE=${CLIENT_PORT_BASE:-61616}
REPLICATION_PORT_BASE=${REPLICATION_PORT_BASE:-}
ADMIN_PORT_BASE=${ADMIN_PORT_BASE-8161}
BIN=${FERROMQ_BIN:-target/release/ferromq}
ZK_ADDRESS="127.0.0.1:$ZK_PORT_BASE,127.0.0.1:$((ZK_PORT_BASE+1)),127.0.0.1:$((ZK_PORT_BASE+2))"

node_config() { # $1 = node number
  local i=$1
  cat <<TOML
# node $i of the local cluster (written by scripts/local-cluster.sh)
[broker]
name = "ferromq-cluster"
[transport]
connectors = ["tcp://127.0.0.1:$((CLIENT_PORT_BASE+i-1))"]
[store]
directory = "$CLUSTER_DIR/node$i/data"
sync = "local_disk"
[replication]
replicas = 3
bind = "tcp://127.0.0.1:$([ -n "$REPLICATION_PORT_BASE" ] && echo $((REPLICATION_PORT_BASE+i-1)) || echo 0)"
zk_address = "$ZK_ADDRESS"
zk_path = "/activemq/leveldb-stores"
zk_session_timeout = "2s"
hostname = "127.0.0.1"
security_token = "local-cluster"
TOML
  if [ -n "$ADMIN_PORT_BASE" ]; then
    printf '[admin]\nbind = "tcp://127.0.0.1:%s"\n' "$((ADMIN_PORT_BASE+i-1))"
  fi
}

start_node() {
  local i=$1
  local d="$CLUSTER_DIR/node$i"
  if [ -f "$d/broker.pid" ] && kill -0 "$(cat "$d/broker.pid")" 2>/dev/null; then
    echo "node$i is already running (pid $(cat "$d/broker.pid")); kill it first" >&2
    return 1
  fi
  if [ ! -x "$BIN" ]; then
    echo "no ferromq binary at $BIN: run 'cargo build --release' or set FERROMQ_BIN" >&2
    return 1
  fi
  mkdir -p "$d"
  node_config "$i" > "$d/broker.toml"
  setsid nohup "$BIN" broker --config "$d/broker.toml" >> "$d/broker.log" 2>&1 < /dev/null &
  echo $! > "$d/broker.pid"
  echo "node$i: pid $(cat "$d/broker.pid"), clients on tcp://127.0.0.1:$((CLIENT_PORT_BASE+i-1))${ADMIN_PORT_BASE:+, admin on http://127.0.0.1:$((ADMIN_PORT_BASE+i-1))}, log $d/broker.log"
}

stop_node() {
  local i=$1 signal=${2:-TERM} f="$CLUSTER_DIR/node$1/broker.pid"
  [ -f "$f" ] || return 0
  kill "-$signal" "$(cat "$f")" 2>/dev/null || true
  rm -f "$f"
}

case "${1:-}" in
  up)
    scripts/zk.sh install
    [ -n "${FERROMQ_BIN:-}" ] || cargo build --release --bin ferromq
    mkdir -p "$CLUSTER_DIR"
    scripts/zk.sh start "$CLUSTER_DIR/zk" "$ZK_VERSION" "$ZK_PORT_BASE"
    for i in 1 2 3; do start_node "$i"; done
    echo "failover URL: failover:(tcp://127.0.0.1:$CLIENT_PORT_BASE,tcp://127.0.0.1:$((CLIENT_PORT_BASE+1)),tcp://127.0.0.1:$((CLIENT_PORT_BASE+2)))?initialReconnectDelay=1000"
    ;;
  status)
    scripts/zk.sh status "$CLUSTER_DIR/zk" || true
    "$BIN" status --zk-address "$ZK_ADDRESS" --zk-path /activemq/leveldb-stores
    ;;
  kill)
    n=${2:?node number or master}
    if [ "$n" = master ]; then
      # The master's znode names its client address; node i listens on CLIENT_PORT_BASE+i-1.
      port=$("$BIN" status --json --zk-address "$ZK_ADDRESS" --zk-path /activemq/leveldb-stores \
        | tr '}' '\n' | grep '"role":"master"' | grep -o '"client_address":"tcp://[^"]*"' \
        | head -n 1 | sed 's/.*:\([0-9]*\)"$/\1/' || true)
      [ -n "$port" ] || { echo "no master is elected now" >&2; exit 1; }
      n=$((port - CLIENT_PORT_BASE + 1))
      echo "the master is node$n"
    fi
    stop_node "$n" KILL
    ;;
  start) start_node "${2:?node number}" ;;
  down)
    for i in 1 2 3; do stop_node "$i"; done
    scripts/zk.sh stop "$CLUSTER_DIR/zk" || true
    ;;
  *) sed -n '2,19p' "$0"; exit 2 ;;
esac
