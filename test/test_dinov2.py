"""Tests of the DINOv2 ViT/14 encoder: weight formats, shapes, numerics, Rein, export.

No real weights exist offline: checkpoint files are written here with random tensors under
the real key names and ViT-S/14 shapes (embed 384, 12 blocks, 6 heads, 37x37 positions).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import Tensor, nn

from flowclas_ros.model.encoders.base import EncoderConfig, WeightsError, available_encoders, build_encoder
from flowclas_ros.model.encoders.dinov2 import VIT_SPECS, Block, ReinAdapters, ReinSettings

C, DEPTH, GRID = 384, 12, 37
SIZE = (70, 98)  # 5 x 7 tokens


# --------------------------------------------------------------------------- fixtures


def meta_state(registers: int = 0, seed: int = 0) -> dict[str, Tensor]:
    """A random ViT-S/14 checkpoint with Meta's torch-hub key names and shapes."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int, std: float = 0.02, mean: float = 0.0) -> Tensor:
        return torch.randn(*shape, generator=g) * std + mean

    state = {
        "cls_token": rand(1, 1, C, std=0.5),
        "pos_embed": rand(1, 1 + GRID * GRID, C, std=0.5),
        "mask_token": rand(1, C),
        "patch_embed.proj.weight": rand(C, 3, 14, 14),
        "patch_embed.proj.bias": rand(C),
        "norm.weight": rand(C, mean=1.0),
        "norm.bias": rand(C),
    }
    if registers:
        state["register_tokens"] = rand(1, registers, C, std=0.5)
    for i in range(DEPTH):
        p = f"blocks.{i}."
        state |= {
            p + "norm1.weight": rand(C, std=0.1, mean=1.0),
            p + "norm1.bias": rand(C, std=0.1),
            p + "attn.qkv.weight": rand(3 * C, C, std=0.1),
            p + "attn.qkv.bias": rand(3 * C, std=0.1),
            p + "attn.proj.weight": rand(C, C),
            p + "attn.proj.bias": rand(C),
            p + "ls1.gamma": rand(C, std=0.3),
            p + "norm2.weight": rand(C, std=0.1, mean=1.0),
            p + "norm2.bias": rand(C, std=0.1),
            p + "mlp.fc1.weight": rand(4 * C, C),
            p + "mlp.fc1.bias": rand(4 * C),
            p + "mlp.fc2.weight": rand(C, 4 * C),
            p + "mlp.fc2.bias": rand(C),
            p + "ls2.gamma": rand(C, std=0.3),
        }
    return state


def to_hf(meta: dict[str, Tensor], prefix: str = "") -> dict[str, Tensor]:
    """Rename a Meta checkpoint to Hugging Face Dinov2Model names (q, k, v split)."""
    top = {
        "cls_token": "embeddings.cls_token",
        "mask_token": "embeddings.mask_token",
        "pos_embed": "embeddings.position_embeddings",
        "register_tokens": "embeddings.register_tokens",
        "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
        "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
        "norm.weight": "layernorm.weight",
        "norm.bias": "layernorm.bias",
    }
    block = {
        "attn.proj": "attention.output.dense",
        "ls1.gamma": "layer_scale1.lambda1",
        "ls2.gamma": "layer_scale2.lambda1",
    }
    hf = {}
    for key, value in meta.items():
        if key in top:
            hf[top[key]] = value
            continue
        i, rest = re.match(r"blocks\.(\d+)\.(.+)", key).groups()
        p = f"encoder.layer.{i}."
        if rest.startswith("attn.qkv."):
            kind = rest.rsplit(".", 1)[1]
            for name, part in zip(("query", "key", "value"), value.chunk(3, dim=0)):
                hf[f"{p}attention.attention.{name}.{kind}"] = part.clone()
            continue
        for old, new in block.items():
            rest = rest.replace(old, new)
        hf[p + rest] = value
    return {prefix + k: v.contiguous() for k, v in hf.items()}


