"""The whole score-map module passes torch.export and matches eager."""

from __future__ import annotations

import torch


def test_torch_export_matches_eager(small_net):
    x = torch.randn(1, 3, 64, 96)
    program = torch.export.export(small_net, (x,))
    with torch.no_grad():
        eager = small_net(x)
        exported = program.module()(x)
    torch.testing.assert_close(exported, eager, atol=1e-5, rtol=1e-5)


def test_torch_export_with_dynamic_batch(small_net):
    batch = torch.export.Dim("batch", min=1, max=8)
    x = torch.randn(2, 3, 64, 96)
    program = torch.export.export(small_net, (x,), dynamic_shapes=({0: batch},))
    x3 = torch.randn(3, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x3), small_net(x3), atol=1e-5, rtol=1e-5)
