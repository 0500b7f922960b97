"""The flow: invertibility, exact log-determinants, ActNorm initialisation, identity at init."""

from __future__ import annotations

import pytest
import torch

from flowclas_ros.model.flow import ActNorm, Flow


def _randomized(flow: Flow, seed: int = 0) -> Flow:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)
    for m in flow.modules():
        if isinstance(m, ActNorm):
            m.initialized.fill_(True)
    return flow


@pytest.mark.parametrize("subnet", ["residual", "simple"])
def test_inverse_of_forward_is_identity(subnet):
    flow = _randomized(Flow(6, steps=4, subnet=subnet)).double().eval()
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    z, _ = flow(x)
    assert not torch.allclose(z, x)
    torch.testing.assert_close(flow.inverse(z), x, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("subnet,channels", [("residual", 4), ("simple", 5)])
def test_logdet_matches_autograd_jacobian(subnet, channels):
    flow = _randomized(Flow(channels, steps=3, subnet=subnet), seed=3).double().eval()
    shape = (1, channels, 3, 2)
    x = torch.randn(shape, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(lambda v: flow(v.view(shape))[0].reshape(-1), x.reshape(-1))
    expected = torch.linalg.slogdet(jac)[1]
    _, logdet = flow(x)
    torch.testing.assert_close(logdet[0], expected, atol=1e-8, rtol=1e-8)


def test_logdet_is_per_sample():
    flow = _randomized(Flow(4, steps=2)).eval()
    x = torch.randn(3, 4, 4, 4)
    _, batch = flow(x)
    singles = torch.cat([flow(x[i : i + 1])[1] for i in range(3)])
    torch.testing.assert_close(batch, singles)


def test_actnorm_initialises_to_zero_mean_unit_variance():
    act = ActNorm(3).train()
    x = torch.randn(4, 3, 8, 8) * torch.tensor([5.0, 0.1, 2.0]).view(1, 3, 1, 1) + torch.tensor([3.0, -1.0, 0.0]).view(1, 3, 1, 1)
    y, logdet = act(x)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    # the authors' initialisation divides by the unbiased standard deviation
    torch.testing.assert_close(y.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-4, rtol=0)
    assert torch.allclose(logdet, -act.log_scale.sum() * 64)
    # Initialised once: a second batch with other statistics does not re-initialise.
    before = act.log_scale.detach().clone()
    act(x * 10)
    assert torch.equal(act.log_scale.detach(), before)


def test_fresh_flow_is_a_pure_permutation_with_zero_logdet():
    flow = Flow(8, steps=5).eval()
    x = torch.randn(2, 8, 4, 4)
    z, logdet = flow(x)
    perm = torch.arange(8)
    for step in flow.steps:
        perm = perm[step.permute.perm]
    torch.testing.assert_close(z, x[:, perm])
    assert torch.equal(logdet, torch.zeros(2))


def test_permutations_are_seeded_and_differ_between_steps():
    a, b = Flow(16, steps=3, seed=7), Flow(16, steps=3, seed=7)
    perms = [s.permute.perm for s in a.steps]
    assert all(torch.equal(p, s.permute.perm) for p, s in zip(perms, b.steps))
    assert not torch.equal(perms[0], perms[1])


def test_sample_norm_equals_group_norm_with_one_group():
    from flowclas_ros.model.flow import SampleNorm

    norm, reference = SampleNorm(6), torch.nn.GroupNorm(1, 6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    reference.load_state_dict(norm.state_dict())
    x = torch.randn(3, 6, 5, 7) * 4 + 2
    assert torch.allclose(norm(x), reference(x), atol=1e-5)


def test_sample_norm_is_the_builtin_group_norm_eagerly_and_reductions_when_exported():
    import torch.nn.functional as F

    from flowclas_ros.model.flow import SampleNorm

    norm = SampleNorm(6)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(0.5, 2, 6))
        norm.bias.copy_(torch.linspace(-1, 1, 6))
    x = torch.randn(2, 6, 5, 7)
    torch.testing.assert_close(norm(x), F.group_norm(x, 1, norm.weight, norm.bias, norm.eps))
    program = torch.export.export(norm, (x,))
    ops = {str(n.target) for n in program.graph.nodes if n.op == "call_function"}
    assert not any("group_norm" in op for op in ops) and any("mean" in op for op in ops)
    torch.testing.assert_close(program.module()(x), norm(x), atol=1e-5, rtol=1e-5)