def rein_state(token_length: int = 5, rank: int = 3, layers: int = DEPTH, seed: int = 1) -> dict[str, Tensor]:
    """Random LoRAReins weights with Rein's key names (including the query-linking layers)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "learnable_tokens_a": torch.randn(layers, token_length, rank, generator=g),
        "learnable_tokens_b": torch.randn(layers, rank, C, generator=g) * 0.3,
        "scale": torch.tensor(0.5),
        "mlp_token2feat.weight": torch.randn(C, C, generator=g) * 0.05,
        "mlp_token2feat.bias": torch.randn(C, generator=g) * 0.05,
        "mlp_delta_f.weight": torch.randn(C, C, generator=g) * 0.05,
        "mlp_delta_f.bias": torch.randn(C, generator=g) * 0.05,
        "transform.weight": torch.randn(256, C, generator=g),
        "transform.bias": torch.randn(256, generator=g),
        "merge.weight": torch.randn(256, 768, generator=g),
        "merge.bias": torch.randn(256, generator=g),
    }


@pytest.fixture(scope="module")
def meta() -> dict[str, Tensor]:
    return meta_state()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, meta: dict[str, Tensor]) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dinov2")
    paths = {"pth": root / "dinov2_vits14_pretrain.pth", "hf": root / "model.safetensors"}
    torch.save(meta, paths["pth"])
    save_file(to_hf(meta), str(paths["hf"]))
    return paths


@pytest.fixture(scope="module")
def image() -> Tensor:
    return torch.randn(2, 3, *SIZE, generator=torch.Generator().manual_seed(3))


def build(weights: str | Path | None, layers=(3, 11), size=SIZE, name="dinov2_vits14", **options):
    config = EncoderConfig(name=name, layers=list(layers), weights=weights, input_size=size, options=options)
    return build_encoder(config)


def features(encoder: nn.Module, x: Tensor) -> list[Tensor]:
    with torch.no_grad():
        return encoder(x)


def assert_same(a: list[Tensor], b: list[Tensor], atol: float = 1e-5) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=atol, rtol=1e-5)


# --------------------------------------------------------------------------- registry, shapes


def test_registered_names() -> None:
    names = {f"dinov2_vit{s}14{r}" for s in "sblg" for r in ("", "_reg")}
    assert names <= set(available_encoders())
    assert set(VIT_SPECS) == names


def test_output_shapes_and_attributes(image: Tensor) -> None:
    enc = build(None)
    out = features(enc, image)
    assert [tuple(o.shape) for o in out] == [(2, C, 5, 7)] * 2
    assert enc.channels == [C, C] and enc.strides == [14, 14] and enc.pad_multiple == 14
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    assert len(enc.vit.blocks) == 12


def test_non_multiple_input_size_uses_padded_grid() -> None:
    enc = build(None, layers=[1], size=(64, 100))
    (out,) = features(enc, torch.randn(1, 3, 70, 112))
    assert out.shape == (1, C, 5, 8)  # ceil(64/14) x ceil(100/14)
    assert len(enc.vit.blocks) == 2  # only blocks up to max(layers) are built
    with pytest.raises(ValueError, match="expected input of size"):
        enc(torch.randn(1, 3, 64, 100))


def test_bad_layers_and_options_are_rejected() -> None:
    with pytest.raises(ValueError, match="layers"):
        build(None, layers=[12])
    with pytest.raises(ValueError, match="unknown DINOv2 encoder options"):
        build(None, layers=[0], depth=2)
    with pytest.raises(ValueError, match="'weights' entry"):
        build(None, layers=[0], rein={"token_length": 4})


# --------------------------------------------------------------------------- weight formats


def test_meta_pth_and_hf_safetensors_give_same_features(files: dict[str, Path], image: Tensor) -> None:
    from_meta = features(build(files["pth"]), image)
    from_hf = features(build(files["hf"]), image)
    assert_same(from_meta, from_hf, atol=0.0)
    assert from_meta[0].abs().mean() > 0


def test_other_layouts_load_the_same_weights(
    tmp_path: Path, meta: dict[str, Tensor], files: dict[str, Path], image: Tensor
) -> None:
    reference = features(build(files["pth"]), image)
    # Meta keys as safetensors, blocks chunked as blocks.{chunk}.{i}. (3 chunks of 4)
    chunked = {re.sub(r"^blocks\.(\d+)\.", lambda m: f"blocks.{int(m[1]) // 4}.{m[1]}.", k): v for k, v in meta.items()}
    save_file(chunked, str(tmp_path / "chunked.safetensors"))
    # HF directory holding model.safetensors, keys under dinov2. plus a classifier head
    hf_dir = tmp_path / "hf_seg"
    hf_dir.mkdir()
    save_file(to_hf(meta, "dinov2.") | {"classifier.weight": torch.zeros(2, C)}, str(hf_dir / "model.safetensors"))
    # mmseg-style checkpoint: backbone.* keys under a state_dict entry
    mmseg = {"meta": {"iter": 1}, "state_dict": {"backbone." + k: v for k, v in meta.items()}}
    mmseg["state_dict"]["decode_head.conv.weight"] = torch.zeros(3)
    torch.save(mmseg, tmp_path / "mmseg.pth")
    for path in (tmp_path / "chunked.safetensors", hf_dir, tmp_path / "mmseg.pth"):
        assert_same(features(build(path), image), reference, atol=0.0)


def test_blocks_beyond_max_layer_are_accepted_and_discarded(files: dict[str, Path], image: Tensor) -> None:
    full = features(build(files["pth"], layers=[1, 11]), image)
    short = build(files["hf"], layers=[1])
    assert len(short.vit.blocks) == 2
    assert_same(features(short, image), full[:1])


def test_register_variant_loads_register_tokens(tmp_path: Path, image: Tensor) -> None:
    reg = meta_state(registers=4, seed=5)
    torch.save(reg, tmp_path / "reg.pth")
    save_file(to_hf(reg, "dinov2_with_registers."), str(tmp_path / "reg.safetensors"))
    enc = build(tmp_path / "reg.pth", name="dinov2_vits14_reg")
    assert torch.equal(enc.vit.register_tokens, reg["register_tokens"])
    out = features(enc, image)
    assert [tuple(o.shape) for o in out] == [(2, C, 5, 7)] * 2
    assert_same(features(build(tmp_path / "reg.safetensors", name="dinov2_vits14_reg"), image), out, atol=0.0)
    with pytest.raises(WeightsError, match="unexpected keys: register_tokens"):
        build(tmp_path / "reg.pth")


def test_wrong_shape_names_path_and_key(tmp_path: Path, meta: dict[str, Tensor]) -> None:
    bad = dict(meta)
    bad["blocks.0.attn.qkv.weight"] = torch.zeros(2 * C, C)
    path = tmp_path / "bad_shape.pth"
    torch.save(bad, path)
    with pytest.raises(WeightsError) as err:
        build(path)
    assert str(path) in str(err.value) and "blocks.0.attn.qkv.weight" in str(err.value)


def test_missing_key_names_path_and_key(tmp_path: Path, meta: dict[str, Tensor]) -> None:
    bad = {k: v for k, v in meta.items() if k != "blocks.1.norm2.bias"}
    path = tmp_path / "missing_key.safetensors"
    save_file(to_hf(bad), str(path))
    with pytest.raises(WeightsError) as err:
        build(path)
    assert str(path) in str(err.value) and "blocks.1.norm2.bias" in str(err.value)


def test_missing_file_and_non_path_weights(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "dinov2_vits14_pretrain.pth"
    with pytest.raises(WeightsError, match=re.escape(str(missing))):
        build(missing)
    with pytest.raises(WeightsError, match="local file path"):
        build("package")
    unknown = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, unknown)
    with pytest.raises(WeightsError, match=re.escape(str(unknown))):
        build(unknown)


# --------------------------------------------------------------------------- numerics


def test_pos_embed_at_pretraining_size_is_unchanged(files: dict[str, Path], meta: dict[str, Tensor]) -> None:
    enc = build(files["pth"], layers=[0], size=(518, 518))
    assert torch.equal(enc.vit.pos_embed, meta["pos_embed"])


def test_pos_embed_resize_keeps_cls_and_constants(tmp_path: Path, meta: dict[str, Tensor]) -> None:
    state = dict(meta)
    state["pos_embed"] = torch.cat([meta["pos_embed"][:, :1], torch.full((1, GRID * GRID, C), 0.25)], dim=1)
    torch.save(state, tmp_path / "const.pth")
    enc = build(tmp_path / "const.pth", layers=[0], size=(64, 100))
    pos = enc.vit.pos_embed
    assert pos.shape == (1, 1 + 5 * 8, C)
    assert torch.equal(pos[:, :1], meta["pos_embed"][:, :1])
    torch.testing.assert_close(pos[:, 1:], torch.full_like(pos[:, 1:], 0.25))


def test_block_matches_reference_attention() -> None:
    """Our block equals LayerNorm + nn.MultiheadAttention + MLP with layer scales."""
    torch.manual_seed(0)
    spec = VIT_SPECS["dinov2_vits14"]
    block = Block(spec).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    mha = nn.MultiheadAttention(C, spec.num_heads, batch_first=True)
    mha.in_proj_weight.data.copy_(block.attn.qkv.weight)
    mha.in_proj_bias.data.copy_(block.attn.qkv.bias)
    mha.out_proj.weight.data.copy_(block.attn.proj.weight)
    mha.out_proj.bias.data.copy_(block.attn.proj.bias)
    x = torch.randn(2, 11, C)
    with torch.no_grad():
        h = block.norm1(x)
        x1 = x + block.ls1.gamma * mha(h, h, h, need_weights=False)[0]
        mlp = block.mlp.fc2(nn.functional.gelu(block.mlp.fc1(block.norm2(x1))))
        expected = x1 + block.ls2.gamma * mlp
        torch.testing.assert_close(block(x), expected, atol=1e-5, rtol=1e-5)


def test_attention_matches_explicit_per_head_matmuls() -> None:
    torch.manual_seed(1)
    attn = Block(VIT_SPECS["dinov2_vits14"]).attn.eval()
    x = torch.randn(1, 9, C)
    heads, d = attn.num_heads, C // attn.num_heads
    w, b = attn.qkv.weight, attn.qkv.bias
    outs = []
    for h in range(heads):
        rows = slice(h * d, (h + 1) * d)
        q = x @ w[:C][rows].T + b[:C][rows]
        k = x @ w[C : 2 * C][rows].T + b[C : 2 * C][rows]
        v = x @ w[2 * C :][rows].T + b[2 * C :][rows]
        outs.append(torch.softmax(q @ k.transpose(1, 2) / d**0.5, dim=-1) @ v)
    expected = attn.proj(torch.cat(outs, dim=-1))
    with torch.no_grad():
        torch.testing.assert_close(attn(x), expected, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- Rein


def rein_reference(x: Tensor, a: Tensor, b: Tensor, scale: float, token2feat: nn.Linear, delta_f: nn.Linear):
    """Rein's LoRAReins.forward for one layer, written with its (N, B, C) einsums."""
    feats = x.permute(1, 0, 2)
    cls, feats = feats[:1], feats[1:]
    tokens = a @ b
    attn = torch.softmax(torch.einsum("nbc,mc->nbm", feats, tokens) * C**-0.5, dim=-1)
    delta = torch.einsum("nbm,mc->nbc", attn[:, :, 1:], token2feat(tokens[1:, :]))
    feats = feats + delta_f(delta + feats) * scale
    return torch.cat([cls, feats], dim=0).permute(1, 0, 2)


