"""Benchmarks of a bundle (``flowclas bench``): latency, throughput and memory per backend, resolution and batch size.

    flowclas bench --model BUNDLE --backends torch,torch-export,onnxruntime,onnxruntime:int8 \\
        --resolutions 480x640 --batch-sizes 1,2,4 --warmup 3 --iters 30 --load --output bench

A backend is ``NAME`` or ``NAME:PRECISION`` (e.g. ``onnxruntime:int8``, ``torch:bf16``).
For every resolution the backends are built once (static engines, batch 1..max batch),
warmed up, then timed round-robin - each iteration calls every backend once, starting
with a different one each time - so that load from other processes on a shared machine
hits all of them alike and the ratios stay fair. Two kinds of rows:

* ``model``: the backend alone on a normalised ``B x 3 x H x W`` tensor (random uint8 frames);
* ``pipeline``: the whole frame path of the ROS node and replay (``FramePipeline``: decode
  a rosbags ``sensor_msgs/Image``, normalise, model, threshold, hazards, output messages),
  batch 1, camera frames at the same resolution; ``stage_p50_ms`` splits it into the
  pipeline's own stages (decode, model, post, encode).

``--load``: a competing process (:mod:`flowclas_ros.loadgen`: torch convolutions on every
core with torch's default, busy-waiting threads) runs beside the benchmark. Every
iteration then times each backend once idle (the load paused with SIGSTOP) and once
loaded, the two phases alternating first; rows get ``loaded_*`` percentiles and
``loaded_over_idle`` (p50 ratio).

Memory (host RSS of this process, Linux ``/proc/self/status``; not GPU memory): ``load``
is the RSS growth while a backend is created; ``peak`` the growth of the RSS high-water
mark (``VmHWM``, reset through ``/proc/self/clear_refs``) over the RSS just before two
calls made before any timing, i.e. the working memory the first calls allocate. Both are
approximate: backends share one process and the allocator reuses freed memory. FLOPs are counted on
the eager network with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and
matrix products, 2 FLOPs per multiply-add). The floor per frame is FLOPs / peak, with the
peak from ``--peak-tflops`` or, without it, measured here: the float32 matrix-product
throughput (2048 x 2048 ``torch.mm``) on the same threads, before timing and idle.

The summary gives, per backend and resolution: p50 at batch 1 idle and loaded, their
ratio, the ratio to the floor, throughput at batch 1 and at the best batch size, and the
peak memory.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from flowclas_ros.deploy.shapes import parse_size
from flowclas_ros.errors import UserError
from flowclas_ros.files import claim_folder, write_text

log = logging.getLogger(__name__)

DEFAULT_BACKENDS = "torch,torch-export,onnxruntime,tensorrt"


@dataclass
class BenchOptions:
    """What ``flowclas bench`` measures (the flags, typed)."""

    model: str
    backends: str = DEFAULT_BACKENDS
    resolutions: str | None = None
    batch_sizes: str = "1"
    warmup: int = 3
    iters: int = 20
    peak_tflops: float | None = None
    threads: int | None = None
    device: str = "cpu"
    no_pipeline: bool = False
    load: bool = False
    load_threads: int | None = None
    calibration: str | None = None
    output: str = "bench"


@dataclass(frozen=True)
class Spec:
    """One benchmarked backend: name and precision; ``label`` as given on the command line."""

    name: str
    precision: str = "fp32"

    @property
    def label(self) -> str:
        """``NAME`` for fp32, else ``NAME:PRECISION``."""
        return self.name if self.precision == "fp32" else f"{self.name}:{self.precision}"


def _csv(text: str, what: str) -> list[str]:
    items = [t.strip() for t in (text or "").split(",") if t.strip()]
    if not items:
        raise UserError(f"--{what} needs at least one value")
    return items


def _options(args: BenchOptions) -> tuple[list[Spec], list[int]]:
    from flowclas_ros.model.precision import PRECISIONS
    from flowclas_ros.runtime.backends import BACKENDS

    backends = []
    for item in _csv(args.backends, "backends"):
        name, _, precision = item.partition(":")
        backends.append(Spec(name, precision or "fp32"))
    unknown = [b.name for b in backends if b.name not in BACKENDS or b.name == "auto"]
    if unknown:
        raise UserError(f"unknown backend(s) {', '.join(unknown)}; use {', '.join(b for b in BACKENDS if b != 'auto')}"
                        " (optionally NAME:PRECISION)")
    bad = [b.label for b in backends if b.precision not in PRECISIONS]
    if bad:
        raise UserError(f"unknown precision in {', '.join(bad)}; use one of {', '.join(PRECISIONS)}")
    if len(set(backends)) != len(backends):
        raise UserError(f"--backends lists a backend twice: {args.backends}")
    try:
        batches = sorted({int(b) for b in _csv(args.batch_sizes, "batch-sizes")})
    except ValueError:
        raise UserError(f"--batch-sizes must be integers, got {args.batch_sizes!r}") from None
    if batches[0] < 1 or batches[-1] > 256:
        raise UserError("--batch-sizes must be in 1..256")
    if args.warmup < 0 or args.iters < 1:
        raise UserError("--warmup must be >= 0 and --iters >= 1")
    if args.peak_tflops is not None and args.peak_tflops <= 0:
        raise UserError("--peak-tflops must be > 0")
    if args.load_threads is not None and args.load_threads < 0:
        raise UserError("--load-threads must be >= 0")
    return backends, batches


# ------------------------------------------------------------------ machine and memory


def machine_info() -> dict:
    """CPU, cores, OS, Python, GPU and library versions."""
    from importlib.metadata import PackageNotFoundError, version

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in ("flowclas_ros", "torch", "onnxruntime", "onnx", "onnxscript", "numpy", "rosbags", "torch_tensorrt", "tensorrt"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            continue
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "versions": versions,
    }


def _status_mib(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def peak_rss_growth(fn, calls: int = 2) -> float | None:
    """Peak RSS growth (MiB) over the RSS before ``calls`` calls of ``fn``; None off Linux."""
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        return None
    before = _status_mib("VmRSS")
    for _ in range(calls):
        fn()
    peak = _status_mib("VmHWM")
    return None if before is None or peak is None else round(max(peak - before, 0.0), 1)


def count_flops(net, x) -> int:
    """FLOPs of one forward (``FlopCounterMode``: 2 per multiply-add of convs and matmuls)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        net(x)
    return int(counter.get_total_flops())


