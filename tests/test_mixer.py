"""Feature taps, the mixing network (Fig. 3), its use in MixedClassifier, and save/load."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from asmix.errors import AsmixError
from asmix.identity import weights_digest
from asmix.mixer import (
    MixingNetwork,
    SyncedBatchNorm,
    default_layers,
    load_mixer,
    resolve_layers,
    run_with_features,
    save_mixer,
)
from asmix.mixing import AlphaSource, MixedClassifier, mix_logits
from asmix.models.adapters import InputAdapter
from asmix.models.demo import DemoCNN
from asmix.preprocessing import Preprocessing


def _timm_resnet18(size: int | None = None) -> nn.Module:
    import timm

    return InputAdapter(
        timm.create_model("resnet18", pretrained=False, num_classes=10),
        (0.5, 0.5, 0.5),
        (0.25, 0.25, 0.25),
        Preprocessing(resize=(size, size)) if size else None,
    ).eval()


def _demo_pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(1)
    return DemoCNN(width=4).eval(), DemoCNN(width=8).eval()


class CallCounter(nn.Module):
    """Counts forward calls of the wrapped model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.model(x)


def test_demo_taps_shapes():
    model = DemoCNN(width=4).eval()
    layers = default_layers(model)
    assert layers == ("layer1", "layer2")
    logits, (up, mid) = run_with_features(model, torch.rand(3, 1, 28, 28), layers)
    assert logits.shape == (3, 10) and up.shape == (3, 4, 14, 14) and mid.shape == (3, 8, 7, 7)
    assert not model._forward_hooks and not model.layer1._forward_hooks  # hooks removed


def test_timm_resnet_taps_through_adapter():
    model = _timm_resnet18()
    layers = default_layers(model)
    assert layers == ("layer1", "layer2")
    _, (up, mid) = run_with_features(model, torch.rand(2, 3, 32, 32), layers)
    assert up.shape == (2, 64, 8, 8) and mid.shape == (2, 128, 4, 4)


def test_timm_resnetv2_default_taps():
    from timm.models.resnetv2 import ResNetV2  # the BiT architecture, made small

    model = InputAdapter(ResNetV2(layers=(1, 1, 1, 1), channels=(128, 256, 512, 1024), num_classes=10)).eval()
    assert default_layers(model) == ("stages.0", "stages.1")
    _, (up, mid) = run_with_features(model, torch.rand(1, 3, 32, 32), default_layers(model))
    assert up.shape == (1, 128, 8, 8) and mid.shape == (1, 256, 4, 4)


def test_robustbench_wide_resnet_taps():
    from asmix.compat import import_robustbench

    import_robustbench()
    from robustbench.model_zoo.architectures.dm_wide_resnet import DMWideResNet
    from robustbench.model_zoo.architectures.wide_resnet import WideResNet

    wrn = WideResNet(depth=10, widen_factor=1).eval()
    assert default_layers(wrn) == ("block1", "block2")
    _, (up, mid) = run_with_features(wrn, torch.rand(2, 3, 32, 32), default_layers(wrn))
    assert up.shape == (2, 16, 32, 32) and mid.shape == (2, 32, 16, 16)
    dm = DMWideResNet(depth=10, width=1).eval()
    assert default_layers(dm) == ("layer.0", "layer.1")
    _, (up, mid) = run_with_features(dm, torch.rand(2, 3, 32, 32), default_layers(dm))
    assert up.shape == (2, 16, 32, 32) and mid.shape == (2, 32, 16, 16)


def test_unknown_architecture_lists_candidates():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sequential(nn.ReLU(), nn.Flatten()))
    with pytest.raises(AsmixError, match=r"no default feature taps for Sequential.*candidates: 1"):
        default_layers(model)
    with pytest.raises(AsmixError, match="has no module 'nope'.*candidates"):
        resolve_layers(DemoCNN(width=2), ["layer1", "nope"])
    with pytest.raises(AsmixError, match="two module names"):
        resolve_layers(DemoCNN(width=2), "layer1")