def test_rein_adapter_matches_reference() -> None:
    torch.manual_seed(2)
    reins = ReinAdapters(3, C, ReinSettings(weights=None, token_length=6, rank=4))
    with torch.no_grad():
        reins.scale.fill_(0.7)
        x = torch.randn(2, 13, C)
        expected = rein_reference(
            x, reins.learnable_tokens_a[1], reins.learnable_tokens_b[1], 0.7, reins.mlp_token2feat, reins.mlp_delta_f
        )
        torch.testing.assert_close(reins(x, 1), expected, atol=1e-5, rtol=1e-5)
        assert torch.equal(reins(x, 1)[:, 0], x[:, 0])


def test_rein_with_zero_delta_mlp_equals_plain_backbone(files: dict[str, Path], image: Tensor) -> None:
    plain = features(build(files["pth"]), image)
    rein = {"weights": None, "token_length": 5, "rank": 3, "zero_mlp_delta_f": True}
    enc = build(files["pth"], rein=rein)
    assert "reins.scale" not in enc.state_dict()
    assert_same(features(enc, image), plain, atol=0.0)


def test_rein_checkpoint_changes_features_and_loads_backbone_too(
    tmp_path: Path, meta: dict[str, Tensor], files: dict[str, Path], image: Tensor
) -> None:
    reins = rein_state()
    state = {"backbone.reins." + k: v for k, v in reins.items()}
    state |= {"backbone." + k: v for k, v in meta.items()} | {"decode_head.cls_embed.weight": torch.zeros(20, 256)}
    path = tmp_path / "rein_mask2former.pth"
    torch.save({"meta": {"iter": 40000}, "state_dict": state}, path)
    rein = {"weights": str(path), "token_length": 5, "rank": 3}

    one_file = build(path, layers=[3, 11], rein=rein)
    assert torch.equal(one_file.reins.learnable_tokens_a, reins["learnable_tokens_a"])
    assert one_file.reins.scale.item() == 0.5
    out = features(one_file, image)
    plain = features(build(files["pth"]), image)
    assert all((o - p).abs().max() > 1e-3 for o, p in zip(out, plain))
    assert_same(features(build(files["hf"], rein=rein), image), out)
    with pytest.warns(UserWarning, match="Rein adapters"):
        assert_same(features(build(path), image), plain, atol=0.0)

    # bare adapter keys in a separate file; fewer built blocks use a slice of the tokens
    save_file({"reins." + k: v for k, v in reins.items()}, str(tmp_path / "reins.safetensors"))
    short = build(files["pth"], layers=[3], rein=rein | {"weights": str(tmp_path / "reins.safetensors")})
    assert short.reins.learnable_tokens_a.shape == (4, 5, 3)
    assert_same(features(short, image), out[:1])


