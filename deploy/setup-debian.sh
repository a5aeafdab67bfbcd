#!/usr/bin/env bash
# Installs every Debian 12 package kvsweep needs to build, test and run on a CPU machine.
# Idempotent: packages already present are skipped by apt. Needs root (or sudo).
set -euo pipefail
pkgs=(
  build-essential cmake pkg-config git
  libtorch-dev libopenblas0-pthread          # libtorch 1.13 (CPU); OpenBLAS instead of reference BLAS (~20x faster GEMM)
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libssl-dev openssl libsqlite3-dev sqlite3   # openssl: the TLS test makes certificates
  libgtest-dev libgmock-dev libbenchmark-dev
  nlohmann-json3-dev libyaml-cpp-dev libpcre2-dev libcli11-dev
  libicu-dev                                 # tokenizer NFC/NFKC normalizers (Qwen2 tokenizer.json)
  clang-14 libclang-rt-14-dev                # fuzz targets: libFuzzer + sanitizers (make fuzz)
  python3-numpy                              # independent check of the table's bootstrap intervals
  slurm-wlm munge                            # tests/slurm: a single-node Slurm cluster runs a sweep via sbatch
  prometheus-cpp-dev                         # kvsweep-coordinator --metrics-listen (Prometheus /metrics)
  libcpp-httplib-dev                         # kvsweep-coordinator --http (the web dashboard)
  chromium fonts-liberation                  # kvsweep plot --png: headless Chromium renders the SVG
  systemd                                    # tests/deploy: systemd-analyze verify/security on deploy/systemd
)
# tests/deploy: kubectl reads deploy/k8s offline. Debian's kubectl is kubernetes-client; a
# kubectl from elsewhere (Google's or Kubernetes' apt repository) serves as well and would
# conflict with it.
command -v kubectl >/dev/null || pkgs+=(kubernetes-client)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then echo "setup: all ${#pkgs[@]} packages present"; exit 0; fi
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq || true
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "setup: done"
