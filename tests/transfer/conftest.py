"""Fixtures shared by the transfer tests: fake MNIST files and one source run.

Session-scoped, so the source run (an MLP trained from scratch on digits 0-4,
its images augmented with --augment=shift, the pipeline target runs can
reuse by name) is trained once for every test file that needs a source or a
teacher.
"""

import pytest

from core.datasets.fake_idx import write_fake_idx_dataset
from tests.transfer.transfer_fixtures import make_config, train


@pytest.fixture(scope="session")
def mnist_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("mnist")
    write_fake_idx_dataset(str(path), n_train=100, n_test=40)
    return str(path)


@pytest.fixture(scope="session")
def source_run(tmp_path_factory, mnist_dir):
    """The source run, digits 0-4 from scratch: (workdir, results)."""
    workdir = tmp_path_factory.mktemp("source") / "run"
    return workdir, train(make_config(workdir, mnist_dir, strategy="scratch",
                                      classes=(0, 1, 2, 3, 4), train_per_class=4,
                                      augment="shift"))


@pytest.fixture(scope="session")
def source(source_run):
    return str(source_run[0])
