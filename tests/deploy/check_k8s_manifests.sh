#!/usr/bin/env bash
# Checks deploy/k8s without a cluster: kubectl parses and decodes every manifest
# (`kubectl label --local`, which needs no API server; `kubectl apply/create --dry-run=client`
# still ask one for its API groups), the Secrets are made from make-certs.sh's files exactly as
# docs/deploy.md says, and check_k8s_manifests.py checks what matters (probes on the health
# port, the database on the PVC, the GPU request, secrets mounted as files the flags name, ...).
#
#   check_k8s_manifests.sh
#
# Prints "SKIP: ..." (ctest: skipped) when kubectl is not installed.
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
if ! command -v kubectl >/dev/null; then
  echo "SKIP: kubectl not found (Debian: apt-get install kubernetes-client)"
  exit 0
fi
command -v openssl >/dev/null || { echo "FAIL: openssl not found" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# No kubeconfig, no cluster: kubectl must not need either.
unset KUBECONFIG
export HOME=$tmp

kubectl label --local -R -f "$src/deploy/k8s" -o json kvsweep.test/checked=yes > "$tmp/objects.json" 2> "$tmp/kubectl.err" ||
  { cat "$tmp/kubectl.err" >&2; echo "FAIL: kubectl cannot read deploy/k8s" >&2; exit 1; }
[ ! -s "$tmp/kubectl.err" ] || { cat "$tmp/kubectl.err" >&2; echo "FAIL: kubectl complained" >&2; exit 1; }

# The Secrets, as docs/deploy.md makes them.
names=(kvsweep-coordinator kvsweep-coordinator.kvsweep kvsweep-coordinator.kvsweep.svc
       kvsweep-coordinator.kvsweep.svc.cluster.local)
args=()
for n in "${names[@]}"; do args+=(--coordinator-name "$n"); done
bash "$src/deploy/tls/make-certs.sh" "$tmp/tls" "${args[@]}" > /dev/null
for t in admin worker client; do head -c 32 /dev/urandom | base64 > "$tmp/$t.token"; done
{
  kubectl create secret generic kvsweep-coordinator-tls -n kvsweep --dry-run=client -o json \
    --from-file=ca.crt="$tmp/tls/ca.crt" --from-file=tls.crt="$tmp/tls/coordinator.crt" \
    --from-file=tls.key="$tmp/tls/coordinator.key"
  kubectl create secret generic kvsweep-worker-tls -n kvsweep --dry-run=client -o json \
    --from-file=ca.crt="$tmp/tls/ca.crt" --from-file=tls.crt="$tmp/tls/worker.crt" \
    --from-file=tls.key="$tmp/tls/worker.key"
  kubectl create secret generic kvsweep-tokens -n kvsweep --dry-run=client -o json \
    --from-file=admin.token="$tmp/admin.token" --from-file=worker.token="$tmp/worker.token" \
    --from-file=client.token="$tmp/client.token"
} > "$tmp/secrets.json"
python3 "$src/tests/deploy/check_k8s_manifests.py" "$tmp/objects.json" "$tmp/secrets.json" "${names[@]}"
echo PASS
