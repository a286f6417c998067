#!/usr/bin/env bash
# Instructions per operation of the core's per-request paths (benchmarks/core_micro.py),
# counted by valgrind's callgrind: deterministic, unaffected by the machine's load.
#   benchmarks/core_micro.sh [ping handshake connect driver-ping driver-fanout]  (~3 min)
# Each mode runs twice, with N1 and N2 operations after the same warm-up; the difference
# of the two instruction counts over N2 - N1 is the cost of one operation alone.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
py=${PYTHON:-$here/../.venv/bin/python}
out=$here/.build/callgrind
mkdir -p "$out"
n1=${N1:-200}
n2=${N2:-1200}
modes=("$@")
[ ${#modes[@]} -eq 0 ] && modes=(ping handshake connect driver-ping driver-fanout)
ir() {
  valgrind --tool=callgrind --callgrind-out-file="$out/$1-$2.out" "$py" \
    "$here/core_micro.py" --mode "$1" --count "$2" --warmup "$3" 2>&1 |
    sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
for mode in "${modes[@]}"; do
  if [ "$mode" = driver-fanout ]; then  # 2,000 deliveries an operation: fewer of them
    m1=$((n1 / 10)) m2=$((n2 / 10)) w=20
  else
    m1=$n1 m2=$n2 w=200
  fi
  a=$(ir "$mode" "$m1" "$w")
  b=$(ir "$mode" "$m2" "$w")
  echo "$mode: $(( (b - a) / (m2 - m1) )) instructions per operation ($m1 -> $m2 operations)"
done
