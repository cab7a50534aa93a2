#!/usr/bin/env bash
# The SwiftEmbed paper's load method (wrk, 12 threads, 400 connections, 30 s; POST /embed with 1 and 100 texts),
# scaled to this 2-core machine: wrk gets 2 threads and the connections and duration are arguments.
#   loadtest/wrk_paper.sh [URL] [CONNECTIONS] [SECONDS]      # defaults: http://127.0.0.1:8000 400 30
# Targets 127.0.0.1 only. Start the server first (swiftembed serve, or --standalone, or --ingress proxy).
set -euo pipefail
url=${1:-http://127.0.0.1:8000}
connections=${2:-400}
seconds=${3:-30}
case "$url" in
  http://127.0.0.1:*|http://localhost:*) ;;
  *) echo "load tests target 127.0.0.1 only" >&2; exit 2 ;;
esac
command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
for texts in 1 100; do
  echo "== POST /embed, $texts text(s) per request, $connections connections, ${seconds}s"
  TEXTS=$texts wrk -t2 -c"$connections" -d"${seconds}s" --timeout 10s --latency -s "$here/wrk/embed.lua" "$url"
done
