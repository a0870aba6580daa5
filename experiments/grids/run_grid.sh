# Sourced by the grid scripts: run_grid MODULE runs `$PYTHON -m MODULE <entry>` for every entry
# of the RUNS array, one after another, each logged to <workdir>.log. An entry's last flag is its
# --workdir; a run with a results.json there is skipped, an interrupted one resumes; the first
# failure stops the grid, or, with KEEP_GOING=1, is reported and the grid goes on (exit 1 at the
# end if any run failed).
run_grid() {
  local module=$1 run workdir failed=0
  mkdir -p "$OUT"
  for run in "${RUNS[@]}"; do
    workdir=${run##*--workdir=}
    [ -f "$workdir/results.json" ] && continue
    echo "$(date +%T) $workdir"
    # shellcheck disable=SC2086  # each entry is a list of flags
    if ! $PYTHON -m "$module" $run --noprogress > "$workdir.log" 2>&1; then
      echo "failed: $workdir (see $workdir.log)"
      [ "${KEEP_GOING:-0}" = 1 ] || exit 1
      failed=1
    fi
  done
  return $failed
}
