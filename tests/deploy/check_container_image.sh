#!/usr/bin/env bash
# The CPU container image and the compose file, for real, with podman:
#
#   check_container_image.sh SOURCE_DIR ASSETS_DIR
#
# 1. A Debian 12 base image made offline by mmdebstrap from the Debian mirror apt uses, imported
#    as localhost/debian:12 (kept: later runs reuse it).
# 2. deploy/docker/Dockerfile built from SOURCE_DIR with --build-arg BASE=localhost/debian:12
#    (podman's layer cache and the build's cache mount make a rebuild after a small change short).
# 3. The image: user 65532, no -dev package and no compiler, and the three binaries' --version
#    (the worker with the engine built in).
# 4. deploy/docker/compose.yaml under podman-compose: a coordinator and 2 workers (replicas)
#    with make-certs.sh's certificates and role tokens as secrets, the assets read-only at
#    /models; kvsweep-healthcheck reports the coordinator healthy; the kvsweep CLI, in a
#    container, submits a 6-job sweep on the smallest real model (stories260K) through the
#    published port and watches it finish over the compose network; every job has exactly one
#    result, recorded by a worker's certificate, with real perplexities (2-bit KV differs from
#    none); `kvsweep table` prints them; SIGTERM stops every container with exit 0; the
#    database volume, read by sqlite3 on the host, keeps every result across `down` and `up`.
#
# Needs root (rootful podman). Prints "SKIP: <why>" (ctest: skipped) when not root, when podman,
# podman-compose, mmdebstrap or runc is missing (with CI=true that is a failure instead:
# deploy/setup-debian.sh installs them), or when podman cannot start a container on this host
# (the reason podman gives). KVSWEEP_CONTAINER_TEST_KEEP=1 keeps the temp dir.
set -uo pipefail

