"""A competing CPU load: another process running torch on every core, as on a busy robot computer.

``flowclas bench --load`` and ``benchmarks/contention.py`` start one beside what they
measure. The child is a plain torch process with torch's defaults (one OpenMP thread per
usable core, libgomp's default busy-waiting): the kind of neighbour a perception node
meets. Our own thread settings are removed from its environment so that it behaves like
a foreign process, not like one of ours.

    with CompetingLoad() as load:
        load.pause()     # SIGSTOP: the machine is idle again (the process keeps its memory)
        load.resume()    # SIGCONT

Run as ``python -m flowclas_ros.loadgen`` it is the load itself (convolutions in a loop
until killed).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from flowclas_ros.errors import FlowclasError

# Variables our entry points set (flowclas_ros.runtime.threads); a foreign process has none.
_OURS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "FLOWCLAS_THREADS")


class LoadError(FlowclasError):
    """The competing process could not be started or died."""


class CompetingLoad:
    """A child process keeping every core busy with torch convolutions (``threads``: its
    OpenMP threads; None = torch's default, one per usable core)."""

    def __init__(self, threads: int | None = None, size: int = 160, channels: int = 64) -> None:
        self.threads, self.size, self.channels = threads, size, channels
        self.process: subprocess.Popen | None = None
        self.running = False

    def start(self) -> "CompetingLoad":
        """Start the process and wait until it computes (LoadError when it does not come up)."""
        env = {k: v for k, v in os.environ.items() if k not in _OURS}
        if self.threads:
            env["OMP_NUM_THREADS"] = str(self.threads)
        command = [sys.executable, "-m", "flowclas_ros.loadgen", "--size", str(self.size), "--channels", str(self.channels)]
        self.process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True)
        line = self.process.stdout.readline() if self.process.stdout else ""
        if not line.startswith("ready"):
            self.stop()
            raise LoadError("the competing load process did not start (python -m flowclas_ros.loadgen)")
        self.running = True
        return self

    def _signal(self, sig: int) -> None:
        if self.process is None or self.process.poll() is not None:
            raise LoadError("the competing load process is not running")
        self.process.send_signal(sig)

    def pause(self) -> None:
        """Stop the load (SIGSTOP); it keeps its memory and resumes where it was."""
        if self.running:
            self._signal(signal.SIGSTOP)
            self.running = False

    def resume(self, settle: float = 0.3) -> None:
        """Continue the load (SIGCONT) and give it ``settle`` seconds to occupy the cores."""
        if not self.running:
            self._signal(signal.SIGCONT)
            self.running = True
            time.sleep(settle)

    def stop(self) -> None:
        """End the process (also when paused)."""
        p, self.process, self.running = self.process, None, False
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGCONT)
        p.terminate()
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()

    def __enter__(self) -> "CompetingLoad":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _serve(size: int, channels: int) -> None:
    import torch

    net = torch.nn.Sequential(*[torch.nn.Conv2d(channels, channels, 3, padding=1) for _ in range(4)]).eval()
    x = torch.randn(1, channels, size, size * 4 // 3)
    with torch.inference_mode():
        net(x)
        print("ready", torch.get_num_threads(), flush=True)
        while True:
            net(x)


def main(argv: list[str] | None = None) -> None:
    """``python -m flowclas_ros.loadgen``: convolutions on every core until killed."""
    parser = argparse.ArgumentParser(description="competing CPU load (torch convolutions in a loop)")
    parser.add_argument("--size", type=int, default=160, help="feature map height (width is 4/3 of it)")
    parser.add_argument("--channels", type=int, default=64)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    _serve(args.size, args.channels)


if __name__ == "__main__":
    main()
