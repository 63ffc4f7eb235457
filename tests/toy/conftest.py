"""Toy tests run torch on one thread: GAN steps and KID are bit-reproducible only at a fixed thread count."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
