#!/usr/bin/env bash
# Runs the property tests of the wire parsers and the datapath's frame
# handlers (every test named prop_*) with many more cases than CI does, one
# property at a time, and prints how many cases ran clean for each.
#
#   scripts/fuzz-wire.sh                 1,000,000 cases per property
#   scripts/fuzz-wire.sh --cases N       N cases per property
#   scripts/fuzz-wire.sh --ignored       the ignored ones too (known bugs)
#   scripts/fuzz-wire.sh --filter TEXT   only properties whose name has TEXT
#
# A failing property prints proptest's minimal failing input; the script
# goes on with the others and exits 1 at the end.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }

cases=1000000
ignored=()
filter=""
while [ $# -gt 0 ]; do
    case "$1" in
        --cases) [ $# -ge 2 ] || die "--cases needs a number"; cases=$2; shift 2 ;;
        --ignored) ignored=(--include-ignored); shift ;;
        --filter) [ $# -ge 2 ] || die "--filter needs text"; filter=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
[[ "$cases" =~ ^[1-9][0-9]*$ ]] || die "--cases wants a positive whole number, not $cases"

command -v cargo >/dev/null || export PATH="$HOME/.cargo/bin:$PATH"
cd "$REPO"
say "building the tests (cargo test --release -p vswitch --lib --no-run)"
cargo test --release -p vswitch --lib --no-run --quiet

# prop_* tests, from `--list` (every test) or `--list --ignored` (the
# ignored ones only).
list_props() {
    cargo test --release -p vswitch --lib --quiet -- --list "$@" 2>/dev/null |
        sed -n 's/^\(.*::prop_[a-z0-9_]*\): test$/\1/p' | grep -F -- "$filter" | sort || true
}
if [ "${#ignored[@]}" -gt 0 ]; then
    mapfile -t props < <(list_props)
else
    mapfile -t props < <(comm -23 <(list_props) <(list_props --ignored))
fi
[ "${#props[@]}" -gt 0 ] || die "no property tests found${filter:+ matching $filter}"

say "${#props[@]} properties, $cases cases each"
failed=0
total_start=$SECONDS
for p in "${props[@]}"; do
    start=$SECONDS
    if out=$(PROPTEST_CASES=$cases cargo test --release -p vswitch --lib --quiet -- \
        --exact "$p" "${ignored[@]}" 2>&1) && grep -q "test result: ok. 1 passed" <<<"$out"; then
        printf '%-72s %10s cases clean  %5ss\n' "$p" "$cases" "$((SECONDS - start))"
    else
        failed=1
        printf '%-72s %10s  %5ss\n' "$p" "FAILED" "$((SECONDS - start))"
        # proptest prints the input one field a line: join it up.
        printf '%s\n' "$out" | sed -n '/Test failed\|minimal failing input/,/successes:/p' |
            tr -s ' \n' ' ' | fold -w 160
        echo
    fi
done
say "done in $((SECONDS - total_start))s"
exit "$failed"