def test_custom_layers_by_name():
    model = DemoCNN(width=4).eval()
    assert resolve_layers(model, "stem,layer1") == ("stem", "layer1")
    _, (up, mid) = run_with_features(model, torch.rand(1, 1, 28, 28), ("stem", "layer1"))
    assert up.shape == (1, 4, 28, 28) and mid.shape == (1, 4, 14, 14)


def test_mixing_network_channels_come_from_taps():
    std, rob = _demo_pair()
    mixer = MixingNetwork.build(std, rob, torch.rand(2, 1, 28, 28))
    assert mixer.std_channels == (4, 8) and mixer.rob_channels == (8, 16)
    assert mixer.upstream[0].conv1.in_channels == 12 and mixer.middle.in_channels == 24
    assert isinstance(mixer, AlphaSource)


def test_alpha_range_in_eval_full_range_in_train():
    std, rob = _demo_pair()
    mixer = MixingNetwork.build(std, rob, torch.rand(2, 1, 28, 28), alpha_range=(0.6, 0.9))
    x = torch.rand(16, 1, 28, 28)
    mixer.train()
    alpha = mixer.run(x, std, rob).alpha
    assert alpha.shape == (16,) and ((alpha > 0) & (alpha < 1)).all() and alpha.min() < 0.6
    mixer.eval()
    with torch.no_grad():
        mixer.output_norm.running_mean.fill_(-1e3)  # saturate the sigmoid
        high = mixer.run(x, std, rob).alpha
        mixer.output_norm.running_mean.fill_(1e3)
        low = mixer.run(x, std, rob).alpha
    assert torch.allclose(high, torch.full((16,), 0.9)) and torch.allclose(low, torch.full((16,), 0.6))
    with mixer.full_range(), torch.no_grad():
        full = mixer.run(x, std, rob).alpha
    assert full.max() < 1e-6


def test_mixed_classifier_runs_each_model_once_and_mixes_eq_3_4():
    std, rob = _demo_pair()
    counted_std, counted_rob = CallCounter(std), CallCounter(rob)
    mixer = MixingNetwork.build(
        counted_std,
        counted_rob,
        torch.rand(2, 1, 28, 28),
        std_layers="model.layer1,model.layer2",
        rob_layers=("model.layer1", "model.layer2"),
    ).eval()
    counted_std.calls = counted_rob.calls = 0
    mixed = MixedClassifier(counted_std, counted_rob, alpha=mixer).eval()
    assert mixed.alpha_source is mixer
    x = torch.rand(5, 1, 28, 28)
    logits, alpha = mixed(x, return_alpha=True)
    assert counted_std.calls == 1 and counted_rob.calls == 1
    expected = mix_logits(std(x), rob(x), alpha)
    assert torch.allclose(logits, expected, atol=1e-6)
    assert torch.allclose(logits.exp().sum(1), torch.ones(5), atol=1e-5)


def test_gradients_reach_input_and_mixer_not_base_models():
    std, rob = _demo_pair()
    mixer = MixingNetwork.build(std, rob, torch.rand(2, 1, 28, 28))
    mixed = MixedClassifier(std, rob, alpha=mixer).eval()
    x = torch.rand(4, 1, 28, 28, requires_grad=True)
    logits, alpha = mixed(x, return_alpha=True)
    (logits[:, 0].sum() + alpha.sum()).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert mixer.linear.weight.grad is not None and mixer.upstream[0].conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in std.parameters()) and all(p.grad is None for p in rob.parameters())


def test_different_feature_sizes_are_resized():
    std = _timm_resnet18(size=64)  # g runs at 64x64: layer1 16x16, h at 32x32: layer1 8x8
    rob = _timm_resnet18()
    x = torch.rand(2, 3, 32, 32)
    mixer = MixingNetwork.build(std, rob, x, width=8, stages=1, blocks=1).eval()
    alpha = mixer.run(x, std, rob).alpha
    assert alpha.shape == (2,) and torch.isfinite(alpha).all()