def matmul_tflops(size: int = 2048, repeats: int = 5) -> float:
    """Measured float32 matrix-product throughput of this process's threads (TFLOP/s, best of ``repeats``)."""
    import torch

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=g), torch.randn(size, size, generator=g)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e12


# ------------------------------------------------------------------ timing


def time_round_robin(cases: dict[str, callable], warmup: int, iters: int, progress,
                     load=None) -> dict[str, dict[str, list[float]]]:
    """Seconds per call for each case, calls interleaved with a rotating start: ``{"idle": {case: [s]}}``,
    plus ``"loaded"`` when ``load`` (a :class:`flowclas_ros.loadgen.CompetingLoad`) is given:
    each iteration then has an idle and a loaded pass, alternating which comes first."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    names = list(cases)
    phases = ["idle"] if load is None else ["idle", "loaded"]
    times: dict[str, dict[str, list[float]]] = {p: {n: [] for n in names} for p in phases}
    for i in range(iters):
        for phase in (phases if i % 2 == 0 else phases[::-1]):
            if load is not None:
                load.resume() if phase == "loaded" else load.pause()
            for n in names[i % len(names):] + names[: i % len(names)]:
                start = time.perf_counter()
                cases[n]()
                times[phase][n].append(time.perf_counter() - start)
        progress.update(1)
    if load is not None:
        load.pause()
    return times


def summarise(seconds: list[float], batch: int) -> dict:
    """Percentiles (ms), mean and throughput (frames/s at the median) of timed calls on batches of ``batch``."""
    import numpy as np

    ms = np.asarray(seconds) * 1000
    p50, p90, p99 = (float(np.percentile(ms, q)) for q in (50, 90, 99))
    return {
        "p50_ms": round(p50, 2), "p90_ms": round(p90, 2), "p99_ms": round(p99, 2),
        "mean_ms": round(float(ms.mean()), 2), "throughput_fps": round(batch * 1000 / p50, 2),
    }


def timing_fields(times: dict[str, dict[str, list[float]]], case: str, batch: int) -> dict:
    """Idle statistics, plus ``loaded_*`` and ``loaded_over_idle`` when there was a loaded phase."""
    row = summarise(times["idle"][case], batch)
    if "loaded" in times:
        loaded = summarise(times["loaded"][case], batch)
        row.update({f"loaded_{k}": loaded[k] for k in ("p50_ms", "p90_ms", "p99_ms", "throughput_fps")})
        row["loaded_over_idle"] = round(loaded["p50_ms"] / row["p50_ms"], 2)
    return row


# ------------------------------------------------------------------ the run


def _image_message(typestore, frame):
    t = typestore.types
    header = t["std_msgs/msg/Header"](stamp=t["builtin_interfaces/msg/Time"](sec=1, nanosec=0), frame_id="camera")
    h, w = frame.shape[:2]
    return t["sensor_msgs/msg/Image"](header=header, height=h, width=w, encoding="rgb8", is_bigendian=0,
                                      step=w * 3, data=frame.reshape(-1))


def bench_resolution(args, net, config, specs, batches, size, progress, load=None) -> tuple[list[dict], list[dict]]:
    """Rows and skipped entries for one resolution."""
    import torch

    from flowclas_ros.deploy.errors import ArtefactError, UnsafeArtefactError
    from flowclas_ros.deploy.shapes import InputShape
    from flowclas_ros.runtime.backends import BackendError, TorchBackend, create_backend

    h, w = size
    shape = InputShape((1, 1, batches[-1]), (h,) * 3, (w,) * 3)
    backends, loaded, skipped = {}, {}, []
    for spec in specs:
        before = _status_mib("VmRSS")
        try:
            if spec.name == "torch":
                backends[spec.label] = TorchBackend(net, args.device, spec.precision)
            else:
                backends[spec.label] = create_backend(spec.name, args.model, args.device, spec.precision, shape=shape,
                                                      net=net, threads=args.threads, calibration=args.calibration)
            after = _status_mib("VmRSS")
            loaded[spec.label] = None if before is None or after is None else round(after - before, 1)
        except UnsafeArtefactError:
            raise  # an altered artefact is an error, never a skipped row
        except (BackendError, ArtefactError, ImportError) as exc:
            skipped.append({"backend": spec.label, "resolution": f"{h}x{w}", "reason": str(exc)})
            log.warning("skipped %s at %dx%d: %s", spec.label, h, w, exc)
    if not backends:
        return [], skipped
    precision = {s.label: s.precision for s in specs}
    generator = torch.Generator().manual_seed(0)
    flops = count_flops(net, torch.randn(1, 3, h, w, generator=generator).to(args.device))
    rows = []
    mean, std = (torch.tensor(v, device=args.device).view(1, 3, 1, 1) for v in (config.mean, config.std))
    for batch in batches:
        # camera-like input: a uint8 RGB frame normalised like the detector does (not randn,
        # whose tails reach value ranges a camera never produces)
        frames = torch.randint(0, 256, (batch, 3, h, w), generator=generator).to(args.device)
        x = (frames.float() / 255 - mean) / std
        reference = net(x)
        cases = {n: (lambda b=b: b(x)) for n, b in backends.items()}
        memory = {n: peak_rss_growth(fn) for n, fn in cases.items()}  # first calls: workspaces get allocated
        times = time_round_robin(cases, args.warmup, args.iters, progress, load)
        for n, b in backends.items():
            diff = float((b(x).float().cpu() - reference.float().cpu()).abs().max())
            rows.append({"kind": "model", "backend": n, "precision": precision[n], "resolution": f"{h}x{w}",
                         "batch": batch, **timing_fields(times, n, batch), "peak_rss_mib": memory[n],
                         "load_rss_mib": loaded[n], "max_abs_diff_vs_torch": diff, "flops_per_frame": flops})
    if not args.no_pipeline:
        rows += bench_pipeline(args, config, backends, size, progress, load, precision)
    return rows, skipped


def _out_of_memory(exc: BaseException) -> bool:
    """Whether torch (CPU or CUDA) or Python ran out of memory: a size too large for this machine."""
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or "out of memory" in text or "tried to allocate" in text


def bench_pipeline(args, config, backends, size, progress, load=None, precision=None) -> list[dict]:
    """Whole-frame rows: FramePipeline on a rosbags sensor_msgs/Image, batch 1."""
    import numpy as np
    from rosbags.typesys import Stores, get_typestore

    from flowclas_ros.runtime.detector import Detector
    from flowclas_ros.runtime.messages import rosbags_factory
    from flowclas_ros.runtime.pipeline import FramePipeline

    typestore = get_typestore(Stores.ROS2_HUMBLE)
    factory = rosbags_factory(typestore)
    h, w = size
    frame = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    msg = _image_message(typestore, frame)
    pipelines = {}
    for name, backend in backends.items():
        detector = Detector(None, device=args.device, backend=backend, config=config)
        detector.input_size = size  # the model rows' resolution: no resize, only the frame path
        pipelines[name] = FramePipeline(detector, factory)
    stages: dict[str, list[tuple[bool, dict]]] = {n: [] for n in pipelines}

    def case(name: str):
        def process():
            stages[name].append((load is not None and load.running, pipelines[name].process(msg).timings))
        return process

    cases = {n: case(n) for n in pipelines}
    memory = {n: peak_rss_growth(fn) for n, fn in cases.items()}
    times = time_round_robin(cases, args.warmup, args.iters, progress, load)
    rows = []
    for n in cases:
        timed = [t for busy, t in stages[n][-len(times) * args.iters:] if not busy]  # idle calls' stages
        median = {k: round(float(np.median([t[k] for t in timed])) * 1000, 2) for k in timed[0]}
        rows.append({"kind": "pipeline", "backend": n, "precision": (precision or {}).get(n, "fp32"),
                     "resolution": f"{h}x{w}", "batch": 1, **timing_fields(times, n, 1), "peak_rss_mib": memory[n],
                     "stage_p50_ms": median})
    return rows


def add_ratios(rows: list[dict], peak_tflops: float | None) -> None:
    """Speed-up over eager torch, pipeline / model, and the FLOP floor, in place."""
    index = {(r["kind"], r["backend"], r["resolution"], r["batch"]): r for r in rows}
    for r in rows:
        torch_row = index.get((r["kind"], "torch", r["resolution"], r["batch"]))
        r["speedup_vs_torch"] = round(torch_row["p50_ms"] / r["p50_ms"], 2) if torch_row else None
        if r["kind"] == "pipeline":
            model = index.get(("model", r["backend"], r["resolution"], 1))
            r["pipeline_over_model"] = round(r["p50_ms"] / model["p50_ms"], 3) if model else None
        elif r.get("flops_per_frame"):
            per_frame_ms = r["p50_ms"] / r["batch"]
            r["achieved_tflops"] = float(f"{r['flops_per_frame'] / (per_frame_ms / 1000) / 1e12:.4g}")
            if peak_tflops:
                r["floor_ms_per_frame"] = float(f"{r['flops_per_frame'] / (peak_tflops * 1e12) * 1000:.4g}")
                r["p50_over_floor"] = round(per_frame_ms / r["floor_ms_per_frame"], 1)


def summary(rows: list[dict]) -> list[dict]:
    """Per backend and resolution: batch-1 latency idle/loaded, x floor, throughput at batch 1 and the best batch, memory."""
    out = []
    for key in dict.fromkeys((r["backend"], r["resolution"]) for r in rows if r["kind"] == "model"):
        model = [r for r in rows if r["kind"] == "model" and (r["backend"], r["resolution"]) == key]
        one = next((r for r in model if r["batch"] == 1), model[0])
        best = max(model, key=lambda r: r["throughput_fps"])
        pipeline = next((r for r in rows if r["kind"] == "pipeline" and (r["backend"], r["resolution"]) == key), {})
        out.append({
            "backend": key[0], "resolution": key[1], "batch": one["batch"], "p50_ms": one["p50_ms"],
            "p99_ms": one["p99_ms"], "loaded_p50_ms": one.get("loaded_p50_ms"), "loaded_p99_ms": one.get("loaded_p99_ms"),
            "loaded_over_idle": one.get("loaded_over_idle"), "pipeline_p50_ms": pipeline.get("p50_ms"),
            "pipeline_loaded_over_idle": pipeline.get("loaded_over_idle"), "p50_over_floor": one.get("p50_over_floor"),
            "throughput_fps": one["throughput_fps"], "best_batch": best["batch"], "best_throughput_fps": best["throughput_fps"],
            "peak_rss_mib": max((r["peak_rss_mib"] for r in model if r["peak_rss_mib"] is not None), default=None),
        })
    return out


COLUMNS = [
    ("kind", "kind"), ("backend", "backend"), ("resolution", "HxW"), ("batch", "batch"),
    ("p50_ms", "p50 ms"), ("p90_ms", "p90 ms"), ("p99_ms", "p99 ms"), ("throughput_fps", "frames/s"),
    ("loaded_p50_ms", "loaded p50 ms"), ("loaded_p99_ms", "loaded p99 ms"), ("loaded_over_idle", "loaded/idle"),
    ("speedup_vs_torch", "x eager"), ("pipeline_over_model", "pipeline/model"),
    ("max_abs_diff_vs_torch", "max abs diff"), ("load_rss_mib", "load MiB"), ("peak_rss_mib", "peak MiB"),
    ("floor_ms_per_frame", "floor ms"), ("p50_over_floor", "x floor"),
]
SUMMARY_COLUMNS = [
    ("backend", "backend"), ("resolution", "HxW"), ("p50_ms", "p50 ms (b1)"), ("p99_ms", "p99 ms"),
    ("loaded_p50_ms", "loaded p50 ms"), ("loaded_p99_ms", "loaded p99 ms"), ("loaded_over_idle", "loaded/idle"),
    ("pipeline_loaded_over_idle", "pipeline loaded/idle"), ("p50_over_floor", "x floor"),
    ("throughput_fps", "frames/s b1"), ("best_batch", "best batch"), ("best_throughput_fps", "frames/s best"),
    ("peak_rss_mib", "peak MiB"),
]


def _table(items: list[dict], columns: list[tuple[str, str]]) -> list[str]:
    present = [(k, t) for k, t in columns if any(r.get(k) is not None for r in items)]
    lines = ["| " + " | ".join(title for _, title in present) + " |", "|" + " --- |" * len(present)]
    for r in items:
        cells = []
        for key, _ in present:
            value = r.get(key)
            cells.append("" if value is None else (f"{value:.1e}" if key == "max_abs_diff_vs_torch" else str(value)))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(report: dict) -> str:
    """The report as markdown tables (summary, then every row) with its machine and versions."""
    m, settings = report["machine"], report["settings"]
    load = settings.get("load")
    peak = settings.get("peak_tflops")
    lines = [
        "# flowclas bench", "",
        f"`{report['command']}`", "",
        f"Machine: {m['cpu']}, {m['usable_cores']} usable cores, torch threads {m['torch_threads']} "
        f"(OMP_WAIT_POLICY {m.get('omp_wait_policy', 'unset')}), GPU {m['gpu'] or 'none'}, load average "
        f"{m['load_average']}; {m['os']}, Python {m['python']}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".",
        f"Model: {report['model']['encoder']} layers {report['model']['layers']}, flow steps "
        f"{report['model']['flow_steps']}; GFLOPs per frame: "
        + ", ".join(f"{k}: {v / 1e9:.2f}" for k, v in report["flops_per_frame"].items()) + ".",
        f"Warm-up {settings['warmup']}, {settings['iters']} timed calls per case"
        + (" idle and as many loaded" if load else "") + ", backends interleaved round-robin"
        + (f"; load: {load['description']}" if load else "") + ". "
        + (f"Floor: FLOPs / {peak} TFLOP/s ({settings.get('peak_source', 'given')}). " if peak else "")
        + "Memory: host RSS growth on load and peak over the first calls (MiB).",
        "", "## Summary", "",
        *_table(report.get("summary", []), SUMMARY_COLUMNS),
        "", "## All rows", "",
        *_table(report["results"], COLUMNS),
    ]
    if report["skipped"]:
        lines.append("")
    for s in report["skipped"]:
        lines.append(f"- skipped {s['backend']} at {s['resolution']}: {s['reason']}")
    return "\n".join(lines) + "\n"


def command_line(args: BenchOptions, specs: list[Spec], sizes: list, batches: list[int]) -> str:
    """The command that reproduces this run."""
    text = (f"flowclas bench --model {args.model} --backends {','.join(s.label for s in specs)} "
            f"--resolutions {','.join(f'{h}x{w}' for h, w in sizes)} --batch-sizes {','.join(map(str, batches))} "
            f"--warmup {args.warmup} --iters {args.iters}")
    for flag, value in (("--peak-tflops", args.peak_tflops), ("--threads", args.threads),
                        ("--load-threads", args.load_threads if args.load else None), ("--calibration", args.calibration)):
        text += f" {flag} {value}" if value else ""
    return (text + (" --load" if args.load else "") + (" --no-pipeline" if args.no_pipeline else "")
            + (f" --device {args.device}" if args.device != "cpu" else ""))


def run_bench(args: BenchOptions) -> dict:
    """Time the bundle's backends; writes ``bench.json`` and ``bench.md`` into ``args.output``."""
    from contextlib import nullcontext

    import torch
    from tqdm import tqdm

    from flowclas_ros.loadgen import CompetingLoad
    from flowclas_ros.model.bundle import load_bundle
    from flowclas_ros.runtime.threads import configure_threads

    specs, batches = _options(args)
    net = load_bundle(args.model, device=args.device)
    config = net.config
    sizes = ([parse_size(s) for s in _csv(args.resolutions, "resolutions")] if args.resolutions
             else [tuple(config.encoder.input_size)])
    threads = configure_threads(args.threads)
    peak, peak_source = args.peak_tflops, "given"
    if peak is None and args.device == "cpu":
        peak, peak_source = float(f"{matmul_tflops():.4g}"), "measured: float32 torch.mm 2048x2048 on these threads"
    out = Path(args.output)
    claim_folder(out, ".flowclas-bench")
    rows, skipped, flops = [], [], {}
    rounds = len(sizes) * args.iters * (len(batches) + (0 if args.no_pipeline else 1))
    load = CompetingLoad(args.load_threads or None) if args.load else None
    with torch.inference_mode(), tqdm(total=rounds, desc="bench", unit="round") as progress, (load or nullcontext()):
        if load is not None:
            load.pause()
        for size in sizes:
            if getattr(net.encoder, "input_size", None) is not None and size != tuple(config.encoder.input_size):
                skipped.append({"backend": "all", "resolution": f"{size[0]}x{size[1]}",
                                "reason": f"{config.encoder.name} runs only at its input size {config.encoder.input_size}"})
                continue
            try:
                new_rows, new_skipped = bench_resolution(args, net, config, specs, batches, size, progress, load)
            except (MemoryError, RuntimeError) as exc:
                if not _out_of_memory(exc):
                    raise
                reason = f"out of memory at {size[0]}x{size[1]}: {str(exc).strip().splitlines()[0][:160]}"
                log.warning("skipped %s", reason)
                new_rows, new_skipped = [], [{"backend": "all", "resolution": f"{size[0]}x{size[1]}", "reason": reason}]
            rows += new_rows
            skipped += new_skipped
            if new_rows:
                flops[f"{size[0]}x{size[1]}"] = new_rows[0]["flops_per_frame"]
    if not rows:
        raise UserError("no backend could run: " + "; ".join(s["reason"] for s in skipped))
    add_ratios(rows, peak)
    load_info = None
    if load is not None:
        load_info = {"threads": load.threads or "torch default (one per usable core)",
                     "description": f"another torch process (convolutions, {load.threads or 'all'} threads, "
                                    "default busy-waiting OpenMP) beside the benchmark"}
    report = {
        "command": command_line(args, specs, sizes, batches),
        "machine": machine_info(),
        "model": {"bundle": str(args.model), "encoder": config.encoder.name, "layers": list(config.encoder.layers),
                  "input_size": list(config.encoder.input_size), "flow_steps": config.flow.steps},
        "settings": {"backends": [s.label for s in specs], "batch_sizes": batches, "warmup": args.warmup,
                     "iters": args.iters, "peak_tflops": peak, "peak_source": peak_source if peak else None,
                     "threads": threads, "device": args.device, "load": load_info},
        "flops_per_frame": flops,
        "summary": summary(rows),
        "results": rows,
        "skipped": skipped,
    }
    write_text(out / "bench.json", json.dumps(report, indent=2) + "\n")
    write_text(out / "bench.md", markdown(report))
    return report
