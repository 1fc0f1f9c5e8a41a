#!/usr/bin/env bash
# Installs what the integration tests need when it is missing (a no-op when everything is
# there; needs root or sudo the first time): ZooKeeper 3.8 and 3.4.13 for the cluster tests,
# stomp.py for the independent-client tests, a JDK and Debian's libactivemq-java for the
# OpenWire tests (integration-tests/src/java.rs lists the jars), and for the Windows build run
# under Wine: the x86_64-pc-windows-gnu target, MinGW and Wine. Run by scripts/test.sh and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
# stomp.py for whichever python3 the tests run: pip where it may install (a virtualenv, pyenv),
# Debian's package where the system python3 refuses pip (PEP 668: EXTERNALLY-MANAGED).
if ! python3 -c 'import stomp' 2>/dev/null; then
    if ! command -v python3 >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 >/dev/null
    fi
    python3 -m pip install --quiet 'stomp.py>=8,<10' 2>/dev/null || {
        echo "installing stomp.py from Debian (python3-stomp)"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-stomp >/dev/null
    }
    python3 -c 'import stomp' || { echo "stomp.py is still missing for $(command -v python3)" >&2; exit 1; }
fi
scripts/zk.sh install
java_client_ok() {
    command -v javac >/dev/null || return 1
    local jar
    for jar in activemq-client activemq-broker geronimo-jms_1.1_spec hawtbuf slf4j-api slf4j-nop \
        geronimo-j2ee-management-1.1-spec; do
        [ -f "/usr/share/java/$jar.jar" ] || return 1
    done
}
if ! java_client_ok; then
    echo "installing a JDK and the ActiveMQ Java client from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        default-jdk-headless libactivemq-java >/dev/null
    java_client_ok || { echo "javac or the ActiveMQ client jars still missing" >&2; exit 1; }
fi

# The Windows build, run under Wine (integration-tests/tests/windows.rs): cargo's
# x86_64-pc-windows-gnu target, MinGW's linker and Debian's Wine.
if ! rustup target list --installed 2>/dev/null | grep -qx x86_64-pc-windows-gnu; then
    echo "adding the x86_64-pc-windows-gnu target"
    rustup target add x86_64-pc-windows-gnu
fi
if ! command -v x86_64-w64-mingw32-gcc >/dev/null || [ ! -x /usr/lib/wine/wine64 ]; then
    echo "installing MinGW and Wine from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        gcc-mingw-w64-x86-64 wine64 >/dev/null
fi
