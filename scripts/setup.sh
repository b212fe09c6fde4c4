#!/usr/bin/env bash
# Installs what mmfree needs on Debian 12 / Ubuntu 22.04 or later (as root, or through sudo), and
# the Node packages its client tests use (tests/node, from package-lock.json).
#
#   scripts/setup.sh          build + tests: compiler, CMake, nlohmann-json, Eigen, GoogleTest,
#                             Google Benchmark, Verilator + yosys (hw/), cpp-httplib, hiredis +
#                             redis-server (state shared by replicas), nginx-light (a load
#                             balancer in front of replicas, in a test), Node, and Python's
#                             headers, pybind11, NumPy, pytest and setuptools (the bindings)
#   scripts/setup.sh --all    also what CI runs besides: clang (fuzzing), the AArch64 cross
#                             compiler and qemu (NEON tests)
set -euo pipefail
cd "$(dirname "$0")/.."
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup.sh: run as root, or install sudo" >&2; exit 1; }
  sudo="sudo"
fi
pkgs=(build-essential cmake g++ pkgconf nlohmann-json3-dev libeigen3-dev libgtest-dev libgmock-dev
      libbenchmark-dev libcpp-httplib-dev libhiredis-dev redis-server nginx-light verilator yosys nextpnr-ice40
      python3-dev pybind11-dev python3-pybind11 python3-numpy python3-pytest python3-setuptools python3-pip python3-venv)
[ "${1:-}" = "--all" ] && pkgs+=(clang libclang-rt-dev g++-aarch64-linux-gnu qemu-user)
# Node: the machine's own if it has one (Debian's npm package conflicts with NodeSource's nodejs).
command -v node >/dev/null && command -v npm >/dev/null || pkgs+=(nodejs npm)
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
(cd tests/node && npm ci --no-audit --no-fund --loglevel=error)
echo "setup.sh: installed ${#pkgs[@]} Debian packages and the Node test clients"
