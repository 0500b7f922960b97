"""The training loop: one process or several (DistributedDataParallel, gloo on CPU, nccl on GPU).

Plain PyTorch rather than a framework, because two guarantees are core to us and easiest to
keep when we own the loop: a resumed run reproduces an uninterrupted one bit for bit (every
batch is a pure function of seed and step, the schedule a pure function of step), and N
processes on a global batch reproduce one process on the same batch (ActNorm initialises
from all-reduced statistics, gradients are averaged by DDP).

Layout of a run directory (see :mod:`flowclas_ros.training.run_folder`)::

    RUN/.flowclas-run             marks the folder as a run's: only such a folder is resumed or cleared
    RUN/config.yaml               the resolved recipe; resuming with another one is refused
    RUN/checkpoints/last.pt       periodic checkpoint (atomic write), resumed from
    RUN/checkpoints/best.pt       lowest validation FPR95 so far
    RUN/logs/train.csv, val.csv   losses, learning rate, validation metrics
    RUN/model/                    the bundle, with the calibrated threshold and metrics
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from flowclas_ros.errors import FlowclasError, UserError
from flowclas_ros.metrics import BinnedMetrics, as_percentages
from flowclas_ros.model import FlowCLASNet, save_bundle
from flowclas_ros.model.network import pad_labels
from flowclas_ros.runtime.threads import configure_threads, configured_threads
from flowclas_ros.training.config import TrainConfig
from flowclas_ros.training.data import PastedSamples, StepBatches, build_samples, to_tensor
from flowclas_ros.training.datasets import random_crop
from flowclas_ros.training.objectives import compute_loss
from flowclas_ros.training.run_folder import (
    CHECKPOINT_VERSION,
    START_OVER,
    CsvLog,
    load_checkpoint,
    open_run,
    restore,
    save_checkpoint,
)

log = logging.getLogger(__name__)

VAL_EPOCH = 1_000_000  # validation samples use their own fixed epoch: same outliers every time


@dataclass
class Context:
    """Where this process runs: rank, world size, device."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """True on the process that writes files and logs."""
        return self.rank == 0


class LossModule(nn.Module):
    """Wraps the network so DDP sees the whole loss computation as one forward."""

    def __init__(self, net: FlowCLASNet, config: TrainConfig) -> None:
        super().__init__()
        self.net = net
        self.objective = config.objective
        self.multiple = net.encoder.pad_multiple
        # a CPU encodes small batches much faster per image (benchmarks/README.md); a GPU
        # wants the whole batch at once
        self.chunk = 2 if next(net.parameters()).device.type == "cpu" else 0

    def forward(self, batch: dict[str, Tensor], generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        """Total loss and its parts for one batch."""
        m, net = self.multiple, self.net
        x_out, y_out, y_seg = batch.get("x_out"), batch.get("y_out"), batch.get("y_seg")
        return compute_loss(
            net,
            net.pad(batch["x_mix"]),
            pad_labels(batch["y_mix"], m),
            None if x_out is None else net.pad(x_out),
            None if y_out is None else pad_labels(y_out, m),
            self.objective,
            generator,
            self.chunk,
            None if y_seg is None else pad_labels(y_seg, m),
        )


def lr_factor(step: int, total: int, warmup: float) -> float:
    """One-cycle schedule: linear warm-up over ``warmup * total`` steps, then cosine decay to 0."""
    warm = int(round(warmup * total))
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


NO_DECAY_MARKERS = ("bias", "norm", "flow")


def decays(name: str) -> bool:
    """The authors' rule: no weight decay for a parameter whose name contains ``bias``,
    ``norm`` or ``flow``; every other trainable parameter decays (projection and
    segmentation heads, including the BatchNorm weight of the latter, and the base
    distributions' ``mu`` and log-scale). Our names are chosen so the rule sorts every
    tensor as it sorts the authors' counterpart (tested through the checkpoint key map)."""
    return not any(marker in name for marker in NO_DECAY_MARKERS)


def parameter_groups(net: FlowCLASNet, weight_decay: float) -> list[dict]:
    """AdamW groups: ``weight_decay`` where :func:`decays`, 0 elsewhere (frozen encoder left out)."""
    decay, rest = [], []
    for name, p in net.named_parameters():
        if not p.requires_grad:
            continue
        (decay if decays(name) else rest).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def autocast(ctx: Context, precision: str):
    """Autocast context for ``fp32``/``bf16``/``fp16`` (``auto``: bf16 on CUDA when supported)."""
    if precision == "auto":
        precision = "bf16" if ctx.device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp32":
        return nullcontext()
    if precision == "fp16" and ctx.device.type != "cuda":
        raise UserError("optim.precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(ctx.device.type, dtype=dtype)


def _tensorboard(directory: Path, start: int):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    # a resumed run drops the events logged after its checkpoint, as it logs those steps again
    return SummaryWriter(str(directory), purge_step=start + 1 if start else None)


def _due(done: int, every: int) -> bool:
    """Whether a periodic hook runs after step ``done`` (``every`` <= 0: only after the last step)."""
    return every > 0 and done % every == 0


def _move(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


@torch.no_grad()
def data_init(net: FlowCLASNet, samples: PastedSamples, config: TrainConfig, ctx: Context) -> None:
    """Initialise whitening and ActNorms from ``optim.data_init`` plain inlier training crops
    (0: the authors' way, ActNorm from the first training batch)."""
    count = min(config.optim.data_init, len(samples))
    if count <= 0:
        return
    import numpy as np

    rng = np.random.default_rng([config.run.seed, 11])
    crops = []
    for i in rng.permutation(len(samples))[:count]:
        image, labels = samples.inliers[int(samples.indices[i])][:2]
        image, _ = random_crop(image, labels, samples.size, rng)
        crops.append(to_tensor(image, config.model.mean, config.model.std))
    x = net.pad(torch.stack(crops).to(ctx.device))
    net.initialize_from_data(x, chunk=2 if ctx.device.type == "cpu" else 0)


@torch.no_grad()
def validate(net: FlowCLASNet, samples: PastedSamples, ctx: Context, config: TrainConfig) -> BinnedMetrics:
    """Binned pixel metrics of the score map on this process's share of the validation set,
    all-reduced over processes."""
    metrics = BinnedMetrics(bins=config.run.bins)
    net.eval()
    keys = [(VAL_EPOCH, i) for i in range(ctx.rank, len(samples), ctx.world)]
    share = max(1, config.optim.batch_size // ctx.world)
    for start in range(0, len(keys), share):
        items = [samples[k] for k in keys[start : start + share]]
        x = torch.stack([it["x_mix"] for it in items]).to(ctx.device)
        with autocast(ctx, config.optim.precision):
            score = net(x).float()
        metrics.update(score.cpu(), torch.stack([it["y_mix"] for it in items]))
    if ctx.world > 1:
        state = metrics.state().to(ctx.device)
        dist.all_reduce(state)
        metrics.load_state(state.cpu())
    net.train()
    return metrics


@dataclass
class _Run:
    """The moving parts of one training run, shared by the Trainer's phases."""

    net: FlowCLASNet
    train_set: PastedSamples
    val_set: PastedSamples
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    train_log: CsvLog | None
    val_log: CsvLog | None
    board: Any
    model: nn.Module | None = None
    start: int = 0
    best: dict = field(default_factory=lambda: {"fpr95": math.inf, "step": -1})
    bar: Any = None
    tic: float = 0.0


class Trainer:
    """Trains one recipe into ``run_dir``; resumes from ``checkpoints/last.pt`` when present."""

    def __init__(self, config: TrainConfig, run_dir: str | Path, ctx: Context | None = None,
                 progress: bool = True, on_step: Callable[[int], None] | None = None) -> None:
        self.config, self.ctx = config, ctx or Context()
        self.run_dir = Path(run_dir)
        self.progress = progress and self.ctx.main
        self.on_step = on_step
        self.checkpoints = self.run_dir / "checkpoints"
        self.logs = self.run_dir / "logs"

    def run(self) -> Path:
        """Train to ``optim.steps``, then write and return the bundle directory."""
        run = self._setup()
        self._resume(run)
        loader = self._loader(run)
        cfg = self.config
        if run.start == 0 and cfg.run.validate_init and cfg.optim.data_init > 0 and len(run.val_set):
            # the data-initialised model competes for the best checkpoint too
            run.best = self._validate(run.net, run.val_set, 0, run.best, run.val_log, run.board)
        run.bar = self._bar(run.start)
        try:
            for step, batch in enumerate(loader, start=run.start):
                loss, parts = self._step(run, step, batch)
                self._after_step(run, step + 1, loss, parts)
        finally:
            if run.bar:
                run.bar.close()
            if run.board:
                run.board.close()
        return self._finish(run.net, run.val_set, run.best)

    def _setup(self) -> _Run:
        """Folders, the network, data, optimiser, schedule and logs of a fresh run."""
        cfg, ctx = self.config, self.ctx
        if ctx.main:
            open_run(cfg, self.run_dir)
        if ctx.world > 1:
            dist.barrier()  # the folder is claimed (and an abandoned attempt cleared) before anyone reads it
        torch.manual_seed(cfg.run.seed)
        net = FlowCLASNet(cfg.model).to(ctx.device).train()
        train_set, val_set = build_samples(cfg)
        optimizer = torch.optim.AdamW(parameter_groups(net, cfg.optim.weight_decay), lr=cfg.optim.lr, eps=cfg.optim.eps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: lr_factor(s, cfg.optim.steps, cfg.optim.warmup)
        )
        main = ctx.main
        return _Run(
            net=net, train_set=train_set, val_set=val_set, optimizer=optimizer, scheduler=scheduler,
            train_log=CsvLog(self.logs / "train.csv",
                             ["step", "loss", "ml", "contrastive", "outlier_nll", "segmentation", "lr", "seconds"])
            if main else None,
            val_log=CsvLog(self.logs / "val.csv", ["step", "ap", "auprc_trapz", "fpr95", "auroc"]) if main else None,
            board=None,
        )

    def _resume(self, run: _Run) -> None:
        """Continue from ``checkpoints/last.pt`` when it exists; then wrap the loss for DDP."""
        cfg, ctx = self.config, self.ctx
        last = self.checkpoints / "last.pt"
        if last.exists():
            state = load_checkpoint(last)
            step, best = state.get("step"), state.get("best")
            if not (isinstance(step, int) and 0 <= step <= cfg.optim.steps and isinstance(best, dict)
                    and isinstance(best.get("fpr95"), float) and isinstance(best.get("step"), int)):
                raise UserError(f"{last} is not a checkpoint of this recipe's run (step {step!r} of "
                                f"{cfg.optim.steps}); {START_OVER}")
            restore(run.net, state["model"], last, "weights")
            restore(run.optimizer, state.get("optimizer"), last, "optimiser state")
            restore(run.scheduler, state.get("scheduler"), last, "schedule")
            run.start, run.best = step, dict(best)
            if ctx.main:
                log.info("resuming %s at step %d/%d", self.run_dir, run.start, cfg.optim.steps)
                for csv_log in (run.train_log, run.val_log):
                    if csv_log:
                        csv_log.keep_until(step)
        else:
            data_init(run.net, run.train_set, cfg, ctx)
        if ctx.main:
            run.board = _tensorboard(self.logs, run.start)
        run.model = LossModule(run.net, cfg)
        if ctx.world > 1:
            run.model = DistributedDataParallel(
                run.model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None,
                find_unused_parameters=cfg.objective.name != "flowclas",
            )
        run.tic = time.perf_counter()

    def _loader(self, run: _Run) -> DataLoader:
        """This process's share of the remaining steps' batches."""
        cfg, ctx = self.config, self.ctx
        return DataLoader(
            run.train_set,
            batch_sampler=StepBatches(len(run.train_set), cfg.optim.batch_size, cfg.run.seed, run.start, cfg.optim.steps,
                                      ctx.rank, ctx.world),
            num_workers=cfg.data.workers,
            persistent_workers=cfg.data.workers > 0,
        )

    def _step(self, run: _Run, step: int, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """One optimiser step; returns the loss and its parts."""
        cfg, ctx = self.config, self.ctx
        generator = torch.Generator().manual_seed(cfg.run.seed * 1_000_003 + step * 101 + ctx.rank)
        with autocast(ctx, cfg.optim.precision):
            loss, parts = run.model(_move(batch, ctx.device), generator)
        if not torch.isfinite(loss):
            raise UserError(f"the loss is {float(loss)} at step {step}; lower optim.lr or check the data")
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_(run.net.parameters(), cfg.optim.grad_clip)
        run.optimizer.step()
        run.scheduler.step()
        return loss, parts

    def _after_step(self, run: _Run, done: int, loss: Tensor, parts: dict[str, float]) -> None:
        """Periodic hooks after step ``done``: log, progress, validate, checkpoint."""
        cfg = self.config
        last = done == cfg.optim.steps
        if _due(done, cfg.run.log_every) or last:
            row = {"step": done, **self._global_mean({"loss": float(loss.detach()), **parts}),
                   "lr": run.scheduler.get_last_lr()[0], "seconds": time.perf_counter() - run.tic}
            if run.train_log:
                run.train_log.write(row)
            if run.board:
                for k in ("loss", "ml", "contrastive", "outlier_nll", "segmentation", "lr"):
                    run.board.add_scalar(f"train/{k}", row[k], done)
        if run.bar:
            run.bar.set_postfix(loss=f"{float(loss.detach()):.4g}")
            run.bar.update(1)
        if len(run.val_set) and (_due(done, cfg.run.val_every) or last):
            run.best = self._validate(run.net, run.val_set, done, run.best, run.val_log, run.board)
        if _due(done, cfg.run.checkpoint_every) or last:
            self._checkpoint(self.checkpoints / "last.pt", run.net, run.optimizer, run.scheduler, done, run.best)
        if self.on_step:
            self.on_step(done)

    def _global_mean(self, values: dict[str, float]) -> dict[str, float]:
        """Average logged values over processes (each saw an equal share of the global batch)."""
        if self.ctx.world == 1:
            return values
        t = torch.tensor(list(values.values()), dtype=torch.float64, device=self.ctx.device)
        dist.all_reduce(t)
        return dict(zip(values, (t / self.ctx.world).tolist()))

    def _bar(self, start: int):
        if not self.progress:
            return None
        from tqdm import tqdm

        return tqdm(total=self.config.optim.steps, initial=start, desc="train", unit="step", dynamic_ncols=True)

    def _validate(self, net, val_set, step: int, best: dict, log: CsvLog | None, board) -> dict:
        metrics = validate(net, val_set, self.ctx, self.config)
        if not (metrics.num_anomaly and metrics.num_inlier):
            return best  # no pasted outliers to validate against (no outlier source)
        values = metrics.compute()
        if log:
            log.write({"step": step, **as_percentages(values)})
            if board:
                for k, v in as_percentages(values).items():
                    board.add_scalar(f"val/{k}", v, step)
        if values["fpr95"] < best["fpr95"]:
            best = {"fpr95": values["fpr95"], "step": step}
            if self.ctx.main:
                save_checkpoint({"version": CHECKPOINT_VERSION, "model": net.state_dict(), "step": step},
                                self.checkpoints / "best.pt")
        return best

    def _checkpoint(self, path: Path, net, optimizer, scheduler, step: int, best: dict) -> None:
        if self.ctx.main:
            save_checkpoint({
                "version": CHECKPOINT_VERSION, "model": net.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "step": step, "best": best,
            }, path)
        if self.ctx.world > 1:
            dist.barrier()

    def _finish(self, net: FlowCLASNet, val_set: PastedSamples, best: dict) -> Path:
        """Load the best weights, calibrate the threshold on validation inliers, write the bundle."""
        cfg = self.config
        best_path = self.checkpoints / "best.pt"
        if best_path.exists():
            restore(net, load_checkpoint(best_path)["model"], best_path, "weights")
        config = net.config
        config.training = {
            "dataset": cfg.data.dataset, "root": cfg.data.root, "outliers": cfg.data.outliers,
            "objective": cfg.objective.name, "steps": cfg.optim.steps, "batch_size": cfg.optim.batch_size,
            "best_step": best["step"], "devices": self.ctx.world,
        }
        if len(val_set):
            metrics = validate(net, val_set, self.ctx, cfg)
            config.threshold = float(metrics.threshold_at_fpr(cfg.run.calibrate_fpr))
            config.threshold_fpr = cfg.run.calibrate_fpr
            if metrics.num_anomaly:
                config.metrics = {"validation": as_percentages(metrics.compute())}
        bundle = self.run_dir / "model"
        if self.ctx.main:
            save_bundle(net.eval(), bundle)
        return bundle


def launching_process() -> bool:
    """False on the non-zero ranks of a torchrun group (rank 0 prepares the run folder)."""
    return int(os.environ.get("RANK", "0")) == 0


def _context_from_env(device: str | None) -> Context:
    """Join the process group described by torchrun-style environment variables."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    use_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    if use_cuda:
        torch.cuda.set_device(local)
        return Context(rank, world, torch.device("cuda", local))
    return Context(rank, world, torch.device("cpu"))


def _spawned(rank: int, world: int, port: int, config: TrainConfig, run_dir: str, device: str | None,
             threads: int, errors: Any) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    configure_threads(threads)
    ctx = _context_from_env(device)
    try:
        Trainer(config, run_dir, ctx).run()
    except (FlowclasError, OSError) as exc:  # the parent says it in one line
        errors.put(str(exc) if isinstance(exc, FlowclasError) else f"{exc.filename or ''} {exc.strerror or exc}".strip())
        sys.exit(1)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train(config: TrainConfig, run_dir: str | Path, device: str | None = None, progress: bool = True) -> Path:
    """Train a recipe; returns the bundle directory.

    Under torchrun (``RANK``/``WORLD_SIZE`` set) this process joins the group; otherwise
    ``run.devices`` > 1 spawns that many local processes, and 1 trains in this process.
    CPU threads: this process's (:func:`flowclas_ros.runtime.threads.configure_threads`),
    shared out between spawned processes.
    """
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        ctx = _context_from_env(device)
        try:
            return Trainer(config, run_dir, ctx, progress).run()
        finally:
            dist.destroy_process_group()
    if config.run.devices > 1:
        import torch.multiprocessing as mp

        open_run(config, run_dir)  # refuse an unusable folder here, not in a spawned process
        # the parent's threads shared out: N processes x all cores each would oversubscribe
        threads = max(1, configured_threads() // config.run.devices)
        errors = mp.get_context("spawn").SimpleQueue()
        try:
            mp.spawn(_spawned, args=(config.run.devices, _free_port(), config, str(run_dir), device, threads, errors),
                     nprocs=config.run.devices, join=True)
        except mp.ProcessExitedException:
            if errors.empty():
                raise
            raise UserError(errors.get()) from None
        return Path(run_dir) / "model"
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return Trainer(config, run_dir, Context(device=dev), progress).run()
