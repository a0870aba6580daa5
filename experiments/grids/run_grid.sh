# Sourced by the grid scripts: run_grid MODULE runs `$PYTHON -m MODULE <entry>` for every entry
# of the RUNS array, one after another, each logged to <workdir>.log. An entry's last flag is its
# --workdir; a run with a results.json there is skipped, an interrupted one resumes; the first
# failure stops the grid.
run_grid() {
  local module=$1 run workdir
  mkdir -p "$OUT"
  for run in "${RUNS[@]}"; do
    workdir=${run##*--workdir=}
    [ -f "$workdir/results.json" ] && continue
    echo "$(date +%T) $workdir"
    # shellcheck disable=SC2086  # each entry is a list of flags
    $PYTHON -m "$module" $run --noprogress > "$workdir.log" 2>&1 || { echo "failed: $workdir (see $workdir.log)"; exit 1; }
  done
}
