#!/usr/bin/env bash
# The reference server, sqlrooms-server from PyPI, in a venv of its own (it needs Debian's
# libuv1); prints the venv's path. Used by every benchmark that runs it beside duckwire.
set -euo pipefail
venv="$HOME/.cache/duckwire/pyref"
if [ ! -x "$venv/bin/sqlrooms-server" ]; then
  if command -v apt-get >/dev/null && ! ldconfig -p | grep -q libuv.so.1; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q libuv1 >/dev/null
  fi
  python3 -m venv "$venv" >&2
  "$venv/bin/pip" install -q sqlrooms-server >&2
fi
echo "$venv"
