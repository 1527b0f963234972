import os
import pickle
import re
import time

import pytest
import timm
import torch
from safetensors.torch import save_file

from step_cache.checkpoints import CheckpointError, load_state_dict_file
from step_cache.extraction.backbones import (
    BackboneError,
    WeightsUnavailableError,
    load_backbone,
    resolve_backbone,
)


def test_registry_names_and_aliases():
    assert resolve_backbone("dinov2").timm_name == "vit_base_patch14_dinov2.lvd142m"
    assert resolve_backbone("dinov2-g-reg").timm_name == "vit_giant_patch14_reg4_dinov2.lvd142m"
    assert resolve_backbone("clip").timm_name == "vit_base_patch16_clip_224.openai"
    assert resolve_backbone("clip-l14").timm_name == "vit_large_patch14_clip_224.openai"
    assert resolve_backbone("timm:resnet18").timm_name == "resnet18"
    with pytest.raises(BackboneError, match="unknown backbone 'dino'; choose one of"):
        resolve_backbone("dino")
    with pytest.raises(BackboneError, match="timm has no model named 'no_such_net'"):
        resolve_backbone("timm:no_such_net")


def test_tokens_layout_registers_dropped_and_pooling():
    backbone = load_backbone("dinov2-s-reg", weights="random", image_size=56)  # 4x4 patches of 14 px
    assert (backbone.cls_tokens, backbone.registers, backbone.prefix_tokens) == (1, 4, 5)
    assert backbone.layout.grid == (4, 4) and backbone.layout.tokens_per_frame == 17
    frames = torch.randn(2, 3, 56, 56)
    with torch.inference_mode():
        full = backbone.model.forward_features(frames)
        tokens = backbone.forward_tokens(frames)
    torch.testing.assert_close(tokens[:, 0], full[:, 0])  # CLS kept first
    torch.testing.assert_close(tokens[:, 1:], full[:, 5:])  # registers dropped, patches in order

    pooled = load_backbone("dinov2-s-reg", weights="random", image_size=56, patch_pool=2)
    assert pooled.layout.grid == (2, 2) and pooled.layout.patch_pool == 2
    with torch.inference_mode():
        pooled_tokens = pooled.forward_tokens(frames)
    grid = full[:, 5:].reshape(2, 4, 4, -1)
    torch.testing.assert_close(pooled_tokens[:, 1], grid[:, :2, :2].mean(dim=(1, 2)), atol=1e-5, rtol=1e-5)


def test_convolutional_backbone_gives_patch_tokens_only():
    backbone = load_backbone("timm:resnet18", weights="random", image_size=64)
    assert backbone.layout.cls_tokens == 0 and backbone.layout.grid == (2, 2) and backbone.layout.dim == 512


def test_random_weights_are_seeded_with_sincos_positions():
    from timm.layers.pos_embed_sincos import build_sincos2d_pos_embed

    a = load_backbone("vit-tiny", weights="random", image_size=32, seed=1)
    b = load_backbone("vit-tiny", weights="random", image_size=32, seed=1)
    c = load_backbone("vit-tiny", weights="random", image_size=32, seed=2)
    weight = "blocks.0.attn.qkv.weight"
    assert torch.equal(a.model.state_dict()[weight], b.model.state_dict()[weight])
    assert not torch.equal(a.model.state_dict()[weight], c.model.state_dict()[weight])
    assert a.weights == {"source": "random", "seed": 1, "pos_embed": "sincos-2d"}
    # Patch positions are fixed 2-D sine-cosine features, so untrained tokens still say where a patch is.
    torch.testing.assert_close(a.model.pos_embed[0, 1:], build_sincos2d_pos_embed([2, 2], 192))


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_checkpoint_loads_exactly(tmp_path, suffix):
    torch.manual_seed(123)
    reference = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32).eval()
    state = reference.state_dict()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:  # wrapped the way training frameworks save it, with a DDP prefix
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    backbone = load_backbone("vit-tiny", weights=str(path), image_size=32)
    for name, tensor in backbone.model.state_dict().items():
        torch.testing.assert_close(tensor, state[name], atol=0, rtol=0)
    assert backbone.weights["source"] == "file" and len(backbone.weights["sha256"]) == 64


def test_pickle_with_code_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"weight": Exploit()}))
    with pytest.raises(CheckpointError, match=r"refusing to load.*could run code"):
        load_state_dict_file(path)
    assert not marker.exists()


def test_checkpoint_that_is_not_a_state_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(CheckpointError, match="not a state dict"):
        load_state_dict_file(path)
    path = tmp_path / "mixed.pth"
    torch.save({"weight": torch.zeros(2), "note": "hello"}, path)
    with pytest.raises(CheckpointError, match="entry 'note' is str"):
        load_state_dict_file(path)
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_state_dict_file(tmp_path / "garbage.safetensors")


def test_checkpoint_of_another_model_names_the_mismatch(tmp_path):
    other = timm.create_model("resnet18", pretrained=False, num_classes=0)
    path = tmp_path / "resnet.safetensors"
    save_file(other.state_dict(), path)
    with pytest.raises(CheckpointError, match="weights do not fit vit_tiny_patch16_224"):
        load_backbone("vit-tiny", weights=str(path), image_size=32)


