#!/usr/bin/env bash
# Runs JmsCheck scenarios by hand, against the reference broker (an embedded stock ActiveMQ
# started here, see RefBroker.java) or against a broker URL you give.
#
#   integration-tests/java/run-reference.sh                       # every scenario vs ActiveMQ
#   integration-tests/java/run-reference.sh browser prefetch-zero # some scenarios vs ActiveMQ
#   BROKER_URL=tcp://127.0.0.1:61616 integration-tests/java/run-reference.sh queue-text
#   JMSCHECK_OPTS="connect_limit_ms=0 timeout=120" ...         # extra JmsCheck options
#   REFBROKER_OPTS=-Drefbroker.deadLetterStrategy=individual integration-tests/java/run-reference.sh individual-dlq
#                                                                 # JVM options of the reference broker
#
# "failover" stands for the failover-produce/failover-consume pair (200 messages through a
# failover: URL of the one broker). Needs a JDK and Debian's libactivemq-java. Exit status 0 only
# if every scenario passed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
J=/usr/share/java
CLIENT_CP="$J/activemq-client.jar:$J/geronimo-jms_1.1_spec.jar:$J/hawtbuf.jar:$J/slf4j-api.jar:$J/geronimo-j2ee-management-1.1-spec.jar:$J/slf4j-nop.jar"
BROKER_CP="$CLIENT_CP:$J/activemq-broker.jar"
for jar in ${BROKER_CP//:/ }; do
    [[ -f $jar ]] || { echo "missing $jar: apt-get install libactivemq-java" >&2; exit 2; }
done
command -v javac >/dev/null || { echo "no javac: apt-get install default-jdk-headless" >&2; exit 2; }

work="$(mktemp -d)"
broker_pid=
cleanup() {
    [[ -n $broker_pid ]] && kill "$broker_pid" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
javac -nowarn -d "$work/classes" -cp "$BROKER_CP" "$here"/*.java

url="${BROKER_URL:-}"
if [[ -z $url ]]; then
    mkfifo "$work/keep" "$work/out"
    # RefBroker stops at end of its input: keep the fifo open until this script exits.
    read -r -a refbroker_opts <<<"${REFBROKER_OPTS:-}"
    java ${refbroker_opts[@]+"${refbroker_opts[@]}"} -cp "$work/classes:$BROKER_CP" RefBroker <"$work/keep" >"$work/out" 2>"$work/broker.log" &
    broker_pid=$!
    exec 3>"$work/keep"
    read -r -t 60 word url <"$work/out" || { echo "the reference broker did not start:" >&2; cat "$work/broker.log" >&2; exit 2; }
    [[ $word == LISTENING ]] || { echo "unexpected line from RefBroker: $word $url" >&2; exit 2; }
    echo "reference ActiveMQ broker at $url"
fi

scenarios=("$@")
if [[ ${#scenarios[@]} -eq 0 ]]; then
    scenarios=(queue-text message-types ack-auto ack-client ack-dups-ok ack-individual tx-producer
        tx-consumer topic-pubsub durable-topic temp-queue-reply selectors browser prefetch-zero failover)
fi
read -r -a extra <<<"${JMSCHECK_OPTS:-}"
jms() { java -XX:TieredStopAtLevel=1 -cp "$work/classes:$CLIENT_CP" JmsCheck "$@" ${extra[@]+"${extra[@]}"}; }

failed=()
for s in "${scenarios[@]}"; do
    echo "===== $s"
    if [[ $s == failover ]]; then
        q="jmscheck.failover.$$"
        f="failover:($url)?initialReconnectDelay=100"
        if jms failover-produce "$f" "queue=$q" count=200 </dev/null &&
            jms failover-consume "$f" "queue=$q" count=200 </dev/null; then :; else failed+=("$s"); fi
    elif ! jms "$s" "$url" </dev/null; then
        failed+=("$s")
    fi
done
echo "====="
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "FAILED: ${failed[*]}"
    exit 1
fi
echo "all passed: ${scenarios[*]}"
