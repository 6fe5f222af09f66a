#!/usr/bin/env bash
# Installs the system programs the test-suite drives for real: shells, an X server and input tool,
# tmux, vim and git, the fleet collector's PostgreSQL and HAProxy, and Chromium for the review page's
# browser tests (Playwright drives this one; it never downloads a browser of its own). Does nothing
# when they are all present.
set -euo pipefail
need=()
for pair in Xvfb:xvfb xdotool:xdotool zsh:zsh fish:fish tmux:tmux vim:vim git:git \
            trayer:trayer xwininfo:x11-utils openbox:openbox import:imagemagick dpkg-deb:dpkg-dev fakeroot:fakeroot \
            haproxy:haproxy runuser:util-linux chromium:chromium; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || need+=("$pkg")
done
# bash's loadable builtins: the hook marks its spool descriptor close-on-exec with `fdflags`.
[ -f /usr/lib/bash/fdflags ] || need+=(bash-builtins)
# PostgreSQL's server binaries live outside PATH; the fleet tests run a throw-away cluster.
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
[ ${#need[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-test-deps: please install: ${need[*]} (no apt-get here)" >&2
  exit 1
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing test dependencies: ${need[*]}"
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
