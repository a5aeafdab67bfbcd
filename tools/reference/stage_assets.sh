#!/usr/bin/env bash
# Packs the assets the reference script needs into DEST/assets.tar.xz (xz: the device call's
# working tree is limited to 64 MiB and the two ref models alone are ~66 MB raw).
# Usage: tools/reference/stage_assets.sh .device/ref   (DEST must be git-ignored; carry it)
set -euo pipefail
dest=${1:-.device/ref}
assets=${KVSWEEP_ASSETS:-$(cd "$(dirname "$0")/../.." && pwd)/../shared/assets}
mkdir -p "$dest"
XZ_OPT="-9 -T2" tar -cJf "$dest/assets.tar.xz" -C "$assets" \
  data/lambada_openai/lambada_test.jsonl data/wikitext-2/wiki.test.raw \
  models/ref-gpt2 models/ref-llama tokenizers
ls -l "$dest/assets.tar.xz"
