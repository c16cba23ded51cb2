"""torch threads are set for one block of work and given back."""

from __future__ import annotations

import torch

from fedarches.shared._training import torch_threads


def test_torch_threads_sets_then_restores() -> None:
    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before
