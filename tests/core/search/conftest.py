"""Quiet Optuna in the search tests."""

import optuna

optuna.logging.set_verbosity(optuna.logging.WARNING)
