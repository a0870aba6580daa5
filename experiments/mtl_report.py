r"""The multi-task results table over many run directories.

    python -m experiments.mtl_report --runs='runs/mtl/*' [--json=table.json]

prints, per benchmark, every method's per-task test metrics over its seeds
(mean ± 95% CI), Δm% and Δp against the single-task runs (`--tasks=<task>`)
found among the same directories, and the mean rank over the methods found
(`mtl/report.py`). Directories without a results.json are listed and skipped.
"""

import sys

from absl import app
from absl import flags

from core import run_dir
from mtl import report

flags.DEFINE_list("runs", None, "Run directories or glob patterns of them.", required=True)
flags.DEFINE_string("json", None, "Also write the table as JSON to this file.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    summarize = lambda dirs: report.summarize(report.read_run(d) for d in dirs)  # noqa: E731
    sys.exit(run_dir.print_results_table(FLAGS.runs, summarize, report.markdown, FLAGS.json))


if __name__ == "__main__":
    app.run(main)
