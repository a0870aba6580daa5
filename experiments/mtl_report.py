r"""The multi-task results table over many run directories.

    python -m experiments.mtl_report --runs='runs/mtl/*' [--json=table.json]

prints, per benchmark, every method's per-task test metrics over its seeds
(mean ± 95% CI), Δm% and Δp against the single-task runs (`--tasks=<task>`)
found among the same directories, and the mean rank over the methods found
(`mtl/report.py`). Directories without a results.json are listed and skipped.
"""

import glob
import json
import os
import sys

from absl import app
from absl import flags

from core.errors import UserInputError
from mtl import report

flags.DEFINE_list("runs", None, "Run directories or glob patterns of them.", required=True)
flags.DEFINE_string("json", None, "Also write the table as JSON to this file.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    dirs = sorted({d for pattern in FLAGS.runs for d in glob.glob(pattern) if os.path.isdir(d)})
    finished = [d for d in dirs if os.path.exists(os.path.join(d, "results.json"))]
    if not finished:
        print(f"error: no run directory with a results.json matches {FLAGS.runs}",
              file=sys.stderr)
        sys.exit(2)
    for d in sorted(set(dirs) - set(finished)):
        print(f"skipped (no results.json yet): {d}", file=sys.stderr)
    try:
        table = report.summarize(report.read_run(d) for d in finished)
    except UserInputError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(report.markdown(table))
    if FLAGS.json:
        with open(FLAGS.json, "w") as f:
            json.dump(table, f, indent=2)


if __name__ == "__main__":
    app.run(main)
