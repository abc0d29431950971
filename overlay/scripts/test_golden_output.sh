#!/usr/bin/env bash
# Runs a short greedy generation with ATOM (atom.examples.simple_inference: four
# fixed prompts, temperature 0) and compares its Prompt:/Completion: lines with the
# stored golden output, the same comparison CI makes.
#
# Usage:
#   scripts/test_golden_output.sh [-m MODEL_PATH] [-n NAME] [-g GOLDEN_FILE]
#                                 [-o OUTPUT_FILE] [-- EXTRA_ARGS...]
#
#   -m MODEL_PATH   model to load (default: meta-llama/Meta-Llama-3-8B-Instruct)
#   -n NAME         golden output name (default: the last part of MODEL_PATH);
#                   the file is .github/workflows/golden_outputs/NAME_golden_output.txt
#   -g GOLDEN_FILE  compare with this file instead
#   -o OUTPUT_FILE  keep the generated output here (default: a temporary file)
#   EXTRA_ARGS      passed to simple_inference, e.g. -- --kv_cache_dtype fp8
#   -h              show this help
#
# Exit codes:
#   0  the output matches the golden output (whitespace and blank lines aside)
#   1  the output differs; a unified diff (golden -> generated) is printed
#   2  usage error
#   3  no golden output file for this model
#   4  the generation failed or printed no Prompt:/Completion: lines
set -euo pipefail

readonly EXIT_MATCH=0 EXIT_MISMATCH=1 EXIT_USAGE=2 EXIT_NO_GOLDEN=3 EXIT_GENERATION=4
repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
}

model="meta-llama/Meta-Llama-3-8B-Instruct"
name=""
golden=""
output=""
while getopts ":m:n:g:o:h" opt; do
    case "$opt" in
        m) model=$OPTARG ;;
        n) name=$OPTARG ;;
        g) golden=$OPTARG ;;
        o) output=$OPTARG ;;
        h) usage; exit "$EXIT_MATCH" ;;
        :) echo "error: -$OPTARG needs a value" >&2; usage >&2; exit "$EXIT_USAGE" ;;
        *) echo "error: unknown option -$OPTARG" >&2; usage >&2; exit "$EXIT_USAGE" ;;
    esac
done
shift $((OPTIND - 1))
extra_args=("$@")

name=${name:-${model##*/}}
golden=${golden:-"$repo_root/.github/workflows/golden_outputs/${name}_golden_output.txt"}
if [[ ! -f "$golden" ]]; then
    echo "error: no golden output for '$name': $golden does not exist" >&2
    echo "(record one by running with -o and reviewing the file)" >&2
    exit "$EXIT_NO_GOLDEN"
fi

if [[ -z "$output" ]]; then
    output=$(mktemp "${TMPDIR:-/tmp}/golden_output.XXXXXX")
    trap 'rm -f "$output"' EXIT
fi

echo "== generating with $model ${extra_args[*]}" >&2
raw=$(mktemp "${TMPDIR:-/tmp}/golden_raw.XXXXXX")
status=0
python3 -m atom.examples.simple_inference --model "$model" "${extra_args[@]}" \
    --temperature 0 >"$raw" 2>&1 || status=$?
grep -E '^Prompt: |^Completion:' "$raw" >"$output" || true
if [[ $status -ne 0 || ! -s "$output" ]]; then
    echo "error: the generation failed (exit $status) or printed no Prompt:/Completion: lines; its last lines:" >&2
    tail -n 30 "$raw" >&2
    rm -f "$raw"
    exit "$EXIT_GENERATION"
fi
rm -f "$raw"

if diff -u -B -w --strip-trailing-cr --label "golden: $golden" --label "generated: $model" \
    "$golden" "$output"; then
    echo "== match: the output equals $golden" >&2
    exit "$EXIT_MATCH"
fi
echo "== MISMATCH: the generated output (+) differs from $golden (-)" >&2
exit "$EXIT_MISMATCH"
