"""``flowclas bench``: latency, throughput and memory per backend, resolution and batch size."""

from __future__ import annotations

import argparse

from flowclas_ros.commands.common import add_threads_argument, device_value, number_type, options
from flowclas_ros.limits import Range


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's flags."""
    from flowclas_ros.bench import DEFAULT_BACKENDS

    parser.add_argument("--model", required=True, help="model bundle directory")
    parser.add_argument("--backends", default=DEFAULT_BACKENDS,
                        help="comma-separated backends, each NAME or NAME:PRECISION (e.g. onnxruntime:int8); "
                             "unavailable ones are skipped with the reason")
    parser.add_argument("--resolutions", default=None, help="comma-separated HxW (default: the bundle's input size)")
    parser.add_argument("--batch-sizes", default="1", help="comma-separated batch sizes for the model rows")
    parser.add_argument("--warmup", type=int, default=3, help="untimed calls per backend first")
    parser.add_argument("--iters", type=int, default=20, help="timed calls per backend and case")
    parser.add_argument("--peak-tflops", type=number_type(float, Range(0, 1e6, low_open=True)), default=None,
                        help="peak throughput of the hardware, TFLOP/s (default on CPU: measured float32 matmul throughput)")
    add_threads_argument(parser)
    parser.add_argument("--device", type=device_value, default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--no-pipeline", action="store_true", help="time the model alone")
    parser.add_argument("--load", action="store_true",
                        help="also time every case beside a competing multi-threaded torch process (started and stopped here)")
    parser.add_argument("--load-threads", type=int, default=None, metavar="N",
                        help="threads of the competing process (default: torch's, one per usable core)")
    parser.add_argument("--calibration", metavar="DIR", default=None,
                        help="int8 backends: inlier images to calibrate on when the artefact must be built")
    parser.add_argument("--output", default="bench", help="folder for bench.json and bench.md")


def run(args: argparse.Namespace) -> int:
    """Run the benchmark and print its table."""
    from flowclas_ros.bench import BenchOptions, markdown, run_bench

    opts = options(BenchOptions, args)
    report = run_bench(opts)
    print(markdown(report))
    print(f"flowclas bench: {len(report['results'])} rows -> {opts.output}/bench.json, {opts.output}/bench.md")
    return 0
