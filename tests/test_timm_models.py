"""timm models: hf-hub names from the local Hugging Face cache, timm's data config (squash included), the pixel
statistics notice for a local checkpoint, and errors that tell an unusable huggingface_hub from a missing model."""

import json

import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import save_file

from asmix import AsmixError, load_model
from asmix.errors import AsmixWarning
from asmix.models import model_preprocessing
from asmix.preprocessing import from_timm_config

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache in tmp_path, read offline (huggingface_hub reads its constants at import, so
    they are patched beside the environment)."""
    from huggingface_hub import constants

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache


def put_in_cache(cache, repo_id: str, files: dict[str, bytes]) -> None:
    """A repository snapshot in huggingface_hub's layout: models--ORG--NAME/{refs/main, snapshots/COMMIT/...}."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    for name, content in files.items():
        (snapshot / name).write_bytes(content)


def tiny_vit_repo(tmp_path, **data_config):
    """timm's test_vit with random weights and a config.json as timm writes it (``pretrained_cfg`` inside)."""
    torch.manual_seed(0)
    network = timm.create_model("test_vit", pretrained=False, num_classes=10, img_size=160).eval()
    save_file(network.state_dict(), tmp_path / "model.safetensors")
    pretrained_cfg = {
        "input_size": [3, 160, 160],
        "interpolation": "bicubic",
        "crop_pct": 0.875,
        "crop_mode": "center",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "num_classes": 10,
        **data_config,
    }
    config = {"architecture": "test_vit", "num_classes": 10, "model_args": {"img_size": 160}}
    config["pretrained_cfg"] = pretrained_cfg
    weights = (tmp_path / "model.safetensors").read_bytes()
    files = {"config.json": json.dumps(config).encode(), "model.safetensors": weights}
    return network, files


def test_hf_hub_model_loads_from_the_local_cache_offline(tmp_path, hub_cache):
    network, files = tiny_vit_repo(tmp_path)
    put_in_cache(hub_cache, "timm/test_vit.asmix", files)
    model = load_model("timm:hf-hub:timm/test_vit.asmix@160", dataset="cifar10")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        resized = torch.nn.functional.interpolate(x, size=(160, 160), mode="bilinear", antialias=True)
        assert torch.allclose(model(x), network((resized - 0.5) / 0.25), atol=1e-5)


def test_hf_hub_squash_config_is_applied(tmp_path, hub_cache):
    _, files = tiny_vit_repo(tmp_path, crop_mode="squash", crop_pct=0.95, interpolation="bilinear")
    put_in_cache(hub_cache, "timm/test_vit.squash", files)
    preprocessing = model_preprocessing("timm:hf-hub:timm/test_vit.squash", dataset="imagenet")
    # squash: both sides to floor(160 / 0.95) = 168, then the center 160x160; center mode would keep the aspect
    assert (preprocessing.resize, preprocessing.crop) == ((168, 168), (160, 160))
    assert preprocessing.interpolation == "bilinear"
    assert preprocessing.resized_size(300, 200) == (168, 168)
    assert from_timm_config({"input_size": (3, 160, 160), "crop_pct": 0.95}).resized_size(300, 200) == (252, 168)


def test_squash_matches_timm_eval_transform():
    from timm.data import resolve_data_config
    from timm.data.transforms_factory import transforms_imagenet_eval

    config = resolve_data_config(pretrained_cfg={"input_size": (3, 64, 64), "crop_pct": 0.8, "crop_mode": "squash"})
    preprocessing = from_timm_config(config)
    assert (preprocessing.resize, preprocessing.crop) == ((80, 80), (64, 64))
    reference = transforms_imagenet_eval(
        img_size=64, crop_pct=0.8, crop_mode="squash", interpolation="bicubic", normalize=False
    )
    image = Image.fromarray((torch.rand(90, 120, 3) * 255).to(torch.uint8).numpy())
    expected = reference(image).float() / 255
    assert torch.equal(preprocessing.to_torchvision()(image), expected)
    with pytest.raises(AsmixError, match="crop mode 'border' is not supported"):
        from_timm_config({**config, "crop_mode": "border"})


def test_hf_hub_model_not_in_the_cache_is_one_clear_line(hub_cache):
    with pytest.raises(AsmixError) as refused:
        load_model("timm:hf-hub:timm/resnet18.a1_in1k", dataset="imagenet")
    message = str(refused.value)
    assert message.startswith(
        f"timm:hf-hub:timm/resnet18.a1_in1k: timm/resnet18.a1_in1k is not in the local Hugging Face cache {hub_cache} "
    )
    assert "run `hf download timm/resnet18.a1_in1k`" in message and len(message.splitlines()) == 1
    with pytest.raises(AsmixError, match=r"timm/resnet18\.a1_in1k is not in the local .*`hf download timm/resnet18"):
        load_model("timm:resnet18.a1_in1k", dataset="imagenet")


def test_unusable_huggingface_hub_is_not_called_offline(hub_cache, monkeypatch):
    from timm.models import _hub

    monkeypatch.setattr(_hub, "_has_hf_hub", False)  # what timm 1.0.9 does under huggingface_hub 2
    with pytest.raises(AsmixError) as refused:
        load_model("timm:resnet18.a1_in1k", dataset="imagenet")
    assert "cannot use the hub: pip install 'huggingface_hub>=0.34,<2'" in str(refused.value)
    assert "cache" not in str(refused.value)


def test_local_checkpoint_says_which_pixel_statistics_it_gets(tmp_path):
    network = timm.create_model("test_vit", pretrained=False, num_classes=10)
    save_file(network.state_dict(), tmp_path / "w.safetensors")
    with pytest.warns(AsmixWarning) as caught:
        load_model("timm:test_vit@224", dataset="cifar10", weights=tmp_path / "w.safetensors")
    assert [str(warning.message) for warning in caught] == [
        f"timm:test_vit with weights {tmp_path / 'w.safetensors'}: inputs are normalised with timm's pixel_mean "
        "(0.5, 0.5, 0.5) and pixel_std (0.5, 0.5, 0.5); a checkpoint trained with other statistics needs a py: spec"
    ]
