"""Our hand-written flow (flowclas_ros/model/flow.py) against the same flow built with FrEIA.

    /work/freia-venv/bin/python benchmarks/flow_vs_freia.py --threads 2 --repeats 5

FrEIA is never a dependency of the project: run this with an interpreter that has torch
and FrEIA (``pip install --no-deps FrEIA``; its own needs are numpy and scipy). Only
``flowclas_ros/model/flow.py`` is loaded from this repository (it imports nothing but torch).

The FrEIA side is the authors' configuration: ``SequenceINN`` of ``ActNorm``,
``PermuteRandom`` and ``AffineCouplingOneSided`` (clamp 2, ``TANH`` clamp activation),
whose subnet is ours as the authors write it: the same layers and weights with the stock
``nn.GroupNorm(1, c)`` (:func:`authors_subnet`). Every parameter is synced
from ours - ActNorm as the equivalent per-channel ``x * exp(scale) + bias``, our
permutations - and the log-likelihood of the same input must agree before anything is
timed. Then forward, and forward + backward of the summed log-likelihood, at 1 x 768 x
37 x 74 and 1 x 1024 x 37 x 74 (DINOv2-B/L tokens of a 518 x 1036 crop) with 8 and 16
steps, the two implementations interleaved call by call in this one process.

Both run the same convolutions through the same oneDNN kernels. The last columns profile
our side: the share of its time spent in convolution kernels, and the speed-up an
implementation would reach if everything else cost nothing (Amdahl's bound at unchanged
float32 arithmetic).
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def load_flow_module():
    spec = importlib.util.spec_from_file_location("flowclas_flow", ROOT / "flowclas_ros" / "model" / "flow.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def randomise(flow: torch.nn.Module, seed: int = 0) -> None:
    """Small random values everywhere (zero-initialised output convs would make every coupling the identity)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.02 if p.dim() > 1 else 0.1))
        for m in flow.modules():
            if hasattr(m, "initialized"):
                m.initialized.fill_(True)


def affine_of(actnorm: torch.nn.Module, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(log scale, bias) of a per-channel affine module, probed (works for any parametrisation)."""
    with torch.no_grad():
        zero = torch.zeros(1, channels, 1, 1)
        y0 = actnorm(zero)[0]
        y1 = actnorm(zero + 1)[0]
    return torch.log(y1 - y0), y0


def authors_subnet(subnet: torch.nn.Module) -> torch.nn.Module:
    """A copy of our subnet written with the stock modules the authors use (``nn.GroupNorm(1, c)``
    wherever ours has its own norm class), same weights."""
    subnet = copy.deepcopy(subnet)
    for parent in list(subnet.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, torch.nn.GroupNorm) and type(child) is not torch.nn.GroupNorm:
                stock = torch.nn.GroupNorm(child.num_groups, child.num_channels, child.eps, child.affine)
                stock.load_state_dict(child.state_dict())
                setattr(parent, name, stock)
    return subnet


def build_freia(ours: torch.nn.Module, channels: int, clamp: float):
    import FrEIA.framework as Ff
    import FrEIA.modules as Fm

    steps = list(ours.steps)
    subnets = iter([authors_subnet(s.coupling.subnet) for s in steps])
    inn = Ff.SequenceINN(channels, 37, 74)
    for _ in steps:
        inn.append(Fm.ActNorm)
        inn.append(Fm.PermuteRandom, seed=0)
        inn.append(Fm.AffineCouplingOneSided, subnet_constructor=lambda cin, cout: next(subnets), clamp=clamp,
                   clamp_activation="TANH")
    modules = list(inn.module_list)
    with torch.no_grad():
        for i, step in enumerate(steps):
            act, perm, coupling = modules[3 * i: 3 * i + 3]
            log_scale, bias = affine_of(step.actnorm, channels)
            act.scale.copy_(log_scale)
            act.bias.copy_(bias)
            act.init_on_next_batch = False
            perm.perm.copy_(step.permute.perm)
            perm.perm_inv.copy_(torch.argsort(step.permute.perm))
    return inn


def log_likelihood_ours(flow, x):
    z, logdet = flow(x)
    return -0.5 * z.pow(2).sum(dim=(1, 2, 3)) + logdet


def log_likelihood_freia(inn, x):
    z, logdet = inn(x)
    return -0.5 * z.pow(2).sum(dim=(1, 2, 3)) + logdet


def conv_share(fn) -> float:
    """Fraction of ``fn``'s CPU time spent in convolution kernels (forward and backward), profiled."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    conv = sum(e.self_cpu_time_total for e in events if "convolution" in e.key)
    return conv / total


def timed(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per case and implementation")
    parser.add_argument("--channels", type=int, nargs="+", default=[768, 1024])
    parser.add_argument("--steps", type=int, nargs="+", default=[8, 16])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    flow_module = load_flow_module()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ours: {ROOT / 'flowclas_ros/model/flow.py'}")
    rows = []
    for channels in args.channels:
        for steps in args.steps:
            torch.manual_seed(0)
            ours = flow_module.Flow(channels, steps=steps, subnet="residual", clamp=2.0, seed=0)
            randomise(ours)
            inn = build_freia(ours, channels, 2.0)
            ours.train()
            inn.train()
            x = torch.randn(1, channels, 37, 74, generator=torch.Generator().manual_seed(1))
            with torch.no_grad():  # equal in float64, on copies (16 random steps overflow float32's precision)
                a = log_likelihood_ours(copy.deepcopy(ours).double(), x.double())
                b = log_likelihood_freia(copy.deepcopy(inn).double(), x.double())
            rel = float(((a - b).abs() / b.abs()).max())
            assert rel < 1e-5, f"log-likelihoods differ: ours {a.tolist()} FrEIA {b.tolist()}"

            def fwd(model, ll):
                def run():
                    with torch.no_grad():
                        ll(model, x)
                return run

            def fwd_bwd(model, ll):
                def run():
                    model.zero_grad(set_to_none=True)
                    ll(model, x).sum().backward()
                return run

            for mode, make in (("forward", fwd), ("forward+backward", fwd_bwd)):
                cases = {"ours": make(ours, log_likelihood_ours), "FrEIA": make(inn, log_likelihood_freia)}
                for fn in cases.values():
                    fn()  # warm-up
                times = {n: [] for n in cases}
                for i in range(args.repeats):
                    for n in (list(cases) if i % 2 == 0 else list(cases)[::-1]):
                        times[n] += timed(cases[n], 1)
                med = {n: statistics.median(t) * 1000 for n, t in times.items()}
                share = conv_share(cases["ours"])
                rows.append((channels, steps, mode, med["ours"], med["FrEIA"], med["FrEIA"] / med["ours"], rel, share))
                print(f"  {channels} ch, {steps} steps, {mode}: ours {med['ours']:.0f} ms, FrEIA {med['FrEIA']:.0f} ms",
                      flush=True)
    print("\n| input | steps | pass | ours ms | FrEIA ms | FrEIA / ours | log-lik rel. diff | conv share (ours) "
          "| bound: 1 / conv share |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for c, s, mode, o, f, r, rel, share in rows:
        print(f"| 1x{c}x37x74 | {s} | {mode} | {o:.0f} | {f:.0f} | {r:.2f} | {rel:.1e} | {100 * share:.0f}% "
              f"| {1 / share:.2f}x |")


if __name__ == "__main__":
    main()