def test_synced_batch_norm_matches_batch_norm():
    x = torch.randn(6, 3, 4, 4) * 2 + 1
    ours, reference = SyncedBatchNorm(3), nn.BatchNorm2d(3)
    with torch.no_grad():
        ours.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        reference.weight.copy_(ours.weight)
    assert torch.allclose(ours(x), reference(x), atol=1e-5)
    assert torch.allclose(ours.running_mean, reference.running_mean, atol=1e-6)
    assert torch.allclose(ours.running_var, reference.running_var, atol=1e-5)
    ours.eval(), reference.eval()
    assert torch.allclose(ours(x), reference(x), atol=1e-5)


def _trained_looking_mixer():
    std, rob = _demo_pair()
    mixer = MixingNetwork.build(std, rob, torch.rand(2, 1, 28, 28), alpha_range=(0.2, 0.8), width=8)
    mixer.train()
    with torch.no_grad():
        mixer.run(torch.rand(8, 1, 28, 28), std, rob)  # moves the BN running statistics
    return std, rob, mixer.eval()


def test_save_load_roundtrip(tmp_path):
    std, rob, mixer = _trained_looking_mixer()
    config = {"models": {"std": "demo-std", "rob": "bit-r152"}, "training": {"epochs": 1}}
    save_mixer(mixer, tmp_path / "m", config=config)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["mixer.json", "mixer.safetensors"]
    from asmix.models import canonical_spec

    loaded, stored = load_mixer(tmp_path / "m", std="demo-std", rob="bit:resnetv2_152x2_bit", canonical=canonical_spec)
    assert stored.training == {"epochs": 1} and stored.architecture["alpha_range"] == [0.2, 0.8]
    assert not loaded.training and (loaded.alpha_min, loaded.alpha_max) == (0.2, 0.8)
    assert torch.equal(loaded.head_norm.running_mean, mixer.head_norm.running_mean)
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded.run(x, std, rob).alpha, mixer.run(x, std, rob).alpha)


def test_load_errors(tmp_path):
    std, rob, mixer = _trained_looking_mixer()
    with pytest.raises(AsmixError, match="not found"):
        load_mixer(tmp_path / "missing")
    directory = save_mixer(mixer, tmp_path / "m", config={"models": {"std": "demo-std", "rob": "demo-rob"}})
    with pytest.raises(AsmixError, match="trained with --rob demo-rob, not timm:resnet18"):
        load_mixer(directory, rob="timm:resnet18")
    weights = (directory / "mixer.safetensors").read_bytes()
    (directory / "mixer.safetensors").write_bytes(weights[:100])
    with pytest.raises(AsmixError, match="corrupt mixer weights"):
        load_mixer(directory)
    (directory / "mixer.safetensors").unlink()
    with pytest.raises(AsmixError, match="no mixer.safetensors"):
        load_mixer(directory)
    (directory / "mixer.safetensors").write_bytes(weights)
    (directory / "mixer.json").write_text("{not json")
    with pytest.raises(AsmixError, match="corrupt mixer config"):
        load_mixer(directory)
    (directory / "mixer.json").write_text(json.dumps({"format": "asmix-mixer", "architecture": {"width": 3}}))
    with pytest.raises(AsmixError, match="corrupt mixer config"):
        load_mixer(directory)


def test_weight_hashes_refuse_other_base_models(tmp_path):
    std, rob, mixer = _trained_looking_mixer()
    directory = save_mixer(
        mixer, tmp_path / "m", config={"models": {"std": "demo-std", "rob": "demo-rob"}}, std=std, rob=rob
    )
    stored = json.loads((directory / "mixer.json").read_text())["base_weights"]
    assert stored == {"std": weights_digest(std), "rob": weights_digest(rob)} and stored["std"] != stored["rob"]
    load_mixer(directory, std="demo-std", rob="demo-rob", std_model=std, rob_model=rob)  # the same weights pass
    retrained = copy.deepcopy(std)
    with torch.no_grad():
        next(retrained.parameters()).view(-1)[0] += 1e-4  # same name, same architecture, one weight moved
    with pytest.raises(AsmixError, match=r"other weights for g \(--std\)"):
        load_mixer(directory, std="demo-std", rob="demo-rob", std_model=retrained, rob_model=rob)
    with pytest.raises(AsmixError, match=r"other weights for g \(--std\) and h \(--rob\)"):
        load_mixer(directory, std_model=rob, rob_model=std)
    # a mixer.json without hashes (and without model names) cannot be checked, so it is refused
    unchecked = save_mixer(mixer, tmp_path / "old", config={})
    with pytest.raises(AsmixError, match="records no base-model weight hashes"):
        load_mixer(unchecked, std_model=std, rob_model=rob)


