#!/usr/bin/env bash
# Prints the Debian packages that hold the shared libraries the given binaries load (ldd, with
# symlinks such as the BLAS alternative resolved), one per line, sorted: the runtime stage of
# deploy/docker/Dockerfile installs exactly these, so the image carries no -dev package and no
# list to keep in step with the build's. Fails on a library ldd cannot find or dpkg does not own.
#
#   runtime-packages.sh BIN...
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 BIN..." >&2; exit 2; }
for f in "$@"; do
  ldd "$f" >/dev/null 2>&1 || { echo "runtime-packages.sh: $f: not a dynamic executable" >&2; exit 1; }
done
libs=$(ldd "$@" | awk '/=> not found/ {print "MISSING " $1; next} /=> \// {print $3}' | sort -u)
if grep -q '^MISSING' <<< "$libs"; then
  echo "runtime-packages.sh: ldd cannot find: $(grep '^MISSING' <<< "$libs" | cut -d' ' -f2 | tr '\n' ' ')" >&2
  exit 1
fi
for lib in $libs; do
  real=$(readlink -f "$lib")
  # Merged /usr: dpkg may list the file under /lib or under /usr/lib.
  pkg=$(dpkg-query -S "$real" 2>/dev/null || dpkg-query -S "${real#/usr}" 2>/dev/null) ||
    { echo "runtime-packages.sh: no package owns $real ($lib)" >&2; exit 1; }
  # "libfoo1:amd64: /usr/lib/..." (or "pkg-a, pkg-b: path" when several own the path)
  echo "${pkg%%: *}" | tr ',' '\n' | sed 's/^ *//; s/:[a-z0-9]*$//'
done | sort -u
