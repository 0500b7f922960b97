"""Shared fixtures: small configs and networks that build in milliseconds."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

# Commands run in-process (main([...])) configure torch's threads from OMP_NUM_THREADS when
# set (flowclas_ros.runtime.threads); keep the test process on one thread after them too.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from flowclas_ros.model import EncoderConfig, FlowCLASNet, FlowConfig, ModelConfig

# Tiny tensors run fastest on one thread; two threads on a busy 2-core CI machine make them
# several times slower.
torch.set_num_threads(1)


def small_config(**changes) -> ModelConfig:
    """EfficientNet-Lite0 with random weights, two scales, a short flow: fast to build and run."""
    fields = dict(
        encoder=EncoderConfig(name="efficientnet_lite0", layers=[2, 4], weights=None, input_size=(64, 96)),
        flow=FlowConfig(steps=2, hidden_ratio=0.5),
        projection_dim=16,
    )
    fields.update(changes)
    return ModelConfig(**fields)


@pytest.fixture(scope="module", autouse=True)
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every test module records the artefacts it builds in its own folder, never the user's
    ``~/.local/state`` (flowclas_ros.deploy.trust)."""
    from flowclas_ros.deploy import trust

    folder = tmp_path_factory.mktemp("state")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(trust.STATE_ENV, str(folder))
        yield folder


@pytest.fixture
def small_net() -> FlowCLASNet:
    torch.manual_seed(0)
    return randomize_head(FlowCLASNet(small_config())).eval()


def randomize_head(net: FlowCLASNet, scale: float = 0.05) -> FlowCLASNet:
    """Give every head tensor small random values so the flow is not the identity."""
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if not name.startswith("encoder."):
                p.add_(torch.randn(p.shape, generator=generator) * scale)
        for module in net.modules():
            if hasattr(module, "initialized"):
                module.initialized.fill_(True)
    return net


@pytest.fixture
def warned():
    """The messages of warnings the flowclas_ros loggers emit while the test runs (whether or
    not a command configured them to stop propagating to the root logger)."""
    messages: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    logger = logging.getLogger("flowclas_ros")
    logger.addHandler(handler)
    yield messages
    logger.removeHandler(handler)