def test_weights_digest_is_exact():
    std, rob = _demo_pair()
    assert weights_digest(std) == weights_digest(copy.deepcopy(std)) and len(weights_digest(std)) == 64
    halved = copy.deepcopy(std).half()
    assert weights_digest(halved) != weights_digest(std)  # a dtype change is another model


def test_evaluation_head_adds_the_bias_and_range_only_in_eval():
    std, rob, mixer = _trained_looking_mixer()
    x = torch.rand(6, 1, 28, 28)
    with torch.no_grad():
        base = mixer.run(x, std, rob)
        mixer.set_alpha_bias(1.5)
        biased = mixer.run(x, std, rob)
        with mixer.full_range():
            training_head = mixer.run(x, std, rob)
    assert torch.allclose(biased.alpha_logit, base.alpha_logit + 1.5, atol=1e-6)
    assert torch.allclose(biased.alpha, 0.2 + 0.6 * torch.sigmoid(base.alpha_logit + 1.5), atol=1e-6)
    assert torch.allclose(training_head.alpha_logit, base.alpha_logit, atol=1e-6)  # bias 0 and range (0, 1)
    assert torch.allclose(training_head.alpha, torch.sigmoid(base.alpha_logit), atol=1e-6)
    with pytest.raises(AsmixError, match="finite"):
        mixer.set_alpha_bias(float("nan"))


def test_training_clamps_the_logit_to_batch_mean_plus_minus_0_6_std():
    std, rob = _demo_pair()
    mixer = MixingNetwork.build(std, rob, torch.rand(2, 1, 28, 28), width=8).train()
    assert mixer.output_norm.momentum == 0.01
    captured = {}
    mixer.linear.register_forward_hook(lambda module, inputs, output: captured.update(z=output.detach()))
    x = torch.rand(32, 1, 28, 28)
    with torch.no_grad():
        _, _, std_features, rob_features = mixer.features(x, std, rob)
        score = mixer(std_features, rob_features)
    z = captured["z"].reshape(-1)
    clamped = z.clamp(z.mean() - 0.6 * z.std(), z.mean() + 0.6 * z.std())
    expected = 2.0 * (clamped - clamped.mean()) / torch.sqrt(clamped.var(unbiased=False) + 1e-5)
    assert torch.allclose(score, expected, atol=1e-4)
    assert (z > z.mean() + 0.6 * z.std()).any()  # the clamp did cut something
    assert torch.allclose(mixer.output_norm.running_mean, 0.01 * clamped.mean().reshape(1), atol=1e-6)


def test_head_round_trips_through_mixer_json(tmp_path):
    std, rob, mixer = _trained_looking_mixer()
    mixer.set_alpha_bias(1.25)
    save_mixer(mixer, tmp_path / "m", config={})
    loaded, stored = load_mixer(tmp_path / "m")
    assert stored.architecture["alpha_bias"] == 1.25 and loaded.alpha_bias == 1.25
    assert (loaded.clamp_std, loaded.bn_momentum) == (0.6, 0.01)


