#!/usr/bin/env bash
# What the hardening costs at sandbox start: the sandbox layer's own benchmark
# (tests/c/test_sandbox.c: 100 cycles of spawn + echo + kill + cleanup) built
# from this tree and from the last commit before hardening (1c39a98), run
# alternately so machine noise hits both alike. Prints the median of the runs'
# p50s for both and the difference. Hardening has no off switch (it is
# fail-closed in sandlot-init), so an older build is the only honest baseline.
#
#   bash bench/hardening_cost.sh [runs=8]     (root; needs the ./dev build deps)
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-8}
BASE=1c39a98
OLD=$(mktemp -d /tmp/sl-prehardening-XXXXXX)
trap 'git worktree remove --force "$OLD" >/dev/null 2>&1 || rm -rf "$OLD"' EXIT
git worktree add -q --detach "$OLD" "$BASE"
make -s -C tests/c -f Makefile.sandbox sandbox-bench >/dev/null
make -s -C "$OLD/tests/c" -f Makefile.sandbox sandbox-bench >/dev/null
run() { make -s -C "$1/tests/c" -f Makefile.sandbox sandbox-bench | grep '^bench:'; }
new_spawn=(); old_spawn=(); new_cycle=(); old_cycle=()
for i in $(seq "$RUNS"); do
    for side in old new; do
        dir=$PWD; [ "$side" = old ] && dir=$OLD
        line=$(run "$dir")
        cycle=$(sed -E 's/.*p50 ([0-9.]+) ms, p90.*/\1/' <<<"$line")
        spawn=$(sed -E 's/.*spawn alone p50 ([0-9.]+) ms.*/\1/' <<<"$line")
        if [ "$side" = old ]; then old_spawn+=("$spawn"); old_cycle+=("$cycle")
        else new_spawn+=("$spawn"); new_cycle+=("$cycle"); fi
    done
done
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
os=$(median "${old_spawn[@]}"); ns=$(median "${new_spawn[@]}")
oc=$(median "${old_cycle[@]}"); nc=$(median "${new_cycle[@]}")
echo "hardening cost, $RUNS alternating runs of 100 cycles, medians of p50s"
printf '  sl_sandbox_spawn         before %6.2f ms  after %6.2f ms  (%+.2f ms)\n' "$os" "$ns" "$(awk "BEGIN{print $ns - $os}")"
printf '  spawn+echo+kill+cleanup  before %6.2f ms  after %6.2f ms  (%+.2f ms)\n' "$oc" "$nc" "$(awk "BEGIN{print $nc - $oc}")"
