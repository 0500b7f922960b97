"""DINOv2 ViT/14 encoders (optionally with registers and Rein adapters) in plain torch.

Registered names: ``dinov2_vit{s,b,l,g}14`` and ``dinov2_vit{s,b,l,g}14_reg``.

Features are the patch tokens of the chosen blocks' outputs (no final LayerNorm), as
``B x C x H/14 x W/14`` maps. Only blocks up to ``max(config.layers)`` are built: weights
of later blocks in a file are accepted and discarded, as are the final ``norm`` and the
``mask_token`` (both unused for features). The position embedding is resized once, at
build time, for the configured (padded) input grid, so ``forward`` has no shape logic.

Weights files (auto-detected by key names):

* Meta torch-hub checkpoints (``dinov2_vits14_pretrain.pth`` style; chunked
  ``blocks.{chunk}.{i}.`` keys too), as ``.pth`` (read with ``weights_only=True``) or
  ``.safetensors``; keys may carry a ``backbone.`` prefix and sit under a
  ``state_dict`` entry (Rein/mmseg checkpoints).
* Hugging Face ``Dinov2Model`` / ``Dinov2WithRegistersModel`` safetensors (a file or a
  directory holding ``model.safetensors``); keys may carry a ``dinov2.`` or
  ``dinov2_with_registers.`` prefix (task models).

Rein adapters (``config.options["rein"]``) follow ``LoRAReins`` of the Rein repository
(w1oves/Rein, ``rein/models/backbones/reins.py``): after every block ``i`` all tokens but
the first (cls) token get ``scale * mlp_delta_f(attn[..., 1:] @ mlp_token2feat(T_i[1:]) + f)``
added, with ``T_i = A_i @ B_i`` and ``attn = softmax(f @ T_i^T / sqrt(C))`` over the
tokens. The query-linking layers (``transform``, ``merge``) only feed Rein's decode head
and are discarded.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowclas_ros.limits import REIN
from flowclas_ros.model.encoders.base import (
    Encoder,
    EncoderConfig,
    WeightsError,
    check_state_dict,
    read_weights,
    register_encoder,
)

__all__ = [
    "PATCH_SIZE",
    "VIT_SPECS",
    "DINOv2Encoder",
    "ReinAdapters",
    "ReinSettings",
    "VisionTransformer",
    "ViTSpec",
    "backbone_state",
    "build_dinov2",
    "check_dinov2",
    "load_backbone",
    "load_reins",
    "padded_size",
    "resize_pos_embed",
]

PATCH_SIZE = 14
NUM_REGISTERS = 4
LN_EPS = 1e-6


@dataclass(frozen=True)
class ViTSpec:
    """Architecture of one DINOv2 variant.

    Position-embedding resizing follows Meta's hub models: bicubic with a 0.1 offset in
    the scale factor for the plain models, bicubic with antialiasing and an exact output
    size for the register models.
    """

    embed_dim: int
    depth: int
    num_heads: int
    swiglu: bool = False
    registers: int = 0

    @property
    def interpolate_offset(self) -> float:
        """Offset added to the grid size when the position embedding is resized (DINOv2's convention)."""
        return 0.0 if self.registers else 0.1

    @property
    def interpolate_antialias(self) -> bool:
        """Whether the position embedding is resized with antialiasing."""
        return bool(self.registers)


_SIZES = {
    "s": ViTSpec(384, 12, 6),
    "b": ViTSpec(768, 12, 12),
    "l": ViTSpec(1024, 24, 16),
    "g": ViTSpec(1536, 40, 24, swiglu=True),
}
VIT_SPECS: dict[str, ViTSpec] = {
    **{f"dinov2_vit{k}14": spec for k, spec in _SIZES.items()},
    **{f"dinov2_vit{k}14_reg": replace(spec, registers=NUM_REGISTERS) for k, spec in _SIZES.items()},
}


# --------------------------------------------------------------------------- modules


class PatchEmbed(nn.Module):
    """Non-overlapping 14x14 patches projected to ``dim`` channels, as ``B x N x C`` tokens."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, dim, PATCH_SIZE, stride=PATCH_SIZE)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (q, k, v stacked in that order)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    """fc1 - GELU - fc2 feed-forward with 4x hidden width."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(4 * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLU(nn.Module):
    """Fused SwiGLU feed-forward of ViT-g: hidden width 4*dim*2/3 rounded up to 8."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        hidden = (int(4 * dim * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class LayerScale(nn.Module):
    """Per-channel learned scaling of a residual branch."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class Block(nn.Module):
    """Pre-norm transformer block with layer-scaled attention and feed-forward branches."""

    def __init__(self, spec: ViTSpec) -> None:
        super().__init__()
        dim = spec.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, spec.num_heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = SwiGLU(dim) if spec.swiglu else Mlp(dim)
        self.ls2 = LayerScale(dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """The first ``num_blocks`` blocks of a DINOv2 ViT for a fixed token grid.

    Parameter names follow Meta's checkpoints (``cls_token``, ``pos_embed``,
    ``blocks.{i}.attn.qkv.weight`` ...); ``pos_embed`` holds ``1 + gh*gw`` positions.
    """

    def __init__(self, spec: ViTSpec, num_blocks: int, grid: tuple[int, int]) -> None:
        super().__init__()
        dim = spec.embed_dim
        self.grid = grid
        self.num_prefix = 1 + spec.registers
        self.patch_embed = PatchEmbed(dim)
        self.cls_token = nn.Parameter(torch.empty(1, 1, dim).normal_(std=1e-6))
        self.pos_embed = nn.Parameter(
            nn.init.trunc_normal_(torch.empty(1, 1 + grid[0] * grid[1], dim), std=0.02)
        )
        self.register_tokens: nn.Parameter | None = (
            nn.Parameter(torch.empty(1, spec.registers, dim).normal_(std=1e-6)) if spec.registers else None
        )
        self.blocks = nn.ModuleList(Block(spec) for _ in range(num_blocks))

    def embed(self, x: Tensor) -> Tensor:
        """Image ``B x 3 x 14gh x 14gw`` -> tokens ``[cls, registers..., patches...]``."""
        patches = self.patch_embed(x)
        cls = self.cls_token.expand(patches.shape[0], -1, -1)
        tokens = torch.cat([cls, patches], dim=1) + self.pos_embed
        if self.register_tokens is None:
            return tokens
        registers = self.register_tokens.expand(patches.shape[0], -1, -1)
        return torch.cat([tokens[:, :1], registers, tokens[:, 1:]], dim=1)

    def patch_map(self, tokens: Tensor) -> Tensor:
        """Patch tokens ``B x (prefix + gh*gw) x C`` -> feature map ``B x C x gh x gw``."""
        patches = tokens[:, self.num_prefix :]
        return patches.transpose(1, 2).reshape(tokens.shape[0], -1, *self.grid)


@dataclass(frozen=True)
class ReinSettings:
    """Rein adapter settings: ``weights`` path (None = random init), token length, LoRA rank.

    ``zero_mlp_delta_f`` mirrors Rein's option of the same name: no learnable ``scale``
    (fixed 1.0) and a zero-initialised ``mlp_delta_f``.
    """

    weights: str | None
    token_length: int = 100
    rank: int = 16
    zero_mlp_delta_f: bool = False


class ReinAdapters(nn.Module):
    """LoRA-style Rein adapters: one refinement of the tokens after every backbone block.

    Parameter names follow Rein's ``LoRAReins`` (``learnable_tokens_a``,
    ``learnable_tokens_b``, ``scale``, ``mlp_token2feat``, ``mlp_delta_f``).
    """

    def __init__(self, num_layers: int, dim: int, settings: ReinSettings) -> None:
        super().__init__()
        length, rank = settings.token_length, settings.rank
        bound = math.sqrt(6.0 / (3 * PATCH_SIZE**2 + math.sqrt(dim * rank)))
        self.learnable_tokens_a = nn.Parameter(torch.empty(num_layers, length, rank).uniform_(-bound, bound))
        self.learnable_tokens_b = nn.Parameter(torch.empty(num_layers, rank, dim).uniform_(-bound, bound))
        self.mlp_token2feat = nn.Linear(dim, dim)
        self.mlp_delta_f = nn.Linear(dim, dim)
        if settings.zero_mlp_delta_f:
            nn.init.zeros_(self.mlp_delta_f.weight)
            nn.init.zeros_(self.mlp_delta_f.bias)
            self.register_buffer("scale", torch.tensor(1.0), persistent=False)
        else:
            self.scale = nn.Parameter(torch.tensor(1e-3))
        self.attn_scale = dim**-0.5

    def forward(self, x: Tensor, layer: int) -> Tensor:
        """Refine tokens ``B x N x C`` after block ``layer``; the first (cls) token is kept."""
        first, feats = x[:, :1], x[:, 1:]
        tokens = self.learnable_tokens_a[layer] @ self.learnable_tokens_b[layer]
        attn = torch.softmax(feats @ tokens.t() * self.attn_scale, dim=-1)
        delta = attn[..., 1:] @ self.mlp_token2feat(tokens[1:])
        delta = self.mlp_delta_f(delta + feats) * self.scale
        return torch.cat([first, feats + delta], dim=1)


class DINOv2Encoder(Encoder):
    """Frozen DINOv2 ViT/14 (optionally with Rein adapters) returning patch-token maps.

    Must be called with images of exactly ``input_size`` (already padded to 14).
    """

    def __init__(
        self,
        spec: ViTSpec,
        layers: list[int],
        input_size: tuple[int, int],
        rein: ReinSettings | None = None,
    ) -> None:
        super().__init__()
        grid = (input_size[0] // PATCH_SIZE, input_size[1] // PATCH_SIZE)
        if grid[0] * PATCH_SIZE != input_size[0] or grid[1] * PATCH_SIZE != input_size[1]:
            raise ValueError(f"input size {input_size} is not a multiple of {PATCH_SIZE}")
        self.spec = spec
        self.layers = list(layers)
        self.input_size = tuple(input_size)
        num_blocks = max(layers) + 1
        self.vit = VisionTransformer(spec, num_blocks, grid)
        self.reins = ReinAdapters(num_blocks, spec.embed_dim, rein) if rein else None
        self.channels = [spec.embed_dim] * len(layers)
        self.strides = [PATCH_SIZE] * len(layers)
        self.pad_multiple = PATCH_SIZE

    def forward(self, x: Tensor) -> list[Tensor]:
        """Patch-token maps of the configured blocks, ``B x C x H/14 x W/14`` each."""
        if tuple(x.shape[-2:]) != self.input_size:
            raise ValueError(f"expected input of size {self.input_size}, got {tuple(x.shape[-2:])}")
        tokens = self.vit.embed(x)
        maps: dict[int, Tensor] = {}
        for i, block in enumerate(self.vit.blocks):
            tokens = block(tokens)
            if self.reins is not None:
                tokens = self.reins(tokens, i)
            if i in self.layers:
                maps[i] = self.vit.patch_map(tokens)
        return [maps[i] for i in self.layers]


# --------------------------------------------------------------------------- weights


def resize_pos_embed(pos: Tensor, grid: tuple[int, int], spec: ViTSpec) -> Tensor:
    """Bicubically resize a square ``1 x (1 + M*M) x C`` position embedding to ``grid``.

    The cls position is kept; a grid equal to ``M x M`` returns an unchanged copy.
    """
    m = math.isqrt(max(pos.shape[1] - 1, 0)) if pos.dim() == 3 else 0
    if pos.dim() != 3 or pos.shape[0] != 1 or m == 0 or m * m != pos.shape[1] - 1:
        raise ValueError(f"position embedding of shape {tuple(pos.shape)} is not 1 x (1 + M*M) x C")
    if grid == (m, m):
        return pos.clone()
    patch = pos[:, 1:].float().reshape(1, m, m, -1).permute(0, 3, 1, 2)
    if spec.interpolate_offset:
        offset = spec.interpolate_offset
        factor = ((grid[0] + offset) / m, (grid[1] + offset) / m)
        patch = F.interpolate(patch, scale_factor=factor, mode="bicubic", antialias=spec.interpolate_antialias)
    else:
        patch = F.interpolate(patch, size=grid, mode="bicubic", antialias=spec.interpolate_antialias)
    if tuple(patch.shape[-2:]) != grid:
        raise ValueError(f"resized position grid {tuple(patch.shape[-2:])} != {grid}")
    patch = patch.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)
    return torch.cat([pos[:, :1], patch.to(pos.dtype)], dim=1)


def _strip_prefix(state: dict[str, Tensor], prefixes: tuple[str, ...]) -> dict[str, Tensor]:
    """Keep only the keys under the first prefix any key carries, without that prefix."""
    for prefix in prefixes:
        if any(k.startswith(prefix) for k in state):
            return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    return state


_HF_BLOCK_NAMES = {
    "norm1": "norm1",
    "norm2": "norm2",
    "attention.output.dense": "attn.proj",
    "layer_scale1.lambda1": "ls1.gamma",
    "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "mlp.weights_in": "mlp.w12",
    "mlp.weights_out": "mlp.w3",
}
_HF_TOP_NAMES = {
    "embeddings.cls_token": "cls_token",
    "embeddings.mask_token": "mask_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.register_tokens": "register_tokens",
    "embeddings.patch_embeddings.projection": "patch_embed.proj",
    "layernorm": "norm",
}
_HF_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_CHUNKED_BLOCK = re.compile(r"^blocks\.\d+\.(\d+)\.")


def _rename(key: str, table: dict[str, str]) -> str | None:
    for old, new in table.items():
        if key == old or key.startswith(old + "."):
            return new + key[len(old) :]
    return None


def _hf_to_meta(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Rename Hugging Face Dinov2 keys to Meta's, concatenating q, k, v into qkv.

    Keys that have no Meta counterpart (or incomplete q/k/v triples) are kept as they
    are, so loading reports them.
    """
    out: dict[str, Tensor] = {}
    qkv: dict[str, dict[str, Tensor]] = {}
    for key, value in state.items():
        match = _HF_LAYER.match(key)
        if match is None:
            out[_rename(key, _HF_TOP_NAMES) or key] = value
            continue
        layer, rest = match.groups()
        attn = re.match(r"^attention\.attention\.(query|key|value)\.(weight|bias)$", rest)
        if attn:
            qkv.setdefault(f"blocks.{layer}.attn.qkv.{attn[2]}", {})[attn[1]] = value
            continue
        renamed = _rename(rest, _HF_BLOCK_NAMES)
        out[f"blocks.{layer}.{renamed}" if renamed else key] = value
    for target, parts in qkv.items():
        if len(parts) == 3:
            out[target] = torch.cat([parts["query"], parts["key"], parts["value"]], dim=0)
        else:
            layer, kind = target.split(".")[1], target.rsplit(".", 1)[1]
            out.update({f"encoder.layer.{layer}.attention.attention.{n}.{kind}": v for n, v in parts.items()})
    return out


def _is_hf(state: dict[str, Tensor]) -> bool:
    return any(k.startswith(("embeddings.", "encoder.layer.")) for k in state)


def _is_meta(state: dict[str, Tensor]) -> bool:
    return any(k.startswith("blocks.") or k in ("cls_token", "pos_embed") for k in state)


def backbone_state(tensors: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """Convert a checkpoint (Meta, chunked Meta, Hugging Face, Rein/mmseg) to Meta key names."""
    state = _strip_prefix(tensors, ("backbone.", "dinov2.", "dinov2_with_registers."))
    if _is_hf(state):
        state = _hf_to_meta(state)
    elif not _is_meta(state):
        raise WeightsError(
            f"weights in {source} are neither a DINOv2 checkpoint (Meta or Hugging Face "
            f"key names) nor a Rein/mmseg checkpoint; first keys: {', '.join(list(tensors)[:5])}"
        )
    return {_CHUNKED_BLOCK.sub(r"blocks.\1.", k): v for k, v in state.items()}


def _keep_for_backbone(key: str, num_blocks: int) -> bool:
    """Drop the unused final norm, mask token, Rein keys and blocks that are not built."""
    if key.startswith(("norm.", "reins.")) or key == "mask_token":
        return False
    block = re.match(r"^blocks\.(\d+)\.", key)
    return block is None or int(block[1]) < num_blocks


def load_backbone(vit: VisionTransformer, tensors: dict[str, Tensor], source: str, spec: ViTSpec) -> None:
    """Load DINOv2 weights into ``vit``, resizing the position embedding to its grid."""
    state = backbone_state(tensors, source)
    state = {k: v for k, v in state.items() if _keep_for_backbone(k, len(vit.blocks))}
    if "pos_embed" in state:
        try:
            state["pos_embed"] = resize_pos_embed(state["pos_embed"], vit.grid, spec)
        except ValueError as err:
            raise WeightsError(f"weights in {source}: pos_embed: {err}") from err
    check_state_dict(vit, state, source)


_REIN_DROPPED = ("transform.", "merge.")


def load_reins(reins: ReinAdapters, tensors: dict[str, Tensor], source: str, depth: int) -> None:
    """Load Rein ``LoRAReins`` weights (keys bare or under ``backbone.reins.``/``reins.``).

    The checkpoint must cover all ``depth`` blocks; adapters of blocks that are not
    built are discarded, as are the query-linking ``transform``/``merge`` layers.
    """
    state = _strip_prefix(tensors, ("backbone.reins.", "reins."))
    state = {k: v for k, v in state.items() if not k.startswith(_REIN_DROPPED)}
    num_blocks = reins.learnable_tokens_a.shape[0]
    for key in ("learnable_tokens_a", "learnable_tokens_b"):
        if key in state:
            if state[key].dim() != 3 or state[key].shape[0] != depth:
                raise WeightsError(
                    f"weights in {source}: {key} {tuple(state[key].shape)} is not for a {depth}-block backbone"
                )
            state[key] = state[key][:num_blocks]
    check_state_dict(reins, state, source)


# --------------------------------------------------------------------------- builder


def _weights_path(weights: object, what: str) -> Path | None:
    if weights is None:
        return None
    if not isinstance(weights, (str, Path)) or weights == "package" or "://" in str(weights):
        raise WeightsError(f"{what} weights must be given as a local file path, got {weights!r}")
    return Path(weights)


def _rein_settings(options: dict) -> ReinSettings | None:
    unknown = set(options) - {"rein"}
    if unknown:
        raise ValueError(f"unknown DINOv2 encoder options: {', '.join(sorted(map(str, unknown)))}")
    rein = options.get("rein")
    if rein is None:
        return None
    if not isinstance(rein, dict):
        raise ValueError(f"options['rein'] must be a mapping of Rein settings, got {type(rein).__name__}")
    if "weights" not in rein:
        raise ValueError("options['rein'] needs a 'weights' entry (a path, or None for random adapters)")
    try:
        settings = ReinSettings(**rein)
    except TypeError as err:
        raise ValueError(f"bad options['rein']: {err}") from None
    if settings.weights is not None and not isinstance(settings.weights, str):
        raise ValueError(f"options['rein'].weights must be a path or null, got {settings.weights!r}")
    if not isinstance(settings.zero_mlp_delta_f, bool):
        raise ValueError(f"options['rein'].zero_mlp_delta_f must be true or false, got {settings.zero_mlp_delta_f!r}")
    for key, bound in REIN.items():
        value = getattr(settings, key)
        if not isinstance(value, int) or not bound.contains(value):
            raise ValueError(f"options['rein'].{key} must be an integer in {bound}, got {value!r}")
    return settings


def check_dinov2(config: EncoderConfig) -> None:
    """Raise ValueError on layers that are not block indices or options other than valid Rein settings."""
    spec = VIT_SPECS[config.name]
    layers = list(config.layers)
    if not layers or any(not 0 <= i < spec.depth for i in layers):
        raise ValueError(f"{config.name} layers must be block indices in [0, {spec.depth}), got {layers}")
    _rein_settings(config.options)


def padded_size(size: tuple[int, int]) -> tuple[int, int]:
    """Round a (height, width) up to multiples of the patch size."""
    return (math.ceil(size[0] / PATCH_SIZE) * PATCH_SIZE, math.ceil(size[1] / PATCH_SIZE) * PATCH_SIZE)


@register_encoder(*VIT_SPECS, check=check_dinov2)
def build_dinov2(config: EncoderConfig) -> DINOv2Encoder:
    """Build a DINOv2 encoder for ``config`` and load its (and its Rein adapters') weights.

    ``config.weights``: a local file/directory path, or None for random initialisation.
    ``config.options``: only ``rein`` = ``{"weights": path | None, "token_length": 100,
    "rank": 16, "zero_mlp_delta_f": False}``; the Rein path may be the same file as
    ``config.weights`` (a Rein/mmseg checkpoint holding backbone and adapters).
    """
    spec = VIT_SPECS[config.name]
    rein = _rein_settings(config.options)
    encoder = DINOv2Encoder(spec, list(config.layers), padded_size(config.input_size), rein)

    cache: dict[Path, dict[str, Tensor]] = {}

    def tensors(path: Path) -> dict[str, Tensor]:
        if path not in cache:
            cache[path] = read_weights(path)
        return cache[path]

    path = _weights_path(config.weights, "DINOv2")
    if path is not None:
        loaded = tensors(path)
        load_backbone(encoder.vit, loaded, str(path), spec)
        if rein is None and any(k.startswith(("backbone.reins.", "reins.")) for k in loaded):
            warnings.warn(f"{path} holds Rein adapters but options['rein'] is not set; they are ignored")
    rein_path = _weights_path(rein.weights, "Rein") if rein else None
    if rein_path is not None and encoder.reins is not None:
        load_reins(encoder.reins, tensors(rein_path), str(rein_path), spec.depth)
    return encoder
