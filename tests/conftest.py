import torch


def pytest_configure(config):
    # The product's default (runtime.threads_per_rank = 1): tiny convolutions run fastest on
    # one intra-op thread, and results do not depend on the machine's core count.
    torch.set_num_threads(1)
