#!/usr/bin/env bash
# Makes the certificates for a kvsweep deployment with mutual TLS:
#
#   deploy/tls/make-certs.sh DIR --coordinator-name NAME [--coordinator-name NAME]...
#       [--days N] [--worker-cn CN] [--client-cn CN]
#
# NAME: a DNS name or an IP address under which workers and users reach the coordinator (each
# becomes a subjectAltName; the first is also the certificate's CN). Writes, in DIR:
#
#   ca.crt ca.key                  the CA (ca.key: keep it off the cluster; reused if present)
#   coordinator.crt coordinator.key  server certificate (serverAuth) with the NAMEs
#   worker.crt worker.key          client certificate for workers (clientAuth, CN kvsweep-worker)
#   client.crt client.key          client certificate for users (clientAuth, CN kvsweep-client)
#
# Keys are EC P-256, mode 0600; DIR is created 0700. An existing ca.crt/ca.key pair is reused,
# so running the script again (new names, renewal) keeps every holder of ca.crt trusting the new
# certificates; the other files are written anew. The coordinator takes --tls-cert
# coordinator.crt --tls-key coordinator.key --tls-client-ca ca.crt; workers and the CLI take
# --tls-ca ca.crt --tls-cert worker.crt|client.crt --tls-key worker.key|client.key.
set -euo pipefail

usage() {
  echo "usage: $0 DIR --coordinator-name NAME [--coordinator-name NAME]... [--days N]" \
       "[--worker-cn CN] [--client-cn CN]" >&2
  exit 2
}

[ $# -ge 1 ] || usage
dir=$1; shift
case "$dir" in -*) usage ;; esac
names=()
days=825
worker_cn=kvsweep-worker
client_cn=kvsweep-client
while [ $# -gt 0 ]; do
  case "$1" in
    --coordinator-name) [ $# -ge 2 ] || usage; names+=("$2"); shift 2 ;;
    --days) [ $# -ge 2 ] || usage; days=$2; shift 2 ;;
    --worker-cn) [ $# -ge 2 ] || usage; worker_cn=$2; shift 2 ;;
    --client-cn) [ $# -ge 2 ] || usage; client_cn=$2; shift 2 ;;
    *) echo "make-certs.sh: unknown argument '$1'" >&2; usage ;;
  esac
done
[ ${#names[@]} -ge 1 ] || { echo "make-certs.sh: at least one --coordinator-name is needed" >&2; exit 2; }
[[ "$days" =~ ^[1-9][0-9]*$ ]] || { echo "make-certs.sh: --days must be a positive integer" >&2; exit 2; }
command -v openssl >/dev/null || { echo "make-certs.sh: openssl not found (Debian: apt-get install openssl)" >&2; exit 1; }

sans=()
for n in "${names[@]}"; do
  if [[ "$n" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ || "$n" == *:* ]]; then
    sans+=("IP:$n")
  elif [[ "$n" =~ ^[A-Za-z0-9*]([A-Za-z0-9.-]*[A-Za-z0-9])?$ ]]; then
    sans+=("DNS:$n")
  else
    echo "make-certs.sh: '$n' is neither a DNS name nor an IP address" >&2; exit 2
  fi
done
san_list=$(IFS=,; echo "${sans[*]}")

umask 077
mkdir -p "$dir"
chmod 700 "$dir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

if [ -f "$dir/ca.crt" ] && [ -f "$dir/ca.key" ]; then
  echo "make-certs.sh: reusing the CA in $dir"
else
  newkey "$dir/ca.key"
  openssl req -x509 -new -key "$dir/ca.key" -sha256 -days "$days" -subj "/CN=kvsweep CA" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" -out "$dir/ca.crt"
fi

# sign NAME CN EXTENSIONS: NAME.key and NAME.crt signed by the CA.
sign() {
  local name=$1 cn=$2 ext=$3
  newkey "$tmp/$name.key"
  openssl req -new -key "$tmp/$name.key" -subj "/CN=$cn" -out "$tmp/$name.csr"
  printf '%s\n' "$ext" > "$tmp/$name.ext"
  openssl x509 -req -in "$tmp/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
    -CAcreateserial -CAserial "$tmp/ca.srl" -sha256 -days "$days" -extfile "$tmp/$name.ext" \
    -out "$tmp/$name.crt" 2>/dev/null
  mv "$tmp/$name.key" "$dir/$name.key"
  mv "$tmp/$name.crt" "$dir/$name.crt"
}

leaf="basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment"
sign coordinator "${names[0]}" "$leaf
extendedKeyUsage=serverAuth
subjectAltName=$san_list"
sign worker "$worker_cn" "$leaf
extendedKeyUsage=clientAuth"
sign client "$client_cn" "$leaf
extendedKeyUsage=clientAuth"
chmod 644 "$dir/ca.crt" "$dir/coordinator.crt" "$dir/worker.crt" "$dir/client.crt"
echo "make-certs.sh: wrote $dir/{ca,coordinator,worker,client}.{crt,key} (coordinator: $san_list; $days days)"
