"""``flowclas import-checkpoint``: a checkpoint with the authors' key names and shapes
(TRAILab/FlowCLAS ``FlowCLAS`` Lightning module: Rein DINOv2 backbone, FrEIA flows, base
distributions, projection and segmentation heads) becomes our bundle, and our score map on
it equals an independent float64 computation from the same tensors."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from flowclas_ros.commands.main import main
from flowclas_ros.model import load_bundle
from flowclas_ros.model.import_checkpoint import CheckpointError, import_checkpoint, map_head_keys, read_checkpoint
from flowclas_ros.training.trainer import decays

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
C, DEPTH, HEADS, TOKENS, RANK = 384, 12, 6, 5, 6  # ViT-S/14; the authors' Rein rank is the head count
STEPS, PROJ, CLASSES = 2, 8, 20


def _authors_checkpoint(seed: int = 0, backbone: bool = True) -> dict[str, torch.Tensor]:
    """Random float32 tensors under the authors' names (Lightning ``model.`` prefix)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, s=0.02, mean=0.0):
        return torch.randn(*shape, generator=g) * s + mean

    sd: dict[str, torch.Tensor] = {"prev_loss": torch.tensor(0.3)}
    m = "model."
    if backbone:
        fe = m + "feature_extractor."
        sd.update({fe + "cls_token": r(1, 1, C), fe + "pos_embed": r(1, 1 + 37 * 37, C, s=0.1),
                   fe + "mask_token": r(1, C), fe + "patch_embed.proj.weight": r(C, 3, 14, 14),
                   fe + "patch_embed.proj.bias": r(C), fe + "norm.weight": r(C, mean=1.0), fe + "norm.bias": r(C)})
        for i in range(DEPTH):
            b = f"{fe}blocks.{i}."
            sd.update({b + "norm1.weight": r(C, s=0.1, mean=1.0), b + "norm1.bias": r(C, s=0.1),
                       b + "attn.qkv.weight": r(3 * C, C, s=0.05), b + "attn.qkv.bias": r(3 * C),
                       b + "attn.proj.weight": r(C, C), b + "attn.proj.bias": r(C), b + "ls1.gamma": r(C, s=0.1, mean=0.3),
                       b + "norm2.weight": r(C, s=0.1, mean=1.0), b + "norm2.bias": r(C, s=0.1),
                       b + "mlp.fc1.weight": r(4 * C, C), b + "mlp.fc1.bias": r(4 * C),
                       b + "mlp.fc2.weight": r(C, 4 * C), b + "mlp.fc2.bias": r(C), b + "ls2.gamma": r(C, s=0.1, mean=0.3)})
        rein = fe + "reins."
        sd.update({rein + "learnable_tokens_a": r(DEPTH, TOKENS, RANK, s=0.3), rein + "learnable_tokens_b": r(DEPTH, RANK, C, s=0.3),
                   rein + "scale": torch.tensor(0.2), rein + "mlp_token2feat.weight": r(C, C, s=0.05),
                   rein + "mlp_token2feat.bias": r(C), rein + "mlp_delta_f.weight": r(C, C, s=0.05), rein + "mlp_delta_f.bias": r(C),
                   rein + "transform.weight": r(256, C), rein + "transform.bias": r(256),
                   rein + "merge.weight": r(256, 768), rein + "merge.bias": r(256)})
    sd[m + "norms.0.weight"], sd[m + "norms.0.bias"] = r(C, s=0.1, mean=1.0), r(C, s=0.1)
    half = C // 2
    for k in range(STEPS):
        a, p, c = (f"{m}flow_blocks.0.module_list.{3 * k + j}." for j in range(3))
        sd.update({a + "loc": r(1, C, 1, 1, s=0.1), a + "log_scale": r(1, C, 1, 1, s=0.1), a + "is_initialized": torch.tensor(True)})
        perm = torch.from_numpy(np.random.default_rng(seed * 10 + k).permutation(C))
        sd.update({p + "perm": perm, p + "perm_inv": torch.argsort(perm)})
        s = c + "subnet."
        for n in ("gn1", "gn2", "gn3"):
            sd[s + n + ".weight"], sd[s + n + ".bias"] = r(half, s=0.1, mean=1.0), r(half, s=0.1)
        sd.update({s + "conv1.weight": r(half, half, 3, 3, s=0.03), s + "conv2.weight": r(half, half, 1, 1, s=0.05),
                   s + "conv3.weight": r(half, half, 3, 3, s=0.03), s + "conv_out.weight": r(C, half, 1, 1, s=0.02)})
    sd.update({m + "base_dists.0.mu": r(C, s=0.1), m + "base_dists.0.log_scale": r(C, s=0.1),
               m + "base_dists.0.log_normalizer": torch.tensor(-0.5 * C * math.log(2 * math.pi)),
               m + "proj_heads.0.weight": r(PROJ, C, 1, 1), m + "proj_heads.0.bias": r(PROJ)})
    h = m + "seg_heads.0."
    sd.update({h + "0.weight": r(C // 2, C, 3, 3), h + "0.bias": r(C // 2), h + "1.weight": r(C // 2, mean=1.0),
               h + "1.bias": r(C // 2), h + "1.running_mean": r(C // 2), h + "1.running_var": r(C // 2, mean=1.0).abs(),
               h + "1.num_batches_tracked": torch.tensor(100), h + "3.weight": r(CLASSES, C // 2, 1, 1), h + "3.bias": r(CLASSES)})
    return sd


def _reference_score(sd: dict[str, torch.Tensor], image: np.ndarray) -> torch.Tensor:
    """The authors' inference from their tensors, restated in float64: normalise, pad the
    frame centred with black, Rein DINOv2 (last block's patch tokens), LayerNorm(eps 1e-5),
    FrEIA ActNorm / PermuteRandom / AffineCouplingOneSided(residual subnet, clamp 2 tanh),
    scoring density mean_c(-u^2/2 - log_scale), 1 - bilinear p, centred crop."""
    d = {k[len("model."):]: v.double() for k, v in sd.items() if k.startswith("model.")}
    h, w = image.shape[:2]
    hp, wp = math.ceil(h / 14) * 14, math.ceil(w / 14) * 14
    top, left = (hp - h) // 2, (wp - w) // 2
    canvas = np.zeros((hp, wp, 3), np.float64)
    canvas[top : top + h, left : left + w] = image
    mean, std = torch.tensor(MEAN, dtype=torch.float64), torch.tensor(STD, dtype=torch.float64)
    x = ((torch.from_numpy(canvas) / 255 - mean) / std).permute(2, 0, 1)[None]
    fe = "feature_extractor."
    gh, gw = hp // 14, wp // 14
    patches = F.conv2d(x, d[fe + "patch_embed.proj.weight"], d[fe + "patch_embed.proj.bias"], stride=14)
    tokens = patches.flatten(2).transpose(1, 2)
    pos = sd["model." + fe + "pos_embed"].float()  # DINOv2 interpolates its float32 copy
    grid = pos[:, 1:].reshape(1, 37, 37, C).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=((gh + 0.1) / 37, (gw + 0.1) / 37), mode="bicubic", antialias=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, gh * gw, C).double()
    t = torch.cat([d[fe + "cls_token"] + pos[:, :1].double(), tokens + grid], dim=1)
    rein = fe + "reins."
    for i in range(DEPTH):
        b = f"{fe}blocks.{i}."
        y = F.layer_norm(t, (C,), d[b + "norm1.weight"], d[b + "norm1.bias"], 1e-6)
        q, k, v = (y @ d[b + "attn.qkv.weight"].t() + d[b + "attn.qkv.bias"]).chunk(3, dim=-1)
        split = lambda u: u.reshape(1, -1, HEADS, C // HEADS).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(C // HEADS), dim=-1) @ v
        att = att.transpose(1, 2).reshape(1, -1, C) @ d[b + "attn.proj.weight"].t() + d[b + "attn.proj.bias"]
        t = t + d[b + "ls1.gamma"] * att
        y = F.layer_norm(t, (C,), d[b + "norm2.weight"], d[b + "norm2.bias"], 1e-6)
        y = F.gelu(y @ d[b + "mlp.fc1.weight"].t() + d[b + "mlp.fc1.bias"]) @ d[b + "mlp.fc2.weight"].t() + d[b + "mlp.fc2.bias"]
        t = t + d[b + "ls2.gamma"] * y
        # Rein (LoRAReins.forward, batch_first, has_cls_token)
        f = t[:, 1:]
        T = d[rein + "learnable_tokens_a"][i] @ d[rein + "learnable_tokens_b"][i]
        a = torch.softmax(f @ T.t() * C**-0.5, dim=-1)
        delta = a[..., 1:] @ (T[1:] @ d[rein + "mlp_token2feat.weight"].t() + d[rein + "mlp_token2feat.bias"])
        delta = (delta + f) @ d[rein + "mlp_delta_f.weight"].t() + d[rein + "mlp_delta_f.bias"]
        t = torch.cat([t[:, :1], f + delta * d[rein + "scale"]], dim=1)
    feat = F.layer_norm(t[:, 1:], (C,), d["norms.0.weight"], d["norms.0.bias"], 1e-5)
    z = feat.transpose(1, 2).reshape(1, C, gh, gw)
    half = C // 2
    for k in range(STEPS):
        a, p, c = (f"flow_blocks.0.module_list.{3 * k + j}." for j in range(3))
        z = (z - d[a + "loc"]) * torch.exp(-d[a + "log_scale"])
        z = z[:, sd["model." + p + "perm"]]
        x1, x2 = z[:, :half], z[:, half:]
        s = c + "subnet."
        hdn = F.conv2d(F.relu(F.group_norm(x1, 1, d[s + "gn1.weight"], d[s + "gn1.bias"], 1e-5)), d[s + "conv1.weight"], padding=1)
        hdn = F.conv2d(F.relu(F.group_norm(hdn, 1, d[s + "gn2.weight"], d[s + "gn2.bias"], 1e-5)), d[s + "conv2.weight"])
        hdn = F.conv2d(F.relu(F.group_norm(hdn, 1, d[s + "gn3.weight"], d[s + "gn3.bias"], 1e-5)), d[s + "conv3.weight"], padding=1)
        out = F.conv2d(hdn + x1, d[s + "conv_out.weight"])
        scale, shift = 2.0 * torch.tanh(out[:, :half]), out[:, half:]
        z = torch.cat([x1, x2 * torch.exp(scale) + shift], dim=1)
    u = (z - d["base_dists.0.mu"].view(1, C, 1, 1)) * torch.exp(-d["base_dists.0.log_scale"].view(1, C, 1, 1))
    logp = (-0.5 * u**2 - d["base_dists.0.log_scale"].view(1, C, 1, 1)).mean(dim=1, keepdim=True)
    score = 1.0 - F.interpolate(torch.exp(logp), size=(hp, wp), mode="bilinear", align_corners=False)
    return score[0, 0, top : top + h, left : left + w]


MODEL_YAML = """\
model:
  encoder:
    name: dinov2_vits14
    layers: [11]
    weights: null
    input_size: [31, 41]
    options: {rein: {weights: null, token_length: 5, rank: 6}}
  mean: [0.485, 0.456, 0.406]
  std: [0.229, 0.224, 0.225]
  score: prob
"""


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "state_dict.pt"
    sd = _authors_checkpoint()
    torch.save({"state_dict": sd, "epoch": 3, "global_step": 1200}, path)
    return path, sd


def test_imported_score_map_equals_the_authors_computation(checkpoint, tmp_path, capsys):
    path, sd = checkpoint
    (tmp_path / "model.yaml").write_text(MODEL_YAML)
    out = tmp_path / "bundle"
    assert main(["import-checkpoint", "--checkpoint", str(path), "--output", str(out),
                 "--config", str(tmp_path / "model.yaml")]) == 0
    assert "import-checkpoint" in capsys.readouterr().out
    net = load_bundle(out).double()
    config = net.config
    assert (config.flow.steps, config.flow.subnet, config.flow.hidden_ratio) == (STEPS, "residual", 1.0)
    assert (config.projection_dim, config.seg_classes, config.squash) == (PROJ, CLASSES, "batch_sigmoid")
    assert config.training["imported_from"] == "state_dict.pt"
    image = np.random.default_rng(1).integers(0, 256, (31, 41, 3)).astype(np.uint8)  # pads 5/6 rows, 0/1 columns
    x = ((torch.from_numpy(image).double() / 255 - torch.tensor(MEAN, dtype=torch.float64))
         / torch.tensor(STD, dtype=torch.float64)).permute(2, 0, 1)[None]
    with torch.no_grad():
        ours = net.raw_score(x)[0]
    expected = _reference_score(sd, image)
    assert float(expected.std()) > 1e-3  # the map is not flat: the test can see a misplaced pixel
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-9)
    # the seg head and projections came across too (not part of the score)
    torch.testing.assert_close(net.seg_head[3].bias.float(), sd["model.seg_heads.0.3.bias"])
    torch.testing.assert_close(net.projections[0].conv.weight.float(), sd["model.proj_heads.0.weight"])


def test_checkpoint_without_backbone_needs_encoder_weights(tmp_path):
    path = tmp_path / "heads.pt"
    torch.save(_authors_checkpoint(backbone=False), path)
    with pytest.raises(CheckpointError, match="holds no backbone"):
        import_checkpoint(path, tmp_path / "b")
    (tmp_path / "model.yaml").write_text(MODEL_YAML)
    with pytest.raises(CheckpointError, match="no encoder.weights"):
        import_checkpoint(path, tmp_path / "b", tmp_path / "model.yaml")


class _Transform:
    """Stands in for the authors' pickled FusedTransforms object in a Lightning checkpoint."""


def test_only_tensors_are_read(tmp_path):
    lightning = tmp_path / "lightning.ckpt"
    with open(lightning, "wb") as f:
        torch.save({"state_dict": {"model.norms.0.weight": torch.ones(2)}, "transform": _Transform()}, f)
    with pytest.raises(CheckpointError, match=r"pickles objects besides tensors.*state_dict"):
        read_checkpoint(lightning)
    odd = tmp_path / "odd.pt"
    torch.save({"model.norms.0.weight": torch.ones(2), "model.note": "hello"}, odd)
    with pytest.raises(CheckpointError, match="not tensors: model.note"):
        read_checkpoint(odd)
    evil = tmp_path / "evil.pt"
    evil.write_bytes(pickle.dumps({"x": _Transform()}, protocol=2))
    with pytest.raises(CheckpointError):
        read_checkpoint(evil)
    assert main(["import-checkpoint", "--checkpoint", str(lightning), "--output", str(tmp_path / "b")]) == 1


def test_missing_permutation_is_named(tmp_path):
    sd = _authors_checkpoint(backbone=False)
    del sd["model.flow_blocks.0.module_list.4.perm"]
    path = tmp_path / "old_freia.pt"
    torch.save(sd, path)
    (tmp_path / "model.yaml").write_text(MODEL_YAML.replace("weights: null\n    input", "weights: x.pth\n    input"))
    with pytest.raises(CheckpointError, match="module_list.4.perm is missing"):
        import_checkpoint(path, tmp_path / "b", tmp_path / "model.yaml")


def _authors_decays(name: str) -> bool:
    """The authors' FlowCLAS.param_groups rule on their parameter names."""
    return not any(marker in name for marker in ("bias", "norm", "flow"))


def test_weight_decay_sorts_every_tensor_like_its_authors_counterpart(checkpoint, tmp_path):
    _, sd = checkpoint
    from flowclas_ros.model import FlowCLASNet
    from flowclas_ros.model.import_checkpoint import _model_keys, infer_config, read_model_yaml

    (tmp_path / "model.yaml").write_text(MODEL_YAML)
    state, _ = _model_keys(sd)
    config = infer_config(state, read_model_yaml(tmp_path / "model.yaml"))
    ours, _ = map_head_keys(state, config)
    by_pointer = {(v.data_ptr(), v.numel()): k for k, v in state.items()}
    trainable = {n for n, p in FlowCLASNet(config).named_parameters() if p.requires_grad}
    pairs = {mine: by_pointer[(v.data_ptr(), v.numel())] for mine, v in ours.items() if mine in trainable}
    assert len(pairs) == len(trainable)
    for mine, theirs in pairs.items():
        assert decays(mine) == _authors_decays("model." + theirs), (mine, theirs)


def _zip_bomb(path, inflated: int) -> None:
    """A torch.save zip whose one data entry is re-written deflated: tiny on disk, ``inflated`` bytes inside."""
    import io
    import zipfile

    buffer = io.BytesIO()
    torch.save({"model.norms.0.weight": torch.zeros(10)}, buffer)
    with zipfile.ZipFile(io.BytesIO(buffer.getvalue())) as source, zipfile.ZipFile(path, "w") as bomb:
        for info in source.infolist():
            if info.filename.endswith("/data/0"):
                bomb.writestr(info.filename, b"\0" * inflated, compress_type=zipfile.ZIP_DEFLATED)
            else:
                bomb.writestr(info, source.read(info.filename))


def test_zip_bomb_is_refused_from_the_directory_and_empty_file_is_one_clear_line(tmp_path):
    import tracemalloc

    bomb = tmp_path / "bomb.pt"
    _zip_bomb(bomb, 64 << 20)
    assert bomb.stat().st_size < 1 << 20
    tracemalloc.start()
    with pytest.raises(CheckpointError, match="inflate to .* bytes from a .*-byte file"):
        read_checkpoint(bomb)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 << 20  # refused before the 64 MB entry is inflated
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="cannot read .* as a torch weights file: EOFError") as info:
        read_checkpoint(empty)
    assert "Lightning" not in str(info.value)
