#!/usr/bin/env bash
# Make sure a Redis 7 answers on 127.0.0.1:6379 for the tests (they use a dedicated DB and key
# prefix). Machines of this project run one already; elsewhere install and start one.
set -euo pipefail
ping() { (exec 3<>/dev/tcp/127.0.0.1/6379 && printf 'PING\r\n' >&3 && head -c 5 <&3 | grep -q PONG) 2>/dev/null; }
ping && { echo "redis: running on 127.0.0.1:6379"; exit 0; }
if ! command -v redis-server >/dev/null 2>&1; then
  echo "redis: not installed, installing redis-server"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi
redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
for _ in $(seq 50); do ping && { echo "redis: started on 127.0.0.1:6379"; exit 0; }; sleep 0.1; done
echo "redis: failed to start" >&2; exit 1
