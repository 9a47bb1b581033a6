#!/usr/bin/env bash
# Installs what a fresh machine lacks to build the workspace: cmake (pingora builds zlib-ng) and a C
# compiler; and, for the status page's browser test, headless Chromium and its WebDriver (Debian's
# chromium and chromium-driver). Safe to run again: it only installs what is missing.
set -euo pipefail

need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
if [ ${#need[@]} -gt 0 ]; then
  echo "==> installing: ${need[*]}"
  if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
  if command -v apt-get >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
  elif [[ " ${need[*]} " == *" cmake "* ]] && command -v pip3 >/dev/null 2>&1; then
    pip3 install --quiet cmake
  else
    echo "error: please install ${need[*]} (no apt-get here)" >&2
    exit 1
  fi
fi

# The browser test's tools: installed with apt-get where there is one; elsewhere that test skips
# (or fails under REQUIRE_BROWSER=1).
browser=()
command -v chromium >/dev/null 2>&1 || browser+=(chromium)
command -v chromedriver >/dev/null 2>&1 || browser+=(chromium-driver)
if [ ${#browser[@]} -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1; then
    echo "==> installing: ${browser[*]}"
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${browser[@]}" >/dev/null
  else
    echo "note: ${browser[*]} not installed (no apt-get): the status page's browser test will skip" >&2
  fi
fi
command -v cargo >/dev/null 2>&1 || { echo "error: cargo is required (https://rustup.rs)" >&2; exit 1; }
