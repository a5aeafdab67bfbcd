#!/usr/bin/env bash
# Checks deploy/systemd/: the units as systemd reads them, their hardening, their stop timing,
# and that their command lines work: the coordinator and a worker instance are run with exactly
# the units' ExecStart arguments (credentials, config and state paths moved into a temp dir)
# and mutual TLS from deploy/tls/make-certs.sh, and a sweep goes through them.
#
#   check_systemd_units.sh COORDINATOR_BIN WORKER_BIN CLI_BIN ASSETS_DIR
#
# 1. `systemd-analyze verify` on the units (the template as kvsweep-worker@0) in a temp root
#    holding the distribution's units and placeholders at the ExecStart paths (systemd need not
#    run): any message fails, since verify exits 0 on unknown keys and bad values.
# 2. `systemd-analyze security --offline=yes`: exposure at most 2.0 (coordinator) and 2.5
#    (worker), and the hardening settings below are present.
# 3. KillSignal=SIGTERM, and the worker's TimeoutStopSec exceeds its --drain-timeout-ms by 30 s.
# 4. The ExecStart lines, run for real (fake evaluator): 3 jobs done, recorded by the worker's
#    certificate; SIGTERM stops both with exit 0.
# Prints "SKIP: ..." (ctest: skipped) when systemd-analyze is not installed.
set -euo pipefail

coordinator_bin=$1 worker_bin=$2 cli_bin=$3 assets=$4
# The binaries run with the units' settings alone, not the calling shell's KVSWEEP_* variables.
unset KVSWEEP_DB KVSWEEP_LISTEN KVSWEEP_TLS_CERT KVSWEEP_TLS_KEY KVSWEEP_TLS_CLIENT_CA \
  KVSWEEP_TOKEN_FILE KVSWEEP_WORKER_TOKEN_FILE KVSWEEP_CLIENT_TOKEN_FILE KVSWEEP_READER_TOKEN_FILE \
  KVSWEEP_METRICS_LISTEN KVSWEEP_HEALTH_LISTEN KVSWEEP_COORDINATOR KVSWEEP_TLS KVSWEEP_TLS_CA \
  KVSWEEP_TLS_SERVER_NAME KVSWEEP_DEVICE KVSWEEP_SPOOL_DIR KVSWEEP_HTTP KVSWEEP_STAGE \
  KVSWEEP_FILE_CACHE_DIR KVSWEEP_CACHE_MAX_BYTES
src=$(cd "$(dirname "$0")/../.." && pwd)
units=$src/deploy/systemd

if ! command -v systemd-analyze >/dev/null; then
  echo "SKIP: systemd-analyze not found (Debian: apt-get install systemd)"
  exit 0
fi
fail() { echo "FAIL: $*" >&2; exit 1; }

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT

# The unit's ExecStart= with continuation lines joined.
exec_start() { sed -e ':a' -e '/\\$/{N;s/\\\n//;ba}' "$1" | sed -n 's/^ExecStart=//p'; }
value() { sed -n "s/^$2=//p" "$1" | tail -1; }

# 1. verify
root=$tmp/root
unitdir=
for d in /lib/systemd/system /usr/lib/systemd/system; do
  [ -f "$d/sysinit.target" ] && { unitdir=$d; break; }
done
[ -n "$unitdir" ] || fail "no systemd unit directory with sysinit.target"
mkdir -p "$root/usr/lib/systemd" "$root/etc/systemd/system"
cp -r "$unitdir" "$root/usr/lib/systemd/system"
cp "$units/kvsweep-coordinator.service" "$units/kvsweep-worker@.service" "$root/etc/systemd/system/"
for u in "$units/kvsweep-coordinator.service" "$units/kvsweep-worker@.service"; do
  read -r exe _ <<< "$(exec_start "$u")"
  case "$exe" in /usr/local/bin/kvsweep-coordinator|/usr/local/bin/kvsweep-worker) ;;
    *) fail "$(basename "$u"): ExecStart runs '$exe', not /usr/local/bin/kvsweep-*" ;;
  esac
  mkdir -p "$root$(dirname "$exe")"
  printf '#!/bin/sh\n' > "$root$exe"
  chmod +x "$root$exe"
