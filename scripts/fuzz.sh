#!/usr/bin/env bash
# Fuzz every cargo-fuzz target in fuzz/ for a bounded time, one after another.
#
#   scripts/fuzz.sh [seconds-per-target] [target...]      (default: 60 s, every target)
#
# Prints executions per target and exits non-zero if any target crashed (the reproducer
# is in fuzz/artifacts/<target>/). New interesting inputs are added to fuzz/corpus/<target>;
# minimise before committing (see fuzz/README.md). Environment:
#   FUZZ_SANITIZER  address (default) or none
#   FUZZ_CMIN=1     minimise each corpus (`cargo fuzz cmin`) after its run
# Only a stable toolchain is needed: RUSTC_BOOTSTRAP=1 lets it accept cargo-fuzz's
# nightly-only flags (-Zsanitizer, sancov passes).
set -euo pipefail

secs=${1:-60}
shift || true
case $secs in
'' | *[!0-9]*)
    echo "usage: $0 [seconds-per-target] [target...]" >&2
    exit 2
    ;;
esac
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/fuzz"
export RUSTC_BOOTSTRAP=1
sanitizer=${FUZZ_SANITIZER:-address}

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

if [ $# -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list)
fi

echo "building ${#targets[@]} targets (sanitizer: $sanitizer)" >&2
cargo fuzz build -s "$sanitizer"

logs=target/fuzz-logs
mkdir -p "$logs"
failed=()
rows=()
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    log="$logs/$t.log"
    echo "fuzzing $t for ${secs}s (log: fuzz/$log)" >&2
    # Glob inputs are compiled to regexes three times each; beyond 1 KiB a pattern is no
    # longer a plausible rule and only slows the search down.
    case $t in
    glob) extra=(-max_len=1024) ;;
    *) extra=() ;;
    esac
    start=$(date +%s)
    set +e
    cargo fuzz run -s "$sanitizer" "$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -print_final_stats=1 "${extra[@]}" >"$log" 2>&1
    rc=$?
    set -e
    elapsed=$(($(date +%s) - start))
    # Time spent fuzzing, as libFuzzer counts it (the wall time above also includes
    # loading the corpus and the exit-time leak check).
    fuzzed=$(sed -nE 's/^Done [0-9]+ runs in ([0-9]+) second.*/\1/p' "$log" | tail -1)
    # libFuzzer's final statistics.
    execs=$(awk '/stat::number_of_executed_units:/ {s = $2} END {print s + 0}' "$log")
    if [ "$execs" -eq 0 ]; then
        # No final stats (e.g. a crash): the last "#N" status line has the count.
        execs=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#' || true)
        execs=${execs:-0}
    fi
    rate=$(awk '/stat::average_exec_per_sec:/ {s = $2} END {print s + 0}' "$log")
    cov=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | awk '{print $2}' || true)
    corpus=$(find "corpus/$t" -type f | wc -l)
    if [ "$rc" -ne 0 ]; then
        failed+=("$t")
        status=CRASH
        grep -E 'Test unit written to|panicked at|ERROR: libFuzzer|SUMMARY' "$log" | head -5 >&2 || true
    else
        status=ok
    fi
    rows+=("$(printf '%-10s %7s %7s %12s %8s %6s %7s  %s' "$t" "${fuzzed:-?}s" "${elapsed}s" "$execs" "$rate" "${cov:-?}" "$corpus" "$status")")
    if [ "${FUZZ_CMIN:-0}" = 1 ] && [ "$rc" -eq 0 ]; then
        cargo fuzz cmin -s "$sanitizer" "$t" "corpus/$t" >"$logs/$t.cmin.log" 2>&1
    fi
done

printf '\n%-10s %7s %7s %12s %8s %6s %7s  %s\n' target fuzzed wall executions exec/s cov corpus result
printf '%s\n' "${rows[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "crashed: ${failed[*]} (reproducers in fuzz/artifacts/)" >&2
    exit 1
fi