def _tiny_timm(name: str) -> nn.Module:
    """Tiny timm networks (pretrained=False) behind an adapter, as the registry loads them."""
    import timm

    kwargs = {
        "swin_tiny_patch4_window7_224": dict(
            img_size=64, patch_size=4, window_size=4, embed_dim=8, depths=(1, 1, 1), num_heads=(1, 1, 1)
        ),
        "convnext_atto": dict(dims=(8, 16, 32, 64), depths=(1, 1, 1, 1)),
        "vit_tiny_patch16_224": dict(img_size=64, patch_size=16, embed_dim=16, depth=4, num_heads=2),
    }[name]
    torch.manual_seed(2)
    network = timm.create_model(name, pretrained=False, num_classes=10, **kwargs)
    return InputAdapter(network, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)).eval()


@pytest.mark.parametrize(
    "name, layers, shapes",
    [
        # Swin stages are NHWC in timm: hooked, layers.0 is (N, 16, 16, 8); the mixer must get (N, 8, 16, 16)
        ("swin_tiny_patch4_window7_224", ("layers.0", "layers.1"), [(8, 16, 16), (16, 8, 8)]),
        # ConvNeXt's forward_intermediates counts its stem as index 0: stages.1 must still be the 16-channel stage
        ("convnext_atto", ("stages.0", "stages.1"), [(8, 16, 16), (16, 8, 8)]),
        # ViT blocks output tokens (N, 1 + 16, 16): the mixer gets the 16 patch tokens as a 4x4 map
        ("vit_tiny_patch16_224", ("blocks.0", "blocks.1"), [(16, 4, 4), (16, 4, 4)]),
    ],
)
def test_timm_taps_are_channels_first_from_one_forward(name, layers, shapes):
    model = _tiny_timm(name)
    root = model.wrapped
    x = torch.rand(3, 3, 64, 64)
    assert resolve_layers(model, None) == layers
    outputs: dict[str, torch.Tensor] = {}
    handles = [
        root.get_submodule(layer).register_forward_hook(
            lambda module, inputs, output, layer=layer: outputs.__setitem__(layer, output)
        )
        for layer in layers
    ]
    calls = []
    handles.append(root.register_forward_pre_hook(lambda module, inputs: calls.append(1)))
    counter = root.get_submodule(layers[0])
    handles.append(counter.register_forward_pre_hook(lambda module, inputs: calls.append(2)))
    with torch.no_grad():
        run_with_features(model, x[:1], layers)  # the first call matches forward_intermediates' indices once
        calls.clear()
        logits, features = run_with_features(model, x, layers)
        assert calls.count(2) == 1  # one pass through the network per call
        expected_logits = model(x)
    assert torch.allclose(logits, expected_logits, atol=1e-5)
    assert [tuple(f.shape[1:]) for f in features] == shapes
    for layer, feature in zip(layers, features):
        hooked = outputs[layer]  # from the reference forward: NHWC, tokens or NCHW
        if hooked.ndim == 3:
            hooked = hooked[:, 1:].reshape(len(x), *feature.shape[2:], -1)
        as_nchw = hooked if hooked.shape[1:] == feature.shape[1:] else hooked.permute(0, 3, 1, 2)
        assert torch.allclose(feature, as_nchw, atol=1e-5)
    for handle in handles:
        handle.remove()
    mixer = MixingNetwork.build(model, _tiny_timm("convnext_atto"), x, width=8, stages=1, blocks=1).eval()
    assert mixer.std_channels == tuple(shape[0] for shape in shapes)
    assert mixer.run(x, model, _tiny_timm("convnext_atto")).alpha.shape == (3,)


