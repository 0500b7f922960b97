"""Objective x head on the synthetic data: train each pair, evaluate on the test split.

    flowclas synth --output data/synthetic
    python benchmarks/compare_objectives.py --data data/synthetic --steps 200 --output out/compare

Every run uses the ``synthetic`` recipe with the same seed, data, steps and batch; only the
objective and head change. Writes ``results.json`` and ``results.md`` (AP / FPR95 in %,
training minutes) in ``--output``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from flowclas_ros.model.config import HEADS
from flowclas_ros.runtime import Detector
from flowclas_ros.training.config import load_train_config
from flowclas_ros.training.datasets import build_dataset
from flowclas_ros.training.evaluate import evaluate
from flowclas_ros.training.trainer import train

OBJECTIVES = ("flowclas", "ml", "outlier_nll")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/synthetic", help="output of flowclas synth")
    parser.add_argument("--output", default="out/compare")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=OBJECTIVES)
    parser.add_argument("--heads", nargs="+", default=["flowclas", "fastflow"], choices=HEADS)
    args = parser.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    results_file = out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.exists() else {}
    test = build_dataset("folder", args.data, "test")
    for head in args.heads:
        for objective in args.objectives:
            name = f"{objective}+{head}"
            if name in results:
                continue
            config = load_train_config("synthetic", [
                f"data.root={args.data}", f"data.outliers={args.data}/outliers", f"objective.name={objective}",
                f"model.head={head}", f"optim.steps={args.steps}",
            ])
            start = time.perf_counter()
            bundle = train(config, out / name)
            minutes = (time.perf_counter() - start) / 60
            metrics = evaluate(Detector.from_bundle(bundle), test, progress=False)
            results[name] = {"objective": objective, "head": head, "ap": 100 * metrics["ap"],
                             "fpr95": 100 * metrics["fpr95"], "train_minutes": minutes, "steps": args.steps}
            results_file.write_text(json.dumps(results, indent=2) + "\n")
            print(f"{name}: AP {results[name]['ap']:.1f}  FPR95 {results[name]['fpr95']:.1f}  {minutes:.1f} min")
    lines = ["| objective | head | AP % | FPR95 % | training min |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['objective']} | {r['head']} | {r['ap']:.1f} | {r['fpr95']:.1f} | {r['train_minutes']:.1f} |"
              for r in results.values()]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
