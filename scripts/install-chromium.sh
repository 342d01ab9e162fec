#!/usr/bin/env bash
# Installs Debian's chromium and chromium-driver (the web app's browser test drives them) when
# chromedriver is missing and apt-get is there; used by .ci/run and by the browser test itself.
set -euo pipefail
command -v chromedriver >/dev/null && exit 0
[ -x /usr/lib/chromium/chromedriver ] && exit 0
command -v apt-get >/dev/null || { echo "no apt-get here: install chromium and chromium-driver by hand" >&2; exit 1; }
sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q chromium chromium-driver
