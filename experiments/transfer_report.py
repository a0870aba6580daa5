r"""The four-scenario transfer table over many run directories.

    python -m experiments.transfer_report --runs='runs/transfer/*_n*_s*' [--json=table.json]

prints, per target, every strategy's test accuracy at every training size over
its seeds (mean ± 95% CI), the best strategy per cell and the ones tied with it
(`transfer/report.py`). Directories without a results.json are listed and skipped.
"""

import sys

from absl import app
from absl import flags

from core import run_dir
from transfer import report

flags.DEFINE_list("runs", None, "Run directories or glob patterns of them.", required=True)
flags.DEFINE_string("json", None, "Also write the table as JSON to this file.")
flags.DEFINE_bool("allow_unequal_seeds", False,
                  "Summarise a cell whose strategies have different seeds.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    summarize = lambda dirs: report.summarize(  # noqa: E731
        (report.read_run(d) for d in dirs), allow_unequal_seeds=FLAGS.allow_unequal_seeds)
    sys.exit(run_dir.print_results_table(FLAGS.runs, summarize, report.markdown, FLAGS.json))


if __name__ == "__main__":
    app.run(main)