if [ $# -ne 2 ]; then
  echo "usage: $0 SOURCE_DIR ASSETS_DIR" >&2
  exit 2
fi
src=$(realpath "$1")
assets=$(realpath "$2")
export PATH="$PATH:/usr/sbin:/sbin"
# The containers get their settings from the compose file alone.
unset KVSWEEP_COORDINATOR KVSWEEP_TOKEN_FILE KVSWEEP_TLS KVSWEEP_TLS_CA KVSWEEP_TLS_CERT \
  KVSWEEP_TLS_KEY KVSWEEP_TLS_SERVER_NAME KVSWEEP_IMAGE KVSWEEP_MODELS KVSWEEP_SECRETS \
  KVSWEEP_WORKERS KVSWEEP_THREADS KVSWEEP_PORT

. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root "for rootful podman and mmdebstrap"
require_tools "deploy/setup-debian.sh installs them" \
  podman podman-compose mmdebstrap runc sqlite3 openssl
model=$assets/models/stories260K
[ -f "$model/stories260K.bin" ] && [ -f "$model/tok512.bin" ] ||
  { echo "FAIL: no models/stories260K/{stories260K.bin,tok512.bin} in $assets"; exit 1; }

tmp=$(mktemp -d /tmp/kvsweep-container-test.XXXXXX)
project=kvsweep-ctest-$$
image=localhost/kvsweep:ctest
base=localhost/debian:12
compose=(podman-compose -p "$project" -f "$src/deploy/docker/compose.yaml")

log_tails() {
  for f in "$tmp"/*.log; do
    [ -f "$f" ] || continue
    echo "----- $f (last 40 lines)"
    tail -n 40 "$f"
  done
  for c in $(podman ps -a --filter "label=com.docker.compose.project=$project" --format '{{.Names}}' 2>/dev/null); do
    echo "----- podman logs $c (last 30 lines)"
    podman logs --tail 30 "$c" 2>&1
  done
}
fail() {
  echo "FAIL: $*"
  log_tails
  exit 1
}
# The containers' anonymous volumes (the image's VOLUMEs), which `down -v` leaves behind:
# noted before each `down`, removed at the end.
note_volumes() {
  podman ps -aq --filter "label=com.docker.compose.project=$project" |
    xargs -r podman inspect --format '{{range .Mounts}}{{.Name}} {{end}}' >> "$tmp/volumes" 2>/dev/null
}
cleanup() {
  trap - EXIT INT TERM
  note_volumes
  "${compose[@]}" down -v -t 5 > /dev/null 2>&1
  for v in $(cat "$tmp/volumes" 2>/dev/null); do podman volume rm -f "$v" > /dev/null 2>&1; done
  podman volume rm -f "${project}_db" > /dev/null 2>&1
  podman network rm -f "${project}_default" > /dev/null 2>&1
  if [ "${KVSWEEP_CONTAINER_TEST_KEEP:-}" = 1 ]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# podman settings for this test alone (CONTAINERS_CONF): runc where the host mounts cgroups in
# hybrid mode (crun refuses them), and ulimits this host lets a container set: podman's default
# (1048576) needs CAP_SYS_RESOURCE, and a sandboxed kernel may refuse an RLIMIT_NPROC above
# kernel.pid_max.
nofile=$(ulimit -Hn)
nproc=$(ulimit -Hu)
pid_max=$(cat /proc/sys/kernel/pid_max)
[ "$nproc" = unlimited ] || [ "$nproc" -gt "$pid_max" ] && nproc=$pid_max
[ "$nofile" = unlimited ] && nofile=1048576
{
  echo "[containers]"
  echo "default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=$nproc:$nproc\"]"
  if [ "$(stat -fc %T /sys/fs/cgroup)" != cgroup2fs ] && [ -d /sys/fs/cgroup/unified ]; then
    echo "[engine]"
    echo "runtime = \"runc\""
  fi
} > "$tmp/containers.conf"
export CONTAINERS_CONF=$tmp/containers.conf

# 1. The base image, made offline from the Debian mirror (no registry needed).
if podman image exists "$base"; then
  echo "ok: base image $base present (reused)"
else
  t0=$(date +%s)
  mmdebstrap --variant=minbase --format=tar bookworm - \
      "deb http://deb.debian.org/debian bookworm main" \
      "deb http://deb.debian.org/debian bookworm-updates main" \
      "deb http://deb.debian.org/debian-security bookworm-security main" 2> "$tmp/mmdebstrap.log" |
    podman import --change 'CMD ["/bin/bash"]' - "$base" > "$tmp/import.log" 2>&1 ||
    fail "mmdebstrap | podman import $base"
  echo "ok: base image $base made by mmdebstrap in $(( $(date +%s) - t0 )) s"
fi
if ! out=$(podman run --rm "$base" true 2>&1); then
  skip "podman cannot start a container on this host: $out"
fi

# 2. The image.
t0=$(date +%s)
podman build -f "$src/deploy/docker/Dockerfile" --build-arg BASE="$base" -t "$image" "$src" \
  > "$tmp/build.log" 2>&1 || fail "podman build deploy/docker/Dockerfile"
echo "ok: image built in $(( $(date +%s) - t0 )) s"

# 3. What the image holds.
user=$(podman image inspect --format '{{.Config.User}}' "$image")
[ "$user" = 65532:65532 ] || fail "the image runs as '$user', not 65532:65532"
dev=$(podman run --rm "$image" sh -c 'dpkg-query -W -f "\${Package}\n" | grep -E -- "-dev(:|$)|^(gcc|g\+\+|cpp|cmake)(-[0-9]+)?$"')
[ -z "$dev" ] || fail "the runtime image holds build packages: $(echo $dev)"
version=$(sed -n 's/^project(kvsweep VERSION \([0-9.]*\).*/\1/p' "$src/CMakeLists.txt")
for b in kvsweep kvsweep-coordinator kvsweep-worker; do
  out=$(podman run --rm "$image" "$b" --version 2>&1) || fail "$b --version: $out"
  [[ "$out" == "$b $version"* ]] || fail "$b --version printed '$out', not '$b $version'"
  echo "ok: $out"
done
[[ "$out" == *"(engine: yes)"* ]] || fail "the worker has no engine: '$out'"

# 4. The compose file: certificates and tokens as secrets, readable by the image's user.
secrets=$tmp/secrets
bash "$src/deploy/tls/make-certs.sh" "$secrets" --coordinator-name coordinator \
  --coordinator-name localhost > "$tmp/make-certs.log" 2>&1 || fail "make-certs.sh"
for t in admin worker client; do
  (umask 077; head -c 32 /dev/urandom | base64 > "$secrets/$t.token")
done
chown -R 65532:65532 "$secrets"
mkdir -p "$tmp/sweep"
cat > "$tmp/sweep/sweep.yaml" <<EOT
name: containers
models:
  - name: stories260K
    path: /models/models/stories260K/stories260K.bin
    tokenizer: /models/models/stories260K/tok512.bin
tasks:
  - {name: lambada, task: lambada_openai, data: /models/data/lambada_openai/lambada_test.jsonl, limit: 6}
  - {name: wiki, task: wikitext, data: /models/data/wikitext-2/wiki.test.raw, limit: 2}
methods: [none, "quant:bits=4", "quant:bits=2"]
EOT
chmod -R a+rX "$tmp/sweep"
export KVSWEEP_IMAGE=$image KVSWEEP_MODELS=$assets KVSWEEP_SECRETS=$secrets KVSWEEP_WORKERS=2 \
  KVSWEEP_THREADS=1 KVSWEEP_PORT=127.0.0.1:
"${compose[@]}" up -d > "$tmp/compose-up.log" 2>&1 || fail "podman-compose up"
coordinator=${project}_coordinator_1
[ "$(podman inspect --format '{{.State.Running}}' "$coordinator" 2>&1)" = true ] ||
  fail "the coordinator container is not running"
workers=$(podman ps --filter "label=com.docker.compose.project=$project" \
  --filter "label=com.docker.compose.service=worker" --format '{{.Names}}' | wc -l)
[ "$workers" = 2 ] || fail "$workers worker containers running, not 2 (deploy.replicas)"
healthy=""
for _ in $(seq 60); do
  if podman healthcheck run "$coordinator" > /dev/null 2>&1; then healthy=1; break; fi
  sleep 1
done
[ -n "$healthy" ] || fail "the coordinator's healthcheck (kvsweep-healthcheck) never passed"
echo "ok: coordinator healthy (kvsweep-healthcheck on --health-listen), 2 workers running"

# The CLI from the image, as a user would run it: through the published port (host network),
# and over the compose network by the service name.
port=$(podman port "$coordinator" 50551/tcp | sed -n 's/.*:\([0-9]*\)$/\1/p' | head -1)
[ -n "$port" ] || fail "no published port for the coordinator's 50551"
cli() {  # [CLI_TIMEOUT=SECONDS] cli NETWORK ADDRESS ARGS...
  local net=$1 addr=$2
  shift 2
  ${CLI_TIMEOUT:+timeout "$CLI_TIMEOUT"} podman run --rm --network "$net" \
    -v "$secrets/ca.crt:/run/secrets/ca.crt:ro" -v "$secrets/client.crt:/run/secrets/client.crt:ro" \
    -v "$secrets/client.key:/run/secrets/client.key:ro" \
    -v "$secrets/client.token:/run/secrets/client.token:ro" -v "$tmp/sweep:/sweep:ro" \
    "$image" kvsweep --coordinator "$addr" --tls --tls-server-name coordinator \
    --tls-ca /run/secrets/ca.crt --tls-cert /run/secrets/client.crt \
    --tls-key /run/secrets/client.key --token-file /run/secrets/client.token "$@"
}
cli host "127.0.0.1:$port" submit /sweep/sweep.yaml > "$tmp/submit.log" 2>&1 ||
  fail "kvsweep submit through the published port 127.0.0.1:$port"
t0=$(date +%s)
CLI_TIMEOUT=900 cli "${project}_default" coordinator:50551 watch containers --interval-ms 1000 \
  > "$tmp/watch.log" 2>&1 || fail "the sweep did not finish (kvsweep watch)"
echo "ok: 6-job sweep on stories260K finished in $(( $(date +%s) - t0 )) s on 2 containerized workers"

query() { cli "${project}_default" coordinator:50551 query --format csv "$1" | tail -n +2; }
counts=$(query "SELECT (SELECT count(*) FROM jobs), (SELECT count(*) FROM jobs WHERE state = 'done'),
  (SELECT count(*) FROM results), (SELECT count(DISTINCT job_id) FROM results),
  (SELECT count(*) FROM results WHERE recorded_by LIKE 'worker cn=kvsweep-worker %')") ||
  fail "kvsweep query"
[ "$counts" = "6,6,6,6,6" ] ||
  fail "jobs, done, results, distinct jobs with a result, results by a worker's certificate: '$counts', not 6,6,6,6,6"
ppl=$(query "SELECT method_label, ppl FROM sweep_results WHERE sweep = 'containers' AND task = 'lambada_openai' ORDER BY method_label")
python3 - "$ppl" <<'EOF' || fail "lambada perplexities: $ppl"
import math, sys
rows = dict(line.split(",") for line in sys.argv[1].split())
ppl = {m: float(v) for m, v in rows.items()}
assert set(ppl) == {"none", "quant:bits=4", "quant:bits=2"}, ppl
assert all(math.isfinite(v) and v > 1 for v in ppl.values()), ppl
assert ppl["quant:bits=2"] != ppl["none"], ppl
EOF
cli "${project}_default" coordinator:50551 table containers > "$tmp/table.log" 2>&1 ||
  fail "kvsweep table"
grep -q 'quant:bits=2' "$tmp/table.log" || fail "kvsweep table has no quant:bits=2 row"
echo "ok: one result per job, recorded by the workers' certificate; lambada ppl $(echo $ppl)"

# SIGTERM (podman stop) stops every container with exit 0, then the volume alone holds the data.
names=$(podman ps -a --filter "label=com.docker.compose.project=$project" --format '{{.Names}}')
"${compose[@]}" stop -t 120 > "$tmp/compose-stop.log" 2>&1 || fail "podman-compose stop"
for c in $names; do
  rc=$(podman inspect --format '{{.State.ExitCode}}' "$c")
  [ "$rc" = 0 ] || fail "$c exited $rc on SIGTERM"
done
echo "ok: SIGTERM stopped $(echo $names | wc -w) containers with exit 0"
note_volumes
"${compose[@]}" down > "$tmp/compose-down.log" 2>&1 || fail "podman-compose down"
db=$(podman volume inspect --format '{{.Mountpoint}}' "${project}_db")/sweeps.db
[ -f "$db" ] || fail "no sweeps.db in the db volume"
n=$(sqlite3 "file:$db?mode=ro" "SELECT count(*) FROM results") || fail "sqlite3 on $db"
[ "$n" = 6 ] || fail "the db volume holds $n results after down, not 6"
"${compose[@]}" up -d > "$tmp/compose-up2.log" 2>&1 || fail "podman-compose up (again)"
n=""
for _ in $(seq 30); do
  n=$(query "SELECT count(*) FROM results" 2>/dev/null) && [ "$n" = 6 ] && break
  sleep 1
done
[ "$n" = 6 ] || fail "after down and up the coordinator reports '$n' results, not 6"
echo "ok: the db volume keeps the 6 results across down and up (sqlite3, then the coordinator)"
echo "PASS"
