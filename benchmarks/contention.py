"""Frame latency and training step time idle vs beside a competing multi-threaded torch process.

    python benchmarks/contention.py --model flowclas_ros/data/demo_model --backends torch,onnxruntime \\
        --train --rounds 4 --frames 12 --steps 2 --variants legacy,auto

Every (variant, task) runs in its own worker process (thread settings and OpenMP environment
are fixed when torch loads, so each needs a fresh interpreter). The competing process
(flowclas_ros.loadgen: torch convolutions on every core with torch's defaults) is started
once and paused (SIGSTOP) for the idle phases. Each round measures every worker idle and
loaded, workers in a rotating order and idle/loaded alternating first, so slow drifts of
the machine's other load hit all cases alike. Reported: median frame latency (or step time)
idle and loaded and their ratio, per variant and task.

Variants (``--variants``, comma-separated):

* ``legacy``: what the code did before issue 14: torch's default threads and environment;
  ONNX Runtime with torch's thread count.
* ``auto``: the product default: ``flowclas_ros.runtime.threads.prepare_environment`` then
  ``configure_threads(None)``, exactly like the entry points.
* ``T@WAIT``: T threads (a number, or ``default`` for torch's choice) with OMP_WAIT_POLICY
  WAIT (``passive``, ``active`` or ``unset``) or ``spin=N`` (GOMP_SPINCOUNT=N), e.g.
  ``1@unset``, ``2@passive``, ``2@spin=10000``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ worker side


def _worker(args: argparse.Namespace) -> None:
    variant = args.variant
    threads: int | None = None
    if variant == "auto":
        from flowclas_ros.runtime.threads import configure_threads, prepare_environment

        prepare_environment()
        threads = configure_threads(None)
    import numpy as np
    import torch

    if variant not in ("legacy", "auto"):
        count = variant.split("@")[0]
        if count != "default":
            threads = int(count)
            torch.set_num_threads(threads)
    h, w = args.height, args.width
    if args.task == "train":
        run = _train_step(args.model, h, w, args.batch_size)
    else:
        from flowclas_ros.runtime import Detector

        detector = Detector.from_bundle(args.model, backend=args.task, threads=threads)
        frame = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
        def run() -> None:
            detector.detect(frame)
    run()
    run()
    wait = os.environ.get("OMP_WAIT_POLICY", "unset")
    if "GOMP_SPINCOUNT" in os.environ:
        wait += f", GOMP_SPINCOUNT={os.environ['GOMP_SPINCOUNT']}"
    print(json.dumps({"ready": True, "torch_threads": torch.get_num_threads(), "wait_policy": wait}), flush=True)
    for line in sys.stdin:
        n = int(line)
        times = []
        for _ in range(n):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        print(json.dumps(times), flush=True)


def _train_step(model: str, h: int, w: int, batch: int):
    """One optimiser step of the FlowCLAS objective on random pasted-like batches."""
    import torch

    from flowclas_ros.model import FlowCLASNet
    from flowclas_ros.model.bundle import read_bundle_config
    from flowclas_ros.model.network import pad_to_multiple
    from flowclas_ros.training.config import load_train_config
    from flowclas_ros.training.objectives import compute_loss

    config, _ = read_bundle_config(model)
    config.encoder.input_size = [h, w]
    train_config = load_train_config("synthetic", [])
    torch.manual_seed(0)
    net = FlowCLASNet(config).train()
    m = net.encoder.pad_multiple
    g = torch.Generator().manual_seed(0)
    x_mix, x_out = (pad_to_multiple(torch.randn(batch, 3, h, w, generator=g), m) for _ in range(2))
    y = torch.zeros(batch, *x_mix.shape[-2:], dtype=torch.long)
    y[:, h // 3 : h // 2, w // 3 : w // 2] = 1
    optimizer = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-5)

    def step() -> None:
        loss, _ = compute_loss(net, x_mix, y, x_out, y, train_config.objective, torch.Generator().manual_seed(1), 2)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


# ------------------------------------------------------------------ parent side


def _env(variant: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if "@" in variant:
        wait = variant.split("@")[1]
        if wait.startswith("spin="):
            env["GOMP_SPINCOUNT"] = wait[5:]
        elif wait != "unset":
            env["OMP_WAIT_POLICY"] = wait.upper()
    return env


class Worker:
    """One measured (variant, task) in its own process, driven over stdin/stdout."""

    def __init__(self, args: argparse.Namespace, variant: str, task: str) -> None:
        self.name = f"{task} {variant}"
        self.variant, self.task = variant, task
        command = [sys.executable, __file__, "--worker", "--variant", variant, "--task", task, "--model", args.model,
                   "--height", str(args.height), "--width", str(args.width), "--batch-size", str(args.batch_size)]
        self.process = subprocess.Popen(command, env=_env(variant), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"worker {self.name} failed to start")
        self.info = json.loads(line)

    def run(self, n: int) -> list[float]:
        self.process.stdin.write(f"{n}\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(ROOT / "flowclas_ros" / "data" / "demo_model"))
    parser.add_argument("--backends", default="torch,onnxruntime")
    parser.add_argument("--variants", default="legacy,auto")
    parser.add_argument("--train", action="store_true", help="also time training steps (torch)")
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--batch-size", type=int, default=8, help="training batch (the synthetic recipe's)")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--frames", type=int, default=12, help="frames per phase and detect worker")
    parser.add_argument("--steps", type=int, default=2, help="training steps per phase")
    parser.add_argument("--load-threads", type=int, default=None, help="threads of the competing process (default: all cores)")
    parser.add_argument("--output", default=None, help="also write the results as JSON here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--task", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return

    sys.path.insert(0, str(ROOT))
    from flowclas_ros.loadgen import CompetingLoad

    tasks = [b for b in args.backends.split(",") if b] + (["train"] if args.train else [])
    variants = [v for v in args.variants.split(",") if v]
    workers = [Worker(args, v, t) for t in tasks for v in variants]
    times = {w.name: {"idle": [], "loaded": []} for w in workers}
    load = CompetingLoad(args.load_threads).start()
    try:
        load.pause()
        for r in range(args.rounds):
            order = workers[r % len(workers):] + workers[: r % len(workers)]
            for i, w in enumerate(order):
                n = args.steps if w.task == "train" else args.frames
                for phase in (("idle", "loaded") if (r + i) % 2 == 0 else ("loaded", "idle")):
                    if phase == "loaded":
                        load.resume()
                    else:
                        load.pause()
                        time.sleep(0.2)
                    times[w.name][phase] += w.run(n)
                print(f"round {r + 1}/{args.rounds}: {w.name} done", file=sys.stderr, flush=True)
    finally:
        load.stop()
        for w in workers:
            w.close()

    rows = []
    for w in workers:
        idle, loaded = (statistics.median(times[w.name][p]) * 1000 for p in ("idle", "loaded"))
        rows.append({"task": w.task, "variant": w.variant, "torch_threads": w.info["torch_threads"],
                     "wait_policy": w.info["wait_policy"], "idle_ms": round(idle, 1), "loaded_ms": round(loaded, 1),
                     "ratio": round(loaded / idle, 2)})
    base = {r["task"]: r["idle_ms"] for r in rows if r["variant"] == "legacy"}
    print(f"\n`{' '.join(sys.argv)}`\n")
    print("| task | variant | torch threads | OMP_WAIT_POLICY | idle ms (median) | loaded ms (median) | loaded/idle |"
          + (" loaded / legacy idle |" if base else ""))
    print("| --- | --- | --- | --- | --- | --- | --- |" + (" --- |" if base else ""))
    for r in rows:
        extra = f" {r['loaded_ms'] / base[r['task']]:.2f} |" if r["task"] in base else (" |" if base else "")
        print(f"| {r['task']} | {r['variant']} | {r['torch_threads']} | {r['wait_policy']} | {r['idle_ms']} | "
              f"{r['loaded_ms']} | {r['ratio']} |" + extra)
    if args.output:
        Path(args.output).write_text(json.dumps({"command": sys.argv, "rows": rows, "times": times}, indent=2))


if __name__ == "__main__":
    main()
