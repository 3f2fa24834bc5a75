import torch


def pytest_configure(config):
    # Several ranks share the machine's cores; one intra-op thread each.
    torch.set_num_threads(1)
