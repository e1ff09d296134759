#!/usr/bin/env bash
# System packages the demo and the tests need, installed from Debian when apt is there:
#   dataset-fashion-mnist  the demo's data (/usr/share/datasets/fashion-mnist)
#   chromium               the browser tests (Playwright drives /usr/bin/chromium)
#   postgresql             the cluster tests (their own server from a temp data dir on 127.0.0.1)
# Shared by the Makefile (`make demo`, `make test`, `make deps`) and .ci/run. Installs only what
# is missing, says what it could not install, and never fails the caller: a missing component
# is reported here and then fails its own test under CI=true (it is never silently skipped).
# Usage: scripts/system-deps.sh [demo|test]   (demo needs only the data set)
set -uo pipefail

what="${1:-test}"
have_fmnist() { [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] ||
                [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte ]; }
have_chromium() { [ -x /usr/bin/chromium ]; }
have_postgres() { ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; }

missing=()
have_fmnist || missing+=(dataset-fashion-mnist)
if [ "$what" = test ]; then
  have_chromium || missing+=(chromium)
  have_postgres || missing+=(postgresql)
fi
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; fi
fi
if ! command -v apt-get >/dev/null 2>&1 || { [ "$(id -u)" -ne 0 ] && [ -z "$sudo" ]; }; then
  echo "system-deps: cannot install ${missing[*]} (needs apt-get as root or passwordless sudo)." >&2
  echo "system-deps: install them with your package manager (Debian: apt-get install ${missing[*]})." >&2
  exit 0
fi

echo "system-deps: installing ${missing[*]} from Debian ..." >&2
$sudo apt-get update -qq >/dev/null 2>&1 || echo "system-deps: apt-get update failed" >&2
# policy-rc.d keeps postgresql from starting its default cluster: the tests run their own.
policy=""
if [ ! -e /usr/sbin/policy-rc.d ]; then
  policy=/usr/sbin/policy-rc.d
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null && $sudo chmod +x "$policy"
fi
for pkg in "${missing[@]}"; do
  if ! DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
      "$pkg" >/tmp/system-deps-"$pkg".log 2>&1; then
    echo "system-deps: could not install $pkg (see /tmp/system-deps-$pkg.log)" >&2
  fi
done
[ -n "$policy" ] && $sudo rm -f "$policy"

left=()
have_fmnist || left+=(dataset-fashion-mnist)
if [ "$what" = test ]; then
  have_chromium || left+=(chromium)
  have_postgres || left+=(postgresql)
fi
if [ ${#left[@]} -gt 0 ]; then
  echo "system-deps: still missing: ${left[*]}; the tests that need them fail under CI=true" >&2
else
  echo "system-deps: ${missing[*]} installed" >&2
fi
exit 0