def test_a_hook_on_a_channels_last_module_is_refused():
    swin = _tiny_timm("swin_tiny_patch4_window7_224")
    x = torch.rand(2, 3, 64, 64)
    with pytest.raises(
        AsmixError,
        match=r"tap 'layers.0.blocks.0' of SwinTransformer outputs channels-last maps "
        r"\(2, 16, 16, 8\) \(8 channels in the last dim\).*tap one of: layers.0, "
        r"layers.1, layers.2",
    ) as refused:
        run_with_features(swin, x, ("layers.0.blocks.0", "layers.1"))
    assert len(str(refused.value).splitlines()) == 1

    class ChannelsLast(nn.Module):  # not timm: known channels from its last layer (the norm)
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.norm = nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.LayerNorm(6)

        def forward(self, x):
            return self.norm(self.conv(x).permute(0, 2, 3, 1))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer1, self.layer2 = ChannelsLast(), nn.Conv2d(3, 4, 3, stride=4)
            self.head = nn.Linear(6, 10)

        def forward(self, x):
            self.layer2(x)
            return self.head(self.layer1(x).mean(dim=(1, 2)))

    with pytest.raises(AsmixError, match=r"tap 'layer1' of Net outputs channels-last maps \(2, 32, 32, 6\)"):
        run_with_features(Net().eval(), x, ("layer1", "layer2"))
    with pytest.raises(
        AsmixError,
        match=r"tap 'blocks.0.mlp' must output a feature map \(N, C, H, W\), got "
        r"\(2, 17, 16\); tap one of: blocks.0, blocks.1",
    ):
        run_with_features(_tiny_timm("vit_tiny_patch16_224"), x, ("blocks.0.mlp", "blocks.1"))


def test_mixer_does_not_import_models():
    import ast
    from pathlib import Path

    import asmix.mixer

    imported = []
    for path in Path(asmix.mixer.__file__).parent.glob("*.py"):  # every module of the package
        tree = ast.parse(path.read_text())
        imported += [node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    assert "asmix.mixer.network" in imported and not [name for name in imported if name.startswith("asmix.models")]


def test_mixer_from_the_local_hugging_face_cache(tmp_path, monkeypatch):
    import huggingface_hub.constants

    std, rob, mixer = _trained_looking_mixer()
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--asmix-org--demo-mixer"
    save_mixer(mixer, repo / "snapshots" / commit, config={}, std=std, rob=rob)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    loaded, _ = load_mixer("hf:asmix-org/demo-mixer", std_model=std, rob_model=rob)
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded.run(x, std, rob).alpha, mixer.run(x, std, rob).alpha)
    with pytest.raises(AsmixError, match=r"not in the local Hugging Face cache .*`hf download asmix-org/other`"):
        load_mixer("hf:asmix-org/other")
    with pytest.raises(AsmixError, match="use hf:ORG/NAME"):
        load_mixer("hf:no-slash")


def test_mixer_card_names_the_weights_head_recipe_and_verdict(tmp_path):
    from asmix.report.card import write_mixer_card

    std, rob, mixer = _trained_looking_mixer()
    judged = {
        "name": "mixer",
        "alpha": None,
        "clean_acc": 0.9,
        "attacked_acc": 0.7,
        "clean_correct": 9,
        "attacked_correct": 7,
        "alpha_clean": 0.55,
        "alpha_attacked": 0.61,
    }
    verdict = {
        "n_examples": 10,
        "eps": 0.3,
        "norm": "linf",
        "line": "no gain: the mixer only detects the training attack (-10.00 points ...)",
        "mixer": judged,
        "fixed": judged
        | {"name": "fixed alpha 0.8", "alpha": 0.8, "attacked_correct": 8, "alpha_clean": 0.8, "alpha_attacked": 0.8},
    }
    directory = save_mixer(
        mixer,
        tmp_path / "m",
        std=std,
        rob=rob,
        config={
            "models": {"std": "timm:resnet18.a1_in1k", "rob": "demo-rob"},
            "dataset": "cifar10",
            "training": {"setting": "C", "epochs": 4, "eps_max": 0.3},
            "n_train": 2048,
            "n_val": 500,
            "data_fingerprint": "f" * 64,
            "verdict": verdict,
            "selection": None,
        },
        scales=(1.2, 0.3),
    )
    card = write_mixer_card(directory).read_text()
    assert weights_digest(std) in card and weights_digest(rob) in card and "`demo-rob`" in card
    head = f"range (0.20, 0.80), bias {mixer.alpha_bias:g}, scales g 1.2 / h 0.3"
    assert head in card and "Setting C, 4 epochs" in card and "f" * 64 in card
    assert verdict["line"] in card and "| fixed alpha 0.8 | 9/10 | 8/10 | 0.800 | 0.800 |" in card
    assert "| mixer | 9/10 | 7/10 | 0.550 | 0.610 |" in card

    # the front matter the Hub reads, parsed back by huggingface_hub
    from huggingface_hub import ModelCard, metadata_load

    assert card.startswith("---\n") and "# asmix mixing network" in ModelCard.load(directory / "README.md").text
    data = ModelCard.load(directory / "README.md").data
    assert data.library_name == "asmix" and {"adaptive-smoothing", "adversarial-robustness", "robustbench"} <= set(
        data.tags
    )
    assert data.datasets == ["uoft-cs/cifar10"] and data.base_model == ["timm/resnet18.a1_in1k"]  # demo-rob: no repo
    results = {result.metric_name: result for result in data.eval_results}
    clean, attacked = results["clean accuracy"], results["adaptive AutoAttack-lite accuracy (worst case)"]
    assert (clean.metric_value, attacked.metric_value) == (90.0, 70.0) and attacked.dataset_type == "uoft-cs/cifar10"
    assert attacked.metric_args == {"norm": "linf", "eps": 0.3, "n_examples": 10}
    metadata = metadata_load(directory / "README.md")
    assert {"library_name", "tags", "datasets", "metrics", "base_model", "model-index"} <= set(metadata)
    assert metadata["model-index"][0]["results"][0]["task"]["type"] == "image-classification"