def test_rein_checkpoint_errors(tmp_path: Path, files: dict[str, Path]) -> None:
    missing = {k: v for k, v in rein_state().items() if k != "mlp_token2feat.bias"}
    path = tmp_path / "rein_missing.pth"
    torch.save({"state_dict": {"backbone.reins." + k: v for k, v in missing.items()}}, path)
    with pytest.raises(WeightsError) as err:
        build(files["pth"], rein={"weights": str(path), "token_length": 5, "rank": 3})
    assert str(path) in str(err.value) and "mlp_token2feat.bias" in str(err.value)

    deep = tmp_path / "rein_24.pth"
    torch.save(rein_state(layers=24), deep)
    with pytest.raises(WeightsError, match="12-block"):
        build(files["pth"], rein={"weights": str(deep), "token_length": 5, "rank": 3})
    good = tmp_path / "rein_12.pth"
    torch.save(rein_state(), good)
    with pytest.raises(WeightsError, match=r"shape mismatches: learnable_tokens_a"):
        build(files["pth"], rein={"weights": str(good), "token_length": 5, "rank": 4})


# --------------------------------------------------------------------------- export


@pytest.mark.parametrize(
    ("layers", "options"),
    [([11], {}), ([0, 2], {"rein": {"weights": None, "token_length": 5, "rank": 3}})],
    ids=["vits14", "vits14_rein"],
)
def test_torch_export_matches_eager(layers: list[int], options: dict) -> None:
    torch.manual_seed(4)
    enc = build(None, layers=layers, **options)
    x = torch.randn(1, 3, *SIZE)
    program = torch.export.export(enc, (x,))
    with torch.no_grad():
        assert_same(program.module()(x), enc(x), atol=1e-5)
