#!/usr/bin/env bash
# Local ZooKeeper ensembles for ferromq tests and development clusters.
#
#   scripts/zk.sh install                        # ZooKeeper 3.8 (Debian bookworm) + 3.4.13 (bullseye archive)
#   scripts/zk.sh start DIR VERSION CLIENT_PORT_BASE
#                                                # VERSION = 3.8 | 3.4; 3 members on 127.0.0.1,
#                                                # client ports BASE, BASE+1, BASE+2
#   scripts/zk.sh stop DIR                       # stop the ensemble started in DIR
#   scripts/zk.sh status DIR                     # one line per member: pid, port, mode
#   scripts/zk.sh cli DIR [zkCli args...]        # run the version's zkCli against member 1
#
# An ensemble uses the 9 ports BASE..BASE+8: member i (1..3) has client port BASE+i-1, quorum
# port BASE+3+i-1 and election port BASE+6+i-1 (so bases of two ensembles must be >= 9 apart).
# tickTime=500, so a 2 s session timeout (ActiveMQ's default) is within [2, 20] x tickTime.
# No nc needed: four-letter words go through bash's /dev/tcp.
#
# The 3.4.13 client cannot connect on Java 14+ (it parses InetSocketAddress.toString(), which
# became "127.0.0.1/<unresolved>:PORT"); `cli` runs it with -Djdk.net.hosts.file mapping that
# string back to 127.0.0.1.
#
# The Rust harness (integration-tests/src/zk.rs) uses the same install paths and classpaths.
set -euo pipefail

ZK_HOST=127.0.0.1
MEMBERS=3

# ZooKeeper 3.8 (Debian bookworm package "zookeeper")
ZK38_JAR=/usr/share/java/zookeeper.jar # its manifest Class-Path pulls the dependencies
ZK38_SLF4J=/usr/share/java/slf4j-simple.jar
ZK38_CLI=/usr/share/zookeeper/bin/zkCli.sh

# ZooKeeper 3.4.13 (Debian bullseye), unpacked under a fixed directory
ZK34_HOME=/opt/zookeeper-3.4.13
ZK34_DEB_VERSION=3.4.13-6+deb11u1
ZK34_JAR=$ZK34_HOME/zookeeper-3.4.13.jar
# its dependencies come from bookworm's packages
ZK34_DEPS=/usr/share/java/log4j-1.2.jar:/usr/share/java/slf4j-api.jar:/usr/share/java/slf4j-log4j12.jar:/usr/share/java/jline.jar

die() { echo "zk.sh: $*" >&2; exit 1; }

usage() {
  sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

zk_4lw() { # PORT WORD -> prints the reply (empty if nothing answers)
  timeout 3 bash -c "exec 3<>/dev/tcp/$ZK_HOST/$1 && printf '%s' '$2' >&3 && cat <&3" 2>/dev/null || true
}

zk_port_busy() { timeout 1 bash -c "exec 3<>/dev/tcp/$ZK_HOST/$1" 2>/dev/null; }

classpath() { # VERSION DIR
  case "$1" in
    3.8) echo "$ZK38_JAR:$ZK38_SLF4J" ;;
    3.4) echo "$2:$ZK34_JAR:$ZK34_DEPS" ;; # DIR first: log4j.properties
    *) die "unknown version '$1' (expected 3.8 or 3.4)" ;;
  esac
}

