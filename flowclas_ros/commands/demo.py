"""``flowclas demo``: the whole product offline, on embedded defaults."""

from __future__ import annotations

import argparse

from flowclas_ros.commands.common import add_threads_argument, options


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The command's flags."""
    from flowclas_ros.bagio import STORAGES
    from flowclas_ros.demo import DEMO_MODEL
    from flowclas_ros.synthetic.scenes import DOMAINS

    p.add_argument("--output", default="out/demo", help="the demo's folder: created, or reused when an earlier demo wrote it "
                   "(a non-empty folder of anything else is refused)")
    p.add_argument("--model", default=str(DEMO_MODEL), help="model bundle (default: the bundled demo model)")
    p.add_argument("--frames", type=int, default=60, help="frames in the synthetic camera bag")
    p.add_argument("--domain", default="orbital", choices=DOMAINS, help="scene domain of the demo model")
    p.add_argument("--seed", type=int, default=1, help="seed of the synthetic sequence")
    p.add_argument("--storage", default="mcap", choices=sorted(STORAGES), help="bag storage")
    p.add_argument("--montage-frames", type=int, default=4, help="frames shown in montage.png")
    add_threads_argument(p)


def run(args: argparse.Namespace) -> int:
    """Run the demo and say where everything went."""
    from flowclas_ros.demo import DemoOptions, run_demo

    r = run_demo(options(DemoOptions, args))
    m = r.metrics
    print(
        f"flowclas demo: AP (step) {m['ap']:.1f}%  AUPRC (trapezoid) {m['auprc_trapz']:.1f}%  FPR95 {m['fpr95']:.1f}%  "
        f"AUROC {m['auroc']:.1f}% on {m['num_images']} frames\n"
        f"  camera bag:     {r.camera_bag}\n"
        f"  annotated bag:  {r.annotated_bag}   (topics /flowclas/*; open it in Foxglove)\n"
        f"  metrics:        {r.metrics_path}\n"
        f"  montage:        {r.montage}"
    )
    return 0
