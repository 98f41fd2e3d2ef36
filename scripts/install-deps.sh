#!/usr/bin/env bash
# Installs, from Debian's packages, whatever drover needs that is missing. Idempotent:
# a machine that has everything gets no apt call at all. Nothing is downloaded at build
# or run time; this is the only place packages come from.
#   install-deps.sh        what building and testing need
#   install-deps.sh fuzz   that, and clang with libFuzzer for `make fuzz`
set -euo pipefail

pkgs=(
  build-essential cmake pkg-config
  libzmq3-dev          # ZeroMQ: every control message
  libmsgpack-dev       # msgpack-c: every encoding
  libopenblas-dev      # CBLAS sgemm for the CPU backend
  zlib1g-dev           # .gz datasets
  libcyaml-dev         # YAML job specs
  libsqlite3-dev       # coordinator's durable state
  libcmocka-dev        # unit tests
  libsodium-dev        # the ring's handshake (ring keys, proofs)
  dataset-fashion-mnist  # /usr/share/datasets/fashion-mnist
  python3              # protocol client test (pyzmq, msgpack from Debian)
  python3-zmq python3-msgpack
  slurm-wlm munge      # managed targets: the Slurm launcher, and the test suite's own cluster
  openssh-server openssh-client  # managed targets: the ssh launcher, and the tests' sshd
  python3-torch        # command jobs: the PyTorch DDP example and its tests (CPU, gloo)
)
if [ "${1:-}" = "fuzz" ]; then
  pkgs+=(
    clang-14             # the fuzz build's compiler (AddressSanitizer, UBSan)
    libclang-rt-14-dev   # libFuzzer's runtime (libclang_rt.fuzzer) and the sanitizers'
  )
fi

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

echo "install-deps: installing ${missing[*]}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
# The daemons among them (sshd, munged, slurmctld, slurmd) are for the tests, which start
# their own on loopback: none is started (or enabled to start) by the installation.
if [ ! -e /usr/sbin/policy-rc.d ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee /usr/sbin/policy-rc.d >/dev/null
  $SUDO chmod 755 /usr/sbin/policy-rc.d
  trap '$SUDO rm -f /usr/sbin/policy-rc.d' EXIT
fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
