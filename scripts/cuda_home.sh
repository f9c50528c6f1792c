#!/usr/bin/env sh
# Print the CUDA toolkit directory that `nvcc` belongs to (nvcc may be a wrapper script elsewhere
# on PATH, so ask nvcc itself); print nothing if there is no nvcc.
command -v nvcc >/dev/null 2>&1 || exit 0
here=$(nvcc --dryrun -c -x cu /dev/null 2>&1 | sed -n 's/^#\$ _HERE_=//p' | head -n 1)
[ -n "$here" ] && cd "$here/.." && pwd