def test_a_mixer_that_reads_h_alone_ignores_g_and_round_trips(tmp_path):
    std, rob = _demo_pair()
    x = torch.rand(6, 1, 28, 28)
    mixer = MixingNetwork.build(std, rob, x, inputs="rob").eval()
    assert mixer.architecture()["std_layers"] == [] and mixer.architecture()["std_channels"] == [0, 0]
    other_std = copy.deepcopy(std)
    with torch.no_grad():
        for parameter in other_std.parameters():
            parameter.add_(torch.randn_like(parameter))
        alpha = mixer.run(x, std, rob).alpha
        assert torch.equal(alpha, mixer.run(x, other_std, rob).alpha)
        both = MixingNetwork.build(std, rob, x).eval()
        assert not torch.equal(both.run(x, std, rob).alpha, both.run(x, other_std, rob).alpha)
    save_mixer(mixer, tmp_path / "m", config={})
    loaded, stored = load_mixer(tmp_path / "m")
    assert loaded.inputs == "rob" and stored.architecture["inputs"] == "rob"
    with torch.no_grad():
        assert torch.equal(loaded.run(x, std, rob).alpha, alpha)
    with pytest.raises(AsmixError, match="mixer inputs must be one of both, rob"):
        MixingNetwork.build(std, rob, x, inputs="std")


def test_sorted_log_probs_are_bounded_decreasing_and_padded():
    from asmix.mixer import LOG_PROB_FLOOR, sorted_log_probs

    logits = torch.tensor([[0.0, 2.0, 1.0], [1e4, 0.0, -1e4]], requires_grad=True)
    top = sorted_log_probs(logits, k=4)
    expected = torch.log_softmax(torch.tensor([2.0, 1.0, 0.0]), 0)
    assert torch.allclose(top[0, :3], expected) and top[0, 3] == LOG_PROB_FLOOR
    assert top[1].tolist() == [0.0, LOG_PROB_FLOOR, LOG_PROB_FLOOR, LOG_PROB_FLOOR]
    top.sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_a_confidence_mixer_reads_only_h_logits(tmp_path):
    std, rob = _demo_pair()
    x = torch.rand(6, 1, 28, 28)
    mixer = MixingNetwork.build(std, rob, x, inputs="rob-logits").eval()
    assert mixer.architecture()["rob_layers"] == [] and mixer.architecture()["std_layers"] == []

    class Shifted(nn.Module):  # same log-probabilities as rob: logits shifted by a constant per example
        def forward(self, inputs):
            return rob(inputs) + 3.0

    other_std = copy.deepcopy(std)
    with torch.no_grad():
        for parameter in other_std.parameters():
            parameter.add_(torch.randn_like(parameter))
        alpha = mixer.run(x, std, rob).alpha
        assert torch.allclose(alpha, mixer.run(x, other_std, Shifted()).alpha, atol=1e-6)
        assert alpha.std() > 0  # it varies with h's confidence
    save_mixer(mixer, tmp_path / "m", config={})
    loaded, _ = load_mixer(tmp_path / "m")
    with torch.no_grad():
        assert loaded.inputs == "rob-logits" and torch.equal(loaded.run(x, std, rob).alpha, alpha)


