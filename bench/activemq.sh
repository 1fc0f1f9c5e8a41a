#!/usr/bin/env bash
# bench/activemq.sh start|stop|status — one ActiveMQ 5.17 broker (Debian's `activemq` package)
# for bench/compare.sh, bench/cluster.sh and bench/openwire.sh, run in the background without
# systemd.
#
#   KahaDB persistence with its defaults (journalDiskSyncStrategy=ALWAYS: the journal is
#   fsynced before a persistent send is answered; concurrent sends share a write batch),
#   OpenWire on 127.0.0.1:$AMQ_OPENWIRE_PORT, STOMP on 127.0.0.1:$AMQ_STOMP_PORT, heap $AMQ_HEAP.
#
# Environment (defaults in brackets):
#   AMQ_WORK            work dir: conf/activemq.xml, data/ (KahaDB), activemq.log, activemq.pid
#                       [/tmp/ferromq-bench/activemq]
#   AMQ_OPENWIRE_PORT   [61626]
#   AMQ_STOMP_PORT      [61623]
#   AMQ_HEAP            -Xms/-Xmx [512M]
#   AMQ_FRESH           1: delete the KahaDB store before starting, 0: keep it [1]
#   AMQ_START_TIMEOUT   seconds to wait for both ports [120]
#   AMQ_JAVA            the java binary [Java 17 from /usr/lib/jvm if present, else `java`]
#
# `start` installs the package (and a JRE) with apt-get when it is missing. `stop` sends
# SIGTERM to the recorded pid (KahaDB closes cleanly), then SIGKILL after 20 s.
set -euo pipefail

AMQ_WORK=${AMQ_WORK:-/tmp/ferromq-bench/activemq}
AMQ_HOST=127.0.0.1
AMQ_OPENWIRE_PORT=${AMQ_OPENWIRE_PORT:-61626}
AMQ_STOMP_PORT=${AMQ_STOMP_PORT:-61623}
AMQ_HEAP=${AMQ_HEAP:-512M}
AMQ_FRESH=${AMQ_FRESH:-1}
AMQ_START_TIMEOUT=${AMQ_START_TIMEOUT:-120}
AMQ_HOME=/usr/share/activemq
AMQ_RUN_JAR=$AMQ_HOME/bin/activemq.jar   # Main-Class org.apache.activemq.console.Main
PIDFILE=$AMQ_WORK/activemq.pid
LOG=$AMQ_WORK/activemq.log

say() { echo "activemq.sh: $*" >&2; }

port_open() { timeout 1 bash -c "exec 3<>/dev/tcp/$AMQ_HOST/$1" 2>/dev/null; }

pick_java() {
  if [ -n "${AMQ_JAVA:-}" ]; then echo "$AMQ_JAVA"; return; fi
  for j in /usr/lib/jvm/java-17-openjdk-*/bin/java /usr/lib/jvm/default-java/bin/java; do
    [ -x "$j" ] && { echo "$j"; return; }
  done
  command -v java
}

ensure_installed() {
  if [ -f "$AMQ_RUN_JAR" ] && pick_java >/dev/null 2>&1; then return; fi
  say "installing Debian's activemq package and a JRE (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq activemq default-jre-headless >/dev/null
  [ -f "$AMQ_RUN_JAR" ] || { say "$AMQ_RUN_JAR missing after install"; exit 1; }
}

# The pid in the pid file, if that process is still our broker (not a reused pid).
running_pid() {
  [ -f "$PIDFILE" ] || return 1
  local pid; pid=$(cat "$PIDFILE")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "-Dactivemq.base=$AMQ_WORK" || return 1
  echo "$pid"
}

write_config() {
  mkdir -p "$AMQ_WORK/conf" "$AMQ_WORK/data" "$AMQ_WORK/tmp"
  # No systemUsage, no policies: every limit at ActiveMQ's default. <kahaDB> without
  # attributes: KahaDB's defaults (enableJournalDiskSyncs=true, journalDiskSyncStrategy=ALWAYS).
  cat > "$AMQ_WORK/conf/activemq.xml" <<XML
<beans xmlns="http://www.springframework.org/schema/beans"
  xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
  xsi:schemaLocation="http://www.springframework.org/schema/beans http://www.springframework.org/schema/beans/spring-beans.xsd
  http://activemq.apache.org/schema/core http://activemq.apache.org/schema/core/activemq-core.xsd">
  <bean class="org.springframework.beans.factory.config.PropertyPlaceholderConfigurer"/>
  <broker xmlns="http://activemq.apache.org/schema/core" brokerName="ferromq-bench"
          useJmx="false" persistent="true" dataDirectory="\${activemq.data}">
    <persistenceAdapter>
      <kahaDB directory="\${activemq.data}/kahadb"/>
    </persistenceAdapter>
    <transportConnectors>
      <transportConnector name="openwire" uri="tcp://$AMQ_HOST:$AMQ_OPENWIRE_PORT"/>
      <transportConnector name="stomp" uri="stomp://$AMQ_HOST:$AMQ_STOMP_PORT"/>
    </transportConnectors>
  </broker>
</beans>
XML
  # Debian's lib/ has slf4j-log4j12 and log4j 1.2, so a log4j 1.x file is what is read.
  cat > "$AMQ_WORK/conf/log4j.properties" <<'L4J'
log4j.rootLogger=INFO, out
log4j.logger.org.springframework=WARN
log4j.logger.org.apache.xbean=WARN
log4j.appender.out=org.apache.log4j.ConsoleAppender
log4j.appender.out.layout=org.apache.log4j.PatternLayout
log4j.appender.out.layout.ConversionPattern=%d | %-5p | %m | %c | %t%n
L4J
}

