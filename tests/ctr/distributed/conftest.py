"""One local Ray cluster (127.0.0.1, 4 logical CPUs) shared by every Ray test of the session."""

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    from pipelines import ray_runner  # sets the loopback/auth environment before importing ray

    ray = ray_runner.ray
    started = not ray.is_initialized()
    if started:
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    yield ray
    if started:
        ray.shutdown()
