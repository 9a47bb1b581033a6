#!/usr/bin/env bash
# Installs what a fresh machine lacks to build the workspace: cmake (pingora builds zlib-ng) and a C
# compiler. Safe to run again: it only installs what is missing.
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
command -v cargo >/dev/null 2>&1 || { echo "error: cargo is required (https://rustup.rs)" >&2; exit 1; }