def test_hub_weights_offline_fail_fast_with_advice(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on port 9: like being offline
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))  # and nothing cached
    monkeypatch.setattr("step_cache.extraction.backbones._hub_cache_file", lambda repo: None)
    started = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as info:
        load_backbone("vit-tiny", weights="hub")
    assert time.monotonic() - started < 10
    message = str(info.value)
    # From Python the advice names the keyword argument; the CLI's names the option (test_cli_extract)
    assert "weights='/path/to/model.safetensors'" in message and "vit_tiny_patch16_224" in message
    assert "weights='random'" in message and "--weights" not in message


def test_extract_from_python_names_its_arguments_offline(video_tree, monkeypatch, tmp_path):
    """README's call, offline: the error tells a Python user to pass weights=, not the CLI's --weights."""
    import step_cache

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("step_cache.extraction.backbones._hub_cache_file", lambda repo: None)
    with pytest.raises(WeightsUnavailableError) as info:
        step_cache.extract(video_tree, tmp_path / "shards", backbone="dinov2-s", frames=16)
    message = str(info.value)
    assert "HF_HUB_OFFLINE is set" in message and "weights='/path/to/model.safetensors'" in message
    assert "--weights" not in message and not (tmp_path / "shards" / "manifest.json").exists()


def test_option_names_a_setting_as_the_caller_writes_it():
    from step_cache.interface import command_line, option

    assert option("pool_patches") == "pool_patches=" and option("top_k", 7) == "top_k=7"
    assert option("weights", "random") == "weights='random'"
    with command_line():
        assert option("pool_patches") == "--pool-patches" and option("top_k", 7) == "--top-k 7"
        assert option("weights", "random") == "--weights random"
    assert option("weights", "random") == "weights='random'"  # only within the block


def test_backbone_preprocessing_follows_the_model_crop_mode_and_input_shape():
    from types import SimpleNamespace

    from step_cache.extraction.backbones import _model_input_size

    # timm's eval config of this model squashes frames to the square input instead of cropping the centre
    squash = load_backbone("timm:vit_medium_patch16_gap_384.sw_in12k_ft_in1k", weights="random", image_size=32)
    assert squash.preprocessing.crop_mode == "squash" and squash.preprocessing.crop_size == (32, 32)
    assert squash.preprocessing.to_dict()["crop_mode"] == "squash"
    # a model built for a non-square input keeps both sides (height, width), not only the width
    tall = SimpleNamespace(patch_embed=SimpleNamespace(img_size=(64, 48)))
    assert _model_input_size(tall, {"input_size": (3, 224, 224)}, None) == (64, 48)
    assert _model_input_size(SimpleNamespace(), {"input_size": (3, 1024, 768)}, None) == (1024, 768)


def test_checkpoint_errors_say_what_the_file_is_in_one_line(tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    saved = tmp_path / "saved_evil.pth"
    torch.save({"weight": Exploit()}, saved)  # a torch.save archive whose data.pkl calls os.system
    noise = tmp_path / "noise.pth"
    noise.write_bytes(bytes(range(256)) * 16)
    cut = tmp_path / "cut.pth"
    torch.save({"weight": torch.zeros(8)}, cut)
    cut.write_bytes(cut.read_bytes()[:200])
    expected = {
        saved: re.escape(
            "refusing to load: the pickle names Python objects other than tensors (posix.system), which could "
            "run code; convert it to .safetensors or a plain state dict of tensors"
        ),
        noise: re.escape(
            "not a torch checkpoint (neither a torch.save archive nor a complete pickle); give a .safetensors "
            "file or a state dict saved with torch.save"
        ),
        # the project's wording around torch's reason, whose text differs between torch versions
        cut: re.escape("a damaged torch checkpoint (") + r"[^\n]+" + re.escape("); save or copy it again"),
    }
    for path, message in expected.items():
        with pytest.raises(CheckpointError) as info:
            load_state_dict_file(path)
        assert re.fullmatch(re.escape(f"{path}: ") + message, str(info.value)), str(info.value)
    assert not marker.exists()


def test_only_the_tensor_modules_themselves_count_as_safe(tmp_path):
    """torchvision.* or numpyx.* merely start with a safe module's name: they are other modules, named as unsafe."""
    for module in ("torchvision.ops", "numpyx", "collections_extra"):
        path = tmp_path / f"{module}.pth"
        path.write_bytes(b"\x80\x02c" + module.encode() + b"\nrun\nq\x00.")  # a pickle naming module.run
        with pytest.raises(CheckpointError, match=rf"refusing to load: .* other than tensors \({module}\.run\)"):
            load_state_dict_file(path)


def test_a_large_pickle_is_classified_from_a_bounded_prefix(tmp_path, monkeypatch):
    """Classifying a refused file reads a bounded prefix, not a whole multi-gigabyte file; a pickle cut off by the
    prefix still shows the globals named before the cut."""
    import step_cache.checkpoints as checkpoints

    class Exploit:
        def __reduce__(self):
            return (os.system, ("true",))

    path = tmp_path / "big.pth"
    path.write_bytes(pickle.dumps({"w": Exploit(), "pad": b"x" * 100_000}))
    monkeypatch.setattr(checkpoints, "_PICKLE_PREFIX", 4096)
    kind, data = checkpoints._pickle_bytes(path)
    assert kind == "raw" and len(data) <= 4096
    with pytest.raises(CheckpointError, match=r"other than tensors \(posix.system\), which could run code"):
        load_state_dict_file(path)