installed_38() { [ -f "$ZK38_JAR" ] && [ -f "$ZK38_SLF4J" ] && [ -x "$ZK38_CLI" ]; }
installed_34() {
  [ -f "$ZK34_JAR" ] || return 1
  local j
  for j in ${ZK34_DEPS//:/ }; do [ -f "$j" ] || return 1; done
}

cmd_install() {
  if installed_38 && installed_34 && command -v java >/dev/null; then
    return 0 # nothing to install: no root needed
  fi
  [ "$(id -u)" = 0 ] || die "ZooKeeper is not installed yet, and installing it needs root (apt-get): run 'sudo $0 install' once"
  command -v java >/dev/null || NEED_JAVA=1
  if ! installed_38 || [ -n "${NEED_JAVA:-}" ]; then
    echo "installing zookeeper 3.8 from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zookeeper libslf4j-java >/dev/null
  fi
  installed_38 || die "zookeeper 3.8 still missing after apt-get install"
  # dependencies of 3.4 that live in bookworm (normally already pulled by zookeeper 3.8)
  local j missing=0
  for j in ${ZK34_DEPS//:/ }; do [ -f "$j" ] || missing=1; done
  if [ $missing = 1 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq liblog4j1.2-java libslf4j-java libjline-java >/dev/null
  fi
  if [ ! -f "$ZK34_JAR" ]; then
    echo "installing zookeeper 3.4.13 from Debian bullseye's archive into $ZK34_HOME"
    local tmp uri o
    tmp=$(mktemp -d /tmp/zk34-install.XXXXXX)
    chmod 755 "$tmp" # apt downloads as the _apt user
    mkdir -p "$tmp/lists/partial" "$tmp/debs"
    chown _apt "$tmp/debs" 2>/dev/null || true
    # the archive this machine already uses (deb822 or one-line sources)
    uri=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$uri" ] || uri=$(awk '$1=="deb"{print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
    [ -n "$uri" ] || uri=http://deb.debian.org/debian
    echo "deb $uri bullseye main" > "$tmp/sources.list"
    o=(-o "Dir::Etc::sourcelist=$tmp/sources.list" -o "Dir::Etc::sourceparts=-" -o "Dir::State::Lists=$tmp/lists")
    apt-get "${o[@]}" update -qq
    (cd "$tmp/debs" && apt-get "${o[@]}" download -qq \
      "libzookeeper-java=$ZK34_DEB_VERSION" "zookeeper=$ZK34_DEB_VERSION")
    mkdir -p "$tmp/root"
    local deb
    for deb in "$tmp"/debs/*.deb; do dpkg -x "$deb" "$tmp/root"; done
    local src
    src=$(find "$tmp/root" -name 'zookeeper-3.4.13.jar' -type f | head -1)
    [ -n "$src" ] || die "zookeeper-3.4.13.jar not found in the downloaded packages"
    rm -rf "$ZK34_HOME.new" && mkdir -p "$ZK34_HOME.new"
    cp -a "$tmp/root/." "$ZK34_HOME.new/root"
    cp "$src" "$ZK34_HOME.new/zookeeper-3.4.13.jar"
    rm -rf "$ZK34_HOME" && mv "$ZK34_HOME.new" "$ZK34_HOME"
    rm -rf "$tmp"
  fi
  installed_34 || die "zookeeper 3.4.13 incomplete under $ZK34_HOME"
  echo "zookeeper 3.8: $ZK38_JAR"
  echo "zookeeper 3.4: $ZK34_JAR"
}

write_configs() { # DIR VERSION BASE
  local dir=$1 version=$2 base=$3 i servers=""
  for i in $(seq 1 $MEMBERS); do
    servers+="server.$i=$ZK_HOST:$((base + MEMBERS + i - 1)):$((base + 2 * MEMBERS + i - 1))"$'\n'
  done
  echo "$version" > "$dir/version"
  echo "$base" > "$dir/port_base"
  if [ "$version" = 3.4 ]; then
    cat > "$dir/log4j.properties" <<'EOF'
log4j.rootLogger=INFO, CONSOLE
log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender
log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout
log4j.appender.CONSOLE.layout.ConversionPattern=%d{ISO8601} [myid:%X{myid}] - %-5p [%t:%C{1}@%L] - %m%n
EOF
  fi
  for i in $(seq 1 $MEMBERS); do
    local d="$dir/node$i"
    mkdir -p "$d/data"
    echo "$i" > "$d/data/myid"
    cat > "$d/zoo.cfg" <<CFG
tickTime=500
initLimit=20
syncLimit=10
dataDir=$d/data
clientPort=$((base + i - 1))
clientPortAddress=$ZK_HOST
maxClientCnxns=0
# 3.5+ only (3.4 ignores them): four-letter words are off unless whitelisted; no Jetty on :8080
4lw.commands.whitelist=srvr,stat,ruok,mntr,conf,cons,wchs,envi
admin.enableServer=false
preAllocSize=8192
$servers
CFG
  done
}

member_mode() { # PORT
  zk_4lw "$1" srvr | sed -n 's/^Mode: //p'
}

cmd_start() {
  [ $# = 3 ] || usage
  local dir=$1 version=$2 base=$3
  case "$version" in 3.8 | 3.4) ;; *) die "VERSION must be 3.8 or 3.4" ;; esac
  [[ "$base" =~ ^[0-9]+$ ]] || die "CLIENT_PORT_BASE must be a number"
  if [ "$version" = 3.8 ]; then installed_38 || die "zookeeper 3.8 not installed: run scripts/zk.sh install"; fi
  if [ "$version" = 3.4 ]; then installed_34 || die "zookeeper 3.4 not installed: run scripts/zk.sh install"; fi
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  local i p
  for i in $(seq 1 $MEMBERS); do
    [ -f "$dir/node$i/zk.pid" ] && kill -0 "$(cat "$dir/node$i/zk.pid")" 2>/dev/null &&
      die "an ensemble is already running in $dir (scripts/zk.sh stop $dir)"
  done
  for i in $(seq 1 $MEMBERS); do
    for p in $((base + i - 1)) $((base + MEMBERS + i - 1)) $((base + 2 * MEMBERS + i - 1)); do
      zk_port_busy "$p" && die "port $p already in use; choose another base port (ZK_PORT_BASE for scripts/local-cluster.sh)"
    done
  done
  write_configs "$dir" "$version" "$base"
  local cp
  cp=$(classpath "$version" "$dir")
  for i in $(seq 1 $MEMBERS); do
    local d="$dir/node$i"
    setsid nohup java -Xmx128m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
      -Dzookeeper.admin.enableServer=false -Dzookeeper.jmx.log4j.disable=true \
      -Dorg.slf4j.simpleLogger.showDateTime=true \
      -cp "$cp" org.apache.zookeeper.server.quorum.QuorumPeerMain "$d/zoo.cfg" \
      > "$d/zookeeper.out" 2>&1 < /dev/null &
    echo $! > "$d/zk.pid"
  done
  local deadline=$(($(date +%s) + ${ZK_START_TIMEOUT:-60})) ok modes m
  while :; do
    ok=0 modes=""
    for i in $(seq 1 $MEMBERS); do
      m=$(member_mode $((base + i - 1)))
      modes+=" node$i=${m:-down}"
      case "$m" in leader | follower) ok=$((ok + 1)) ;; esac
    done
    [ $ok = $MEMBERS ] && break
    if [ "$(date +%s)" -ge $deadline ]; then
      echo "zk.sh: ensemble did not come up:$modes; see $dir/node*/zookeeper.out" >&2
      cmd_stop "$dir" >/dev/null
      exit 1
    fi
    sleep 0.1
  done
  echo "ZooKeeper $version ensemble up in $dir:$modes"
  echo "connect string: $ZK_HOST:$base,$ZK_HOST:$((base + 1)),$ZK_HOST:$((base + 2))"
}

cmd_stop() {
  [ $# = 1 ] || usage
  local dir=$1 i f pid
  for i in $(seq 1 $MEMBERS); do
    f="$dir/node$i/zk.pid"
    [ -f "$f" ] || continue
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid" 2>/dev/null
      echo "stopped node$i (pid $pid)"
    fi
    rm -f "$f"
  done
}

cmd_status() {
  [ $# = 1 ] || usage
  local dir=$1 i base pid m state rc=0
  [ -f "$dir/port_base" ] || die "no ensemble configured in $dir"
  base=$(cat "$dir/port_base")
  echo "ZooKeeper $(cat "$dir/version") in $dir"
  for i in $(seq 1 $MEMBERS); do
    pid=$(cat "$dir/node$i/zk.pid" 2>/dev/null || true)
    state=stopped
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && state="pid $pid"
    m=$(member_mode $((base + i - 1)))
    [ -n "$m" ] || rc=1
    echo "node$i $ZK_HOST:$((base + i - 1)) $state mode=${m:-down}"
  done
  return $rc
}

cmd_cli() {
  [ $# -ge 1 ] || usage
  local dir=$1
  shift
  local version base
  version=$(cat "$dir/version") base=$(cat "$dir/port_base")
  if [ "$version" = 3.8 ]; then
    exec "$ZK38_CLI" -server "$ZK_HOST:$base" "$@"
  else
    printf '%s\n' "$ZK_HOST localhost localhost/<unresolved> $ZK_HOST/<unresolved>" > "$dir/cli-hosts"
    printf '%s\n' 'log4j.rootLogger=WARN, CONSOLE' \
      'log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender' \
      'log4j.appender.CONSOLE.Target=System.err' \
      'log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout' \
      'log4j.appender.CONSOLE.layout.ConversionPattern=%-5p %m%n' > "$dir/cli-log4j.properties"
    exec java -Xmx128m -XX:TieredStopAtLevel=1 -Djdk.net.hosts.file="$dir/cli-hosts" \
      -Dlog4j.configuration=file:"$dir/cli-log4j.properties" -cp "$ZK34_JAR:$ZK34_DEPS" \
      org.apache.zookeeper.ZooKeeperMain -server "$ZK_HOST:$base" "$@"
  fi
}

[ $# -ge 1 ] || usage
cmd=$1
shift
case "$cmd" in
  install) cmd_install "$@" ;;
  start) cmd_start "$@" ;;
  stop) cmd_stop "$@" ;;
  status) cmd_status "$@" ;;
  cli) cmd_cli "$@" ;;
  *) usage ;;
esac
