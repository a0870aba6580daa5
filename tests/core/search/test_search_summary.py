"""The report's table: configurations grouped over seeds, mean ± 95% CI by hand."""

import json
import math
import os

from core.search import summary


def _run(root, name, accuracy, best_val, seed, lr=0.1):
    workdir = os.path.join(root, name)
    os.makedirs(workdir)
    results = {"steps": 10, "wall_seconds": 2.0, "best_val": best_val, "best_step": 5,
               "test": {"accuracy": accuracy, "loss": 1.0 - accuracy, "per_step": [1, 2]},
               "config": {"learning_rate": lr, "seed": seed, "data_seed": seed,
                          "workdir": workdir, "resolved_conv_impl": "xla"}}
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f)
    return workdir


def test_mean_and_ci_over_seeds_equal_a_hand_computation(tmp_path):
    dirs = [_run(str(tmp_path), f"s{i}", acc, val, i)
            for i, (acc, val) in enumerate([(0.5, 0.4), (0.6, 0.5), (0.7, 0.9)])]
    dirs.append(_run(str(tmp_path), "other", 0.2, 0.1, 0, lr=0.01))
    rows = summary.summarize(summary.load_runs(dirs))
    assert [r["configuration"] for r in rows] == ["learning_rate=0.1", "learning_rate=0.01"]
    row = rows[0]
    assert row["seeds"] == 3
    # t(0.975, df=2) = 4.302653; std (ddof 1) of 0.5, 0.6, 0.7 is 0.1.
    mean, half = row["test"]["accuracy"]
    assert math.isclose(mean, 0.6) and math.isclose(half, 4.302653 * 0.1 / math.sqrt(3),
                                                    rel_tol=1e-6)
    vals = [0.4, 0.5, 0.9]
    std = math.sqrt(sum((v - 0.6) ** 2 for v in vals) / 2)
    assert math.isclose(row["best_val"][1], 4.302653 * std / math.sqrt(3), rel_tol=1e-6)
    assert "per_step" not in row["test"]
    assert math.isnan(rows[1]["test"]["accuracy"][1])
    table = summary.markdown(rows)
    assert "| learning_rate=0.1 | 3 | 0.6000 ± 0.6572 | 0.6000 ± 0.2484 |" in table
    assert "| learning_rate=0.01 | 1 | 0.1000 |" in table
