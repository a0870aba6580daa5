"""Tests of core/distributed.py: the coordinator flags are checked before anything starts."""

import pytest

from core import distributed
from core.errors import ConfigError


@pytest.mark.parametrize("fields,message", [
    (dict(coordinator_address="h:1", num_processes=2), "missing --process_id"),
    (dict(process_id=0), "missing --coordinator_address, --num_processes"),
    (dict(coordinator_address="h", num_processes=2, process_id=0), "must be host:port"),
    (dict(coordinator_address="h:1", num_processes=0, process_id=0), "must be >= 1"),
    (dict(coordinator_address="h:1", num_processes=2, process_id=2), r"must be in 0\.\.1"),
])
def test_partial_or_impossible_coordinator_flags_are_one_clear_error(fields, message):
    with pytest.raises(ConfigError, match=message):
        distributed.initialize(distributed.ClusterFlags(**fields))


def test_no_cluster_flags_is_a_single_process_run():
    assert distributed.initialize(distributed.ClusterFlags()) is None
    assert distributed.is_writer()