done
out=$(systemd-analyze verify --root="$root" kvsweep-coordinator.service kvsweep-worker@0.service 2>&1) ||
  fail "systemd-analyze verify failed: $out"
[ -z "$out" ] || fail "systemd-analyze verify complained: $out"
echo "ok: systemd-analyze verify"

# 2. hardening
for spec in kvsweep-coordinator.service:20 kvsweep-worker@0.service:25; do
  unit=${spec%:*}
  out=$(systemd-analyze security --offline=yes --root="$root" --threshold="${spec#*:}" "$unit" 2>&1) ||
    fail "$unit: exposure above ${spec#*:}/10: $(grep Overall <<< "$out")"
  echo "ok: $(grep -o 'Overall exposure level.*' <<< "$out")"
done
for u in "$units/kvsweep-coordinator.service" "$units/kvsweep-worker@.service"; do
  for setting in DynamicUser=yes ProtectSystem=strict ProtectHome=yes PrivateTmp=yes \
                 NoNewPrivileges=yes "SystemCallFilter=@system-service" CapabilityBoundingSet= \
                 "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6" RestrictNamespaces=yes \
                 LockPersonality=yes ProtectKernelTunables=yes ProtectControlGroups=yes; do
    grep -q "^$setting" "$u" || fail "$(basename "$u"): no $setting"
  done
  grep -q '^StateDirectory=' "$u" || fail "$(basename "$u"): no StateDirectory"
done
grep -q '^PrivateDevices=yes' "$units/kvsweep-coordinator.service" || fail "coordinator: no PrivateDevices"
grep -q '^MemoryDenyWriteExecute=yes' "$units/kvsweep-coordinator.service" ||
  fail "coordinator: no MemoryDenyWriteExecute"

# 3. stopping
for u in "$units/kvsweep-coordinator.service" "$units/kvsweep-worker@.service"; do
  [ "$(value "$u" KillSignal)" = SIGTERM ] || fail "$(basename "$u"): KillSignal is not SIGTERM"
done
stop_s=$(value "$units/kvsweep-worker@.service" TimeoutStopSec)
stop_s=${stop_s%s}
drain_ms=$(exec_start "$units/kvsweep-worker@.service" | grep -o -- '--drain-timeout-ms [0-9]*' | grep -o '[0-9]*$')
[[ "$stop_s" =~ ^[0-9]+$ && -n "$drain_ms" ]] || fail "worker: TimeoutStopSec or --drain-timeout-ms missing"
(( stop_s * 1000 >= drain_ms + 30000 )) ||
  fail "worker: TimeoutStopSec=${stop_s}s does not leave 30 s after --drain-timeout-ms $drain_ms"
echo "ok: KillSignal=SIGTERM; worker TimeoutStopSec=${stop_s}s, drain ${drain_ms} ms"

# 4. the command lines, for real
command -v openssl >/dev/null || fail "openssl not found (deploy/setup-debian.sh installs it)"
creds=$tmp/credentials
bash "$src/deploy/tls/make-certs.sh" "$creds" --coordinator-name coordinator.test > "$tmp/make-certs.log"
for t in admin worker client; do
  printf '%s-token-%s\n' "$t" "$RANDOM$RANDOM" > "$creds/$t.token"