start() {
  ensure_installed
  if pid=$(running_pid); then say "already running, pid $pid"; return 0; fi
  for p in "$AMQ_OPENWIRE_PORT" "$AMQ_STOMP_PORT"; do
    if port_open "$p"; then say "port $p is already in use"; exit 1; fi
  done
  [ "$AMQ_FRESH" = 1 ] && rm -rf "$AMQ_WORK/data"
  write_config
  local java; java=$(pick_java)
  local -a opens=()
  # What /usr/bin/activemq adds on Java > 8 (XBean/Spring reflect into these packages).
  if "$java" -version 2>&1 | grep -qE 'version "(9|[1-9][0-9])'; then
    opens=(--add-reads=java.xml=java.logging
      --add-opens java.base/java.security=ALL-UNNAMED --add-opens java.base/java.net=ALL-UNNAMED
      --add-opens java.base/java.lang=ALL-UNNAMED --add-opens java.base/java.util=ALL-UNNAMED
      --add-opens java.naming/javax.naming.spi=ALL-UNNAMED
      --add-opens java.rmi/sun.rmi.transport.tcp=ALL-UNNAMED
      --add-opens java.base/java.util.concurrent=ALL-UNNAMED
      --add-opens java.base/java.util.concurrent.atomic=ALL-UNNAMED
      --add-exports=java.base/sun.net.www.protocol.http=ALL-UNNAMED
      --add-exports=java.base/sun.net.www.protocol.https=ALL-UNNAMED
      --add-exports=java.base/sun.net.www.protocol.jar=ALL-UNNAMED
      --add-exports=jdk.xml.dom/org.w3c.dom.html=ALL-UNNAMED
      --add-exports=jdk.naming.rmi/com.sun.jndi.url.rmi=ALL-UNNAMED)
  fi
  local t0; t0=$(date +%s.%N)
  setsid nohup "$java" "-Xms$AMQ_HEAP" "-Xmx$AMQ_HEAP" \
    -Dorg.apache.activemq.UseDedicatedTaskRunner=true \
    "${opens[@]}" \
    -Dlog4j.configuration="file:$AMQ_WORK/conf/log4j.properties" \
    -Dactivemq.classpath="$AMQ_WORK/conf" -Dactivemq.home="$AMQ_HOME" \
    -Dactivemq.base="$AMQ_WORK" -Dactivemq.conf="$AMQ_WORK/conf" \
    -Dactivemq.data="$AMQ_WORK/data" -Djava.io.tmpdir="$AMQ_WORK/tmp" \
    -jar "$AMQ_RUN_JAR" start "xbean:file:$AMQ_WORK/conf/activemq.xml" \
    > "$LOG" 2>&1 < /dev/null &
  local pid=$!
  echo "$pid" > "$PIDFILE"
  local deadline=$(( $(date +%s) + AMQ_START_TIMEOUT ))
  until port_open "$AMQ_OPENWIRE_PORT" && port_open "$AMQ_STOMP_PORT"; do
    if ! kill -0 "$pid" 2>/dev/null || [ "$(date +%s)" -ge "$deadline" ]; then
      say "ActiveMQ did not start within ${AMQ_START_TIMEOUT}s; tail of $LOG:"
      tail -30 "$LOG" >&2
      kill "$pid" 2>/dev/null || true
      rm -f "$PIDFILE"
      exit 1
    fi
    sleep 0.2
  done
  awk -v a="$t0" -v b="$(date +%s.%N)" -v pid="$pid" \
    'BEGIN { printf "activemq.sh: ActiveMQ up in %.1f s, pid %d\n", b - a, pid }' >&2
  say "openwire tcp://$AMQ_HOST:$AMQ_OPENWIRE_PORT, stomp tcp://$AMQ_HOST:$AMQ_STOMP_PORT, log $LOG"
}

stop() {
  local pid
  if ! pid=$(running_pid); then rm -f "$PIDFILE"; say "not running"; return 0; fi
  kill "$pid"
  local deadline=$(( $(date +%s) + 20 ))
  while kill -0 "$pid" 2>/dev/null; do
    if [ "$(date +%s)" -ge "$deadline" ]; then say "SIGKILL $pid"; kill -9 "$pid"; break; fi
    sleep 0.2
  done
  rm -f "$PIDFILE"
  say "stopped pid $pid"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) if pid=$(running_pid); then echo "running, pid $pid"; else echo "stopped"; exit 3; fi ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
