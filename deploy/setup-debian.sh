#!/usr/bin/env bash
# Installs the Debian 12 packages kvsweep needs. Idempotent: packages already present are
# skipped by apt. Needs root (or sudo).
#
#   deploy/setup-debian.sh            everything to build, test and run on a CPU machine (make test)
#   deploy/setup-debian.sh --build    only what compiling kvsweep, kvsweep-coordinator and
#                                     kvsweep-worker needs (the container image's build stage)
set -euo pipefail
build_pkgs=(
  build-essential cmake pkg-config
  libtorch-dev libopenblas0-pthread          # libtorch 1.13 (CPU); OpenBLAS instead of reference BLAS (~20x faster GEMM)
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libssl-dev libsqlite3-dev
  nlohmann-json3-dev libyaml-cpp-dev libpcre2-dev libcli11-dev
  libicu-dev                                 # tokenizer NFC/NFKC normalizers (Qwen2 tokenizer.json)
  prometheus-cpp-dev                         # --metrics-listen of coordinator and worker (/metrics)
  libcpp-httplib-dev                         # --http (the web dashboard), --metrics-listen
)
pkgs=("${build_pkgs[@]}")
case "${1:-}" in
  --build) ;;
  "")
    pkgs+=(
      git openssl sqlite3                    # openssl: the TLS test makes certificates
      libgtest-dev libgmock-dev libbenchmark-dev
      clang-14 libclang-rt-14-dev            # fuzz targets: libFuzzer + sanitizers (make fuzz)
      clang-format-14                        # the SourceFormat test (tools/lint/check_format.sh)
      python3-numpy                          # independent check of the table's bootstrap intervals
      slurm-wlm munge                        # tests/slurm: a single-node Slurm cluster runs a sweep via sbatch
      chromium fonts-liberation              # kvsweep plot --png: headless Chromium renders the SVG
      systemd                                # tests/deploy: systemd-analyze verify/security on deploy/systemd
      iproute2                               # tests/deploy: the no-shared-filesystem test's network namespace
      # tests/deploy: the container image (deploy/docker) built from a base made offline by
      # mmdebstrap, run by podman and podman-compose; runc for hosts with hybrid cgroups (crun
      # refuses them), netavark + aardvark-dns + iptables for the containers' network and names.
      podman podman-compose runc netavark aardvark-dns iptables mmdebstrap
    )
    # tests/deploy: kubectl reads deploy/k8s offline. Debian's kubectl is kubernetes-client; a
    # kubectl from elsewhere (Google's or Kubernetes' apt repository) serves as well and would
    # conflict with it.
    command -v kubectl >/dev/null || pkgs+=(kubernetes-client)
    ;;
  *) echo "usage: $0 [--build]" >&2; exit 2 ;;
esac
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