done
mkdir -p "$tmp/etc" "$tmp/state"
cat > "$tmp/etc/coordinator.toml" <<EOT
listen = "127.0.0.1:0"
port-file = "$tmp/port"
allow-path = ["$assets"]
EOT
# Runs unit $1's ExecStart as the unit would, its paths moved into $tmp: %d a directory made
# from the unit's LoadCredential=ID:/etc/kvsweep/credentials/FILE lines (FILE from make-certs.sh
# or a token above), %i instance 0, /etc/kvsweep the config, /var/lib the state directory.
run_unit() {
  local line id path d=$tmp/run-credentials-$1
  mkdir -p "$d"
  while IFS=: read -r id path; do
    [[ "$path" == /etc/kvsweep/credentials/* ]] || fail "$1: credential $id from $path, not /etc/kvsweep/credentials"
    cp "$creds/${path#/etc/kvsweep/credentials/}" "$d/$id" || fail "$1: no $path"
  done < <(sed -n 's/^LoadCredential=//p' "$units/$1")
  line=$(exec_start "$units/$1")
  line=${line//%d/$d}
  line=${line//%i/0}
  line=${line//%H/$(hostname)}
  line=${line//\/etc\/kvsweep/$tmp/etc}
  line=${line//\/var\/lib/$tmp/state}
  read -ra argv <<< "$line"
  argv[0]=$2
  mkdir -p "$tmp/state/kvsweep" "$tmp/state/kvsweep-worker"
  "${argv[@]}" > "$tmp/$1.log" 2>&1 &
  pids+=($!)
}
run_unit kvsweep-coordinator.service "$coordinator_bin"
coordinator_pid=${pids[-1]}
for _ in $(seq 300); do
  [ -s "$tmp/port" ] && break
  kill -0 "$coordinator_pid" 2>/dev/null || { cat "$tmp/kvsweep-coordinator.service.log"; fail "the coordinator's ExecStart exited"; }
  sleep 0.1
done
[ -s "$tmp/port" ] || fail "the coordinator did not serve within 30 s"
port=$(cat "$tmp/port")
cat > "$tmp/etc/worker.toml" <<EOT
coordinator = "127.0.0.1:$port"
tls = true
tls-server-name = "coordinator.test"
evaluator = "fake"
fake-sleep-ms = 50
EOT
cli=("$cli_bin" --coordinator "127.0.0.1:$port" --tls --tls-ca "$creds/ca.crt" --tls-cert "$creds/client.crt"
     --tls-key "$creds/client.key" --tls-server-name coordinator.test --token-file "$creds/client.token")
cat > "$tmp/sweep.yaml" <<EOT
name: units
models:
  - {name: ref-llama, path: $assets/models/ref-llama}
tasks:
  - {name: l1, task: lambada_openai, data: $assets/data/lambada_openai/lambada_test.jsonl, limit: 1}
  - {name: l2, task: lambada_openai, data: $assets/data/lambada_openai/lambada_test.jsonl, limit: 2}
  - {name: l3, task: lambada_openai, data: $assets/data/lambada_openai/lambada_test.jsonl, limit: 3}
methods: [none]
EOT
"${cli[@]}" submit "$tmp/sweep.yaml" || fail "submit through the coordinator unit's TLS and tokens"
run_unit kvsweep-worker@.service "$worker_bin"
worker_pid=${pids[-1]}
timeout 120 "${cli[@]}" watch units --interval-ms 100 > "$tmp/watch.out" 2>&1 ||
  { cat "$tmp/watch.out" "$tmp"/*.log; fail "the sweep did not finish"; }
n=$("${cli[@]}" query --format csv \
      "SELECT count(*) FROM results WHERE worker_id = '$(hostname)-gpu0' AND recorded_by LIKE 'worker cn=kvsweep-worker %'" | tail -1)
[ "$n" = 3 ] || { cat "$tmp"/*.log; fail "expected 3 results from worker $(hostname)-gpu0, got '$n'"; }
echo "ok: the units' ExecStart lines ran a 3-job sweep over mutual TLS"
for p in "$worker_pid" "$coordinator_pid"; do
  kill -TERM "$p"
  rc=0
  wait "$p" || rc=$?
  [ "$rc" = 0 ] || { cat "$tmp"/*.log; fail "SIGTERM: exit $rc"; }
done
echo "ok: SIGTERM stops the worker and the coordinator with exit 0"
echo "PASS"
