"""Hyper-parameter search over any family's flags, with Optuna.

A search is a study directory::

    studies/<name>/
        study.json       what the search is (experiment, base flags, space, sampler, pruner,
                         seed, storage with its password masked); a rerun must match it
        study.db         the default storage (SQLite); --storage=URL puts it elsewhere
        trials/<n>/      one ordinary run directory per trial, with its own `flags` file
        best_seeds/      the best trial rerun once per seed (--best_seeds)

The modules, one concept each:

* `space`: the declarative JSON search space, checked against the experiment's config.
* `experiment_spec`: what the search needs to know of an experiment (its command, config
  class and validation selection), and flag files.
* `study`: storage, samplers seeded from the study's state, pruners, the recorded config.
* `trials`: one trial as a subprocess run in its own run directory, pruned from its
  metrics.jsonl, with a lock that tells a live trial from one whose worker died.
* `worker`: the loop one worker process runs; several workers share one storage.
* `summary` and `plots`: the tables and figures of `experiments/report.py`.

Nothing here imports a family (meta/, mtl/, transfer/): the entry point
`experiments/search.py` hands the family over as an `experiment_spec.Experiment`.
"""
