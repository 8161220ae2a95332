#!/bin/sh
# run_fuzzer.sh TARGET SEED_CORPUS SECONDS: runs a libFuzzer target for SECONDS from a scratch
# copy of its seed corpus (the tree's corpus is never written), and prints the executions it
# made. Exit 0 when it found nothing; a finding leaves its crash-* file in the scratch directory,
# named in the output.
set -eu
target=$1 seeds=$2 seconds=$3
work=$(mktemp -d "${TMPDIR:-/tmp}/troupe-fuzz-XXXXXX")
mkdir -p "$work/corpus"
cp -r "$seeds"/. "$work/corpus/" 2>/dev/null || true
cd "$work"
status=0
"$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 \
  "$work/corpus" > "$work/log" 2>&1 || status=$?
tail -40 "$work/log"
# A finding (or any failure) keeps the scratch directory with its reproducer: say where.
if [ "$status" -ne 0 ] || ls "$work" | grep -qE '^(crash|timeout|oom|leak|slow-unit)-'; then
  echo "run_fuzzer.sh: a finding; the reproducer and the log stay in $work" >&2
  ls "$work" >&2
  exit 1
fi
rm -rf "$work"
exit 0
