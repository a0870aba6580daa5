"""A child of tests/core/test_mesh.py's 2-process test: which rows does this process build?

Run by `experiments.launch`; joins the cluster from the coordinator flags it is
given, places a 16-row batch with `core.mesh.put_rows` and prints the row
ranges it built and the global batch's checksum, computed on the mesh.
"""

import sys

from core import distributed


def main(argv):
    flags = dict(arg.lstrip("-").split("=", 1) for arg in argv[1:])
    distributed.initialize(distributed.ClusterFlags(
        coordinator_address=flags["coordinator_address"],
        num_processes=int(flags["num_processes"]), process_id=int(flags["process_id"])))
    import jax  # pylint: disable=g-import-not-at-top
    import numpy as np  # pylint: disable=g-import-not-at-top
    from core import mesh as mesh_lib  # pylint: disable=g-import-not-at-top

    built = []

    def build_rows(start, stop):
        built.append((start, stop))
        rows = np.arange(start, stop, dtype=np.float32)
        return {"x": rows[:, None] * np.ones((1, 3), np.float32), "i": rows.astype(np.int32)}

    batch = mesh_lib.put_rows(build_rows, 16, mesh_lib.make_mesh())
    weights = np.arange(16, dtype=np.float32) + 1
    checksum = jax.jit(lambda b: (b["x"].sum(1) * weights).sum() + b["i"].sum())(batch)
    print(f"built {built} shape {batch['x'].shape} checksum {float(checksum)}", flush=True)


if __name__ == "__main__":
    main(sys.argv)
