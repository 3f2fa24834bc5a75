import torch


def pytest_configure(config):
    # The product's default (runtime.threads_per_rank = 1): tiny convolutions run fastest on
    # one intra-op thread, and results do not depend on the machine's core count.
    torch.set_num_threads(1)


import pytest  # noqa: E402

# Folders whose every test runs whole jobs (mpirun, SLURM, fault injection): marked slow, so
# `python -m pytest -m "not slow"` is the fast unit suite (README, "Tests").
SLOW_FOLDERS = ("e2e", "faults", "slurm")


def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = item.path.parts
        if "tests" in parts and parts[parts.index("tests") + 1] in SLOW_FOLDERS:
            item.add_marker(pytest.mark.slow)
    # The files that launch jobs or build kernels first, each file's tests in their order:
    # the README's command runs two files at a time (pytest-xdist, --dist loadfile), and
    # with the long files handed out first the many short unit files fill the end, so
    # both workers finish together (collected alphabetically, the GPU dry run and the
    # documented-commands runs came last and one worker waited minutes for the other).
    heavy = {i.path for i in items if i.get_closest_marker("slow") or i.get_closest_marker("build")}
    items.sort(key=lambda i: i.path not in heavy)  # stable: collection order within each


@pytest.fixture(scope="session")
def kernel_library():
    """The fused library, loaded (prebuilt, cached or JIT-built) once per test session.

    A failure here is a real failure: the compiler is part of the test environment."""
    from fednas_mpi import kernels

    result = kernels.load()
    assert result.ok, result.error
    return result


@pytest.fixture
def fused(kernel_library):
    """Mixing through the fused kernels for one test, then back to the reference."""
    from fednas_mpi import kernels

    kernels.configure("fused", kernel_library)
    yield
    kernels.use_reference()
