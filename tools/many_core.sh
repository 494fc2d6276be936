#!/usr/bin/env bash
# The hit path at many-core scale (issue #14), in one run on a lent many-core machine: the issue's
# table (26 tables of 100k, 1M and 500k rows, dim 64, pooling 20, batch 2048, 1/2/8/16 threads,
# all-hit and 90% mixed, the multi-table call, the TorchRec front's packed call and per-table calls
# against the in-DRAM kernel), then Zipf ids at 100k rows, then 2 MiB against 4 KiB pages at 1M rows
# (bench_hugepages: root and unshare(1), skipped with its reason otherwise).
#
# The steps run in that order, most wanted first, inside one time budget (seconds, default 540, so
# that a 600-second device call has room to start): a step is given what is left of it and cut
# there (bench_pool prints each table size's lines as soon as they are measured), and a step with
# under 30 seconds left is skipped. Each step's output goes to stdout and, when $OUT is set (the
# device tool's folder that comes back), to $OUT/STEP.txt.
#
#   on the device, from the repo root:  source .devpack/build.sh && bash tools/many_core.sh [SECONDS]
#   a smoke run here (small tables):    PYTHON=.venv/bin/python bash tools/many_core.sh --smoke
set -u
smoke=0
if [ "${1:-}" = "--smoke" ]; then
    smoke=1
    shift
fi
budget=${1:-540}
py=${PYTHON:-python3}
start=$(date +%s)
if [ "$smoke" = 1 ]; then
    small=20000 large=40000 mid=30000 threads=1,2
else
    small=100000 large=1000000 mid=500000 threads=1,2,8,16
fi

step() {
    local name=$1
    shift
    local left=$((budget - ($(date +%s) - start)))
    if [ "$left" -lt 30 ]; then
        echo "== $name: skipped, $left s of the budget left"
        return
    fi
    echo "== $name ($left s of the budget left): $*"
    if [ -n "${OUT:-}" ]; then
        timeout -k 5 "$left" "$@" 2>&1 | tee "$OUT/$name.txt"
    else
        timeout -k 5 "$left" "$@" 2>&1
    fi
    local rc=${PIPESTATUS[0]}
    [ "$rc" = 124 ] && echo "== $name: cut at the end of the budget"
    [ "$rc" != 0 ] && [ "$rc" != 124 ] && echo "== $name: exit status $rc"
    return 0
}

step machine sh -c "nproc; lscpu | grep -E 'Model name|Socket|NUMA node\(s\)|L2|L3'; \
    grep -ow -e avx2 -e avx512f -e f16c /proc/cpuinfo | sort -u | tr '\n' ' '; echo; \
    $py -c 'import sys, torch; print(sys.version.split()[0], \"torch\", torch.__version__)'; \
    findmnt -no OPTIONS /dev/shm | head -1"
step uniform-small "$py" tools/bench_pool.py --lookups-only --rows "$small" --threads "$threads"
step uniform-large "$py" tools/bench_pool.py --lookups-only --rows "$large" --threads "$threads"
step uniform-mid "$py" tools/bench_pool.py --lookups-only --rows "$mid" --threads "$threads"
step zipf-small "$py" tools/bench_pool.py --lookups-only --zipf 1.0 --rows "$small" --threads "$threads"
step hugepages-large "$py" tools/bench_hugepages.py --tables 26 --rows "$large" --miss 0.1 --threads "$threads"
echo "== done in $(($(date +%s) - start)) s"
