#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for SECONDS_PER_TARGET seconds (default 180).
#
#   scripts/fuzz.sh          # 180 s per target
#   scripts/fuzz.sh 30       # a quick pass
#   FUZZ_TARGETS="link opener" scripts/fuzz.sh 600
#
# Uses the nightly toolchain when rustup has one; otherwise stable with
# RUSTC_BOOTSTRAP=1 (cargo-fuzz needs nightly-only sanitizer flags). Installs
# cargo-fuzz from crates.io if it is missing. Crashes land in
# fuzz/artifacts/TARGET/; the corpus grows in fuzz/corpus/TARGET/.
set -euo pipefail

seconds="${1:-180}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
    echo "usage: $0 [SECONDS_PER_TARGET]   (a positive whole number; default 180)" >&2
    exit 2
fi

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root/fuzz"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz not found; installing it from crates.io" >&2
    cargo install cargo-fuzz --locked
fi

fuzz=(cargo fuzz)
if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
    fuzz=(cargo +nightly fuzz)
else
    echo "no nightly toolchain; using stable with RUSTC_BOOTSTRAP=1" >&2
    export RUSTC_BOOTSTRAP=1
fi

targets="${FUZZ_TARGETS:-$("${fuzz[@]}" list)}"

# A valid link gives the link target a head start.
mkdir -p corpus/link
if [ -z "$(ls -A corpus/link)" ]; then
    printf 'postern://server?v=1&tcp=chat.example.org:7443&tcp=[::1]:7443&key=AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE' > corpus/link/seed
fi

# A signed note (the C2SP example) and a witness request for the
# transparency-log targets.
mkdir -p corpus/note corpus/checkpoint
if [ -z "$(ls -A corpus/note)" ]; then
    printf 'This is an example message.\n\n\xe2\x80\x94 example.com/foo Uw2QOkn8srV1yJGh2VYRlL1Tnagv1YEq6TfXppzi2ONncAlTgK7Ztg1ERYNZXsYjOBH3mFXmRKuwHjG1Yu72IneyaQM=\n' > corpus/note/seed
fi
if [ -z "$(ls -A corpus/checkpoint)" ]; then
    printf 'old 0\n\nexample.org/log\n1\nbjQLnP+zepicpUTmu3gKLHiQHT+zNzh2hRGjBhevoB0=\n\n\xe2\x80\x94 example.org/log AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n' > corpus/checkpoint/seed
fi

"${fuzz[@]}" build

failed=()
for target in $targets; do
    echo "=== $target: ${seconds}s" >&2
    mkdir -p "corpus/$target"
    if ! "${fuzz[@]}" run "$target" "corpus/$target" -- -max_total_time="$seconds" -print_final_stats=1; then
        failed+=("$target")
    fi
done

if [ "${#failed[@]}" -gt 0 ]; then
    echo "FAILED: ${failed[*]} (see fuzz/artifacts/)" >&2
    exit 1
fi
echo "all fuzz targets ran ${seconds}s without a crash:" $targets >&2