def test_mixer_card_reads_grouped_and_flat_training_settings(tmp_path):
    from asmix.mixer import MixerCard
    from asmix.report.card import mixer_card

    std, rob, mixer = _trained_looking_mixer()
    flat = {"setting": "C", "norm": "linf", "eps_max": 0.3, "val_steps": 10, "std_scale": 2.0, "batch_size": 64}
    grouped = {
        "setting": "C",
        "threat": {"norm": "linf", "eps": 0.3, "steps": 10, "step_size": 0.075},
        "mix": {"mix_space": "prob", "std_scale": 2.0, "rob_scale": 1.0, "std_temperature": 1.0, "rob_map": None},
        "run": {"batch_size": 64, "seed": 0},
    }
    cards = []
    for name, training in (("flat", flat), ("grouped", grouped)):
        save_mixer(mixer, tmp_path / name, config={"models": {"std": "demo-std"}, "training": training})
        _drop_head_block(tmp_path / name)  # as asmix wrote it before the head block: the training scales apply
        cards.append(MixerCard.read(tmp_path / name))
    for card in cards:
        assert (card.std_scale, card.rob_scale) == (2.0, 1.0)
        assert {key: card.training_settings[key] for key in flat} == flat
        assert "batch 64" in mixer_card(card) and "linf eps 0.3 " in mixer_card(card)
    with pytest.raises(AsmixError, match="was trained with --std demo-std, not demo-rob"):
        cards[0].check_models("demo-rob", None)


def _drop_head_block(directory) -> None:
    path = directory / "mixer.json"
    document = json.loads(path.read_text())
    del document["head"]
    path.write_text(json.dumps(document))


def test_the_whole_head_round_trips_and_older_files_load_with_scales_1(tmp_path):
    from asmix.mixing import EvaluationHead

    std, rob, mixer = _trained_looking_mixer()
    mixer.set_head(EvaluationHead(0.9, 0.98, 1.1, 1.2, 0.3))
    save_mixer(mixer, tmp_path / "new", config={"training": {"std_scale": 1.0}}, scales=(1.2, 0.3))
    written = json.loads((tmp_path / "new" / "mixer.json").read_text())["head"]
    assert written == {"alpha_min": 0.9, "alpha_max": 0.98, "alpha_bias": 1.1, "std_scale": 1.2, "rob_scale": 0.3}
    loaded, card = load_mixer(tmp_path / "new")
    assert card.head == EvaluationHead(0.9, 0.98, 1.1, 1.2, 0.3) and (loaded.alpha_min, loaded.alpha_bias) == (0.9, 1.1)

    save_mixer(mixer, tmp_path / "old", config={"training": {"setting": "C"}})
    _drop_head_block(tmp_path / "old")  # no head block and no scale anywhere: scales 1
    _, card = load_mixer(tmp_path / "old")
    assert card.head == EvaluationHead(0.9, 0.98, 1.1, 1.0, 1.0)

    path = tmp_path / "new" / "mixer.json"
    for bad, message in (({"rob_scale": "0.3"}, "rob_scale must be a finite number"), ({"gain": 1}, "unknown keys")):
        path.write_text(json.dumps(json.loads(path.read_text()) | {"head": written | bad}))
        with pytest.raises(AsmixError, match=f"corrupt mixer config .*{message}"):
            load_mixer(tmp_path / "new")
