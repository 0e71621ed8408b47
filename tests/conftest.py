"""Shared test setup: the parity report at the end of the run, and a one-thread fixture for tiny models."""

import pytest
import torch

from parity import REPORT


def pytest_terminal_summary(terminalreporter):
    if REPORT:
        terminalreporter.section("parity with the reference: max abs difference per tensor")
        for line in REPORT:
            terminalreporter.write_line(line)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models' matrices are too small to gain from threads, which on a busy 2-core machine cost ten-fold."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
