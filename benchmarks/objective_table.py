"""Objective x head table on synthetic domains, with the closed-form Gaussian baseline.

    python benchmarks/objective_table.py --output out/objective_table --jobs 2 --readme README.md

For every domain it writes a small dataset with ``flowclas synth`` (the hidden-check shape:
48 training images, 24 test images whose anomalies come from photo sources never pasted,
40 outlier crops, 240x320), then for every head (``model.config.HEADS``), objective and
seed trains the unmodified ``folder`` recipe (only data paths, objective, head and
``run.seed`` set) and evaluates the test split exactly. The Gaussian baseline
(``training.gaussian``) is fitted once per domain on the same training images.

Each run stores ``runs/<domain>/<head>-<objective>-s<seed>/result.json``, so an interrupted
table resumes and ``--jobs`` runs in parallel; ``results.md`` (and, with ``--readme``, the
section between ``<!-- objective-table:start -->`` and ``<!-- objective-table:end -->``)
holds mean +- standard deviation over seeds of AP (scikit-learn step AP), AUPRC
(trapezoid), FPR95 and AUROC, in %, and the training minutes. ``--steps`` shortens runs
for a quick look (the table then says so); ``--set KEY=VALUE`` adds a recipe setting to
every run (e.g. ``--set optim.lr=1e-5``), for a variant table in its own ``--output``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

DOMAINS = ("terrain", "warehouse", "underwater", "orbital", "road")
OBJECTIVES = ("flowclas", "ml", "outlier_nll")
METRICS = ("ap", "auprc_trapz", "fpr95", "auroc")
START, END = "<!-- objective-table:start -->", "<!-- objective-table:end -->"


def make_data(root: Path, domain: str, seed: int) -> Path:
    from flowclas_ros.synthetic.generate import SynthOptions, synthesize

    folder = root / "data" / domain
    if not (folder / "synth.json").exists():
        synthesize(SynthOptions(output=str(folder), domain=domain, train=48, test=24, outliers=40, seed=seed))
    return folder


def _metrics(values: dict) -> dict:
    return {k: 100 * float(values[k]) for k in METRICS}


def run_one(out: str, data: str, domain: str, head: str, objective: str, seed: int, steps: int | None,
            threads: int, settings: tuple[str, ...] = ()) -> dict:
    """Train and evaluate one cell; returns (and stores) its result."""
    import torch

    torch.set_num_threads(threads)
    from flowclas_ros.runtime import Detector
    from flowclas_ros.training.config import load_train_config
    from flowclas_ros.training.datasets import build_dataset
    from flowclas_ros.training.evaluate import evaluate
    from flowclas_ros.training.trainer import train

    run = Path(out) / "runs" / domain / f"{head}-{objective}-s{seed}"
    overrides = [f"data.root={data}", f"data.outliers={data}/outliers", f"objective.name={objective}",
                 f"model.head={head}", f"run.seed={seed}"] + ([f"optim.steps={steps}"] if steps else []) + list(settings)
    config = load_train_config("folder", overrides)
    start = time.perf_counter()
    bundle = train(config, run, progress=False)
    minutes = (time.perf_counter() - start) / 60
    metrics = evaluate(Detector.from_bundle(bundle), build_dataset("folder", data, "test"), progress=False)
    result = {"domain": domain, "head": head, "objective": objective, "seed": seed, **_metrics(metrics),
              "train_minutes": minutes, "steps": config.optim.steps}
    (run / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def run_gaussian(out: str, data: str, domain: str, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from flowclas_ros.runtime import Detector
    from flowclas_ros.training.config import load_train_config
    from flowclas_ros.training.datasets import build_dataset
    from flowclas_ros.training.evaluate import evaluate
    from flowclas_ros.training.gaussian import fit_gaussian

    config = load_train_config("folder", [f"data.root={data}", f"data.outliers={data}/outliers"])
    start = time.perf_counter()
    scorer = fit_gaussian(config.model, build_dataset("folder", data, "train"))
    minutes = (time.perf_counter() - start) / 60
    metrics = evaluate(Detector(scorer), build_dataset("folder", data, "test"), progress=False)
    result = {"domain": domain, "head": "gaussian", "objective": "closed form", "seed": 0, **_metrics(metrics),
              "train_minutes": minutes, "steps": 0}
    path = Path(out) / "runs" / domain / "gaussian" / "result.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def collect(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*/*/result.json"))]


def _cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def table(results: list[dict], domains: list[str], command: str) -> str:
    lines = [f"Command: `{command}`", "",
             "AP: scikit-learn step AP; AUPRC: trapezoid (the authors' \"AP\"); mean ± std over seeds, %.", ""]
    for domain in domains:
        rows = [r for r in results if r["domain"] == domain]
        if not rows:
            continue
        lines += [f"**{domain}**", "", "| head | objective | seeds | AP | AUPRC trapz | FPR95 | AUROC | steps | train min |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        groups: dict[tuple, list[dict]] = {}
        for r in rows:
            groups.setdefault((r["head"], r["objective"]), []).append(r)
        order = sorted(groups, key=lambda k: (k[0] == "gaussian", k[0], k[1]))
        for key in order:
            g = groups[key]
            cells = [_cell([r[m] for r in g]) for m in METRICS]
            lines.append(f"| {key[0]} | {key[1]} | {len(g)} | " + " | ".join(cells)
                         + f" | {g[0]['steps']} | {statistics.mean(r['train_minutes'] for r in g):.1f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    from flowclas_ros.model.config import HEADS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="out/objective_table")
    parser.add_argument("--domains", nargs="+", default=list(DOMAINS))
    parser.add_argument("--heads", nargs="+", default=list(HEADS), choices=HEADS)
    parser.add_argument("--objectives", nargs="+", default=list(OBJECTIVES), choices=OBJECTIVES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--data-seed", type=int, default=1, help="flowclas synth --seed of the datasets")
    parser.add_argument("--steps", type=int, default=None, help="override the recipe's steps (quick looks)")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="extra recipe setting for every run (repeatable; use its own --output)")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel (one thread each unless --threads)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--readme", default=None, help="also replace the marked table section of this file")
    args = parser.parse_args()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    data = {d: make_data(out, d, args.data_seed) for d in args.domains}
    done = {(r["domain"], r["head"], r["objective"], r["seed"]) for r in collect(out)}
    jobs = [("gaussian", d) for d in args.domains if (d, "gaussian", "closed form", 0) not in done]
    # seed-major order: a partial table has every cell at least once before any second seed
    jobs += [("train", d, h, o, s) for s in args.seeds for d in args.domains for h in args.heads
             for o in args.objectives if (d, h, o, s) not in done]
    command = "python benchmarks/objective_table.py " + " ".join(
        [f"--output {args.output}", f"--domains {' '.join(args.domains)}", f"--seeds {' '.join(map(str, args.seeds))}"]
        + ([f"--steps {args.steps}"] if args.steps else []) + [f"--set {kv}" for kv in args.settings])

    def write() -> None:
        text = table(collect(out), args.domains, command)
        (out / "results.md").write_text(text + "\n")
        if args.readme:
            readme = Path(args.readme)
            body = readme.read_text()
            if START in body and END in body:
                head, rest = body.split(START, 1)
                readme.write_text(head + START + "\n" + text + "\n" + END + rest.split(END, 1)[1])

    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = {}
        for job in jobs:
            if job[0] == "gaussian":
                futures[pool.submit(run_gaussian, str(out), str(data[job[1]]), job[1], threads)] = job
            else:
                _, d, h, o, s = job
                futures[pool.submit(run_one, str(out), str(data[d]), d, h, o, s, args.steps, threads,
                                       tuple(args.settings))] = job
        for future in as_completed(futures):
            r = future.result()
            print(f"{r['domain']} {r['head']}+{r['objective']} seed {r['seed']}: AP {r['ap']:.1f} "
                  f"trapz {r['auprc_trapz']:.1f} FPR95 {r['fpr95']:.1f} AUROC {r['auroc']:.1f} "
                  f"({r['train_minutes']:.1f} min)", flush=True)
            write()
    write()
    print((out / "results.md").read_text())


if __name__ == "__main__":
    main()
