# Shared preconditions of the deployment tests (sourced by tests/deploy/*.sh and
# tests/slurm/run_slurm_test.sh): what a test needs but this machine may lack is a skip, printed
# as "SKIP: <why>" (ctest reads it as skipped), except that with CI=true a missing tool is a
# failure, since deploy/setup-debian.sh installs every one of them.

skip() { echo "SKIP: $*"; exit 0; }

# require_root WHAT: skip unless running as root; WHAT says what root is for.
require_root() {
  [ "$(id -u)" = 0 ] || skip "needs root $1 (uid $(id -u))"
}

# require_tools HINT TOOL...: every TOOL on PATH, or skip naming the missing ones and HINT (how
# to install them) — a failure instead with CI=true.
require_tools() {
  local hint="$1"
  shift
  local missing=() b
  for b in "$@"; do
    command -v "$b" >/dev/null 2>&1 || missing+=("$b")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "${CI:-}" = true ]; then
    echo "FAIL: ${missing[*]} not installed; deploy/setup-debian.sh installs them"
    exit 1
  fi
  skip "${missing[*]} not installed ($hint)"
}
