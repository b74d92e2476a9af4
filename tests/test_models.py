"""Every spec kind resolves offline, with checkpoint files the tests create."""

from pathlib import Path
from unittest import mock

import pytest
import timm
import torch
import torch.nn.functional as F
from conftest import LinearImageModel, booby_trapped_export
from safetensors.torch import save_file

from asmix import AsmixError, load_data, load_model
from asmix.models import check_model_fits, parse_spec
from asmix.models.bit import BAI2023_STD_FILE, BAI2023_STD_FILE_OLD, bit_to_timm_state_dict, bit_weights_path
from asmix.models.cache import model_dirs
from asmix.models.registry import resolve_zoo_name


@pytest.fixture(autouse=True)
def no_model_folders(tmp_path, monkeypatch):
    """No test sees the checkpoints of the machine it runs on: ./models and ~ are empty folders of its own."""
    monkeypatch.delenv("ASMIX_MODEL_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")


def random_state(model: torch.nn.Module, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights (batch-norm variances kept positive) so outputs are not the default init's."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            value = torch.randn(value.shape, generator=generator) * 0.05
            if key.endswith("running_var"):
                value = value.abs() + 0.5
        state[key] = value.contiguous()
    return state


@pytest.mark.parametrize(
    "text, kind, name",
    [
        ("demo-std", "demo", "demo-std"),
        ("bit-r152", "bit", "resnetv2_152x2_bit"),
        ("Wang2023", "rb", "Wang2023Better_WRN-70-16"),
        ("Carmon2019Unlabeled", "rb", "Carmon2019Unlabeled"),
        ("rb:Ding2020MMA", "rb", "Ding2020MMA"),
        ("timm:resnet18@224", "timm", "resnet18@224"),
        ("file:/tmp/m.pt2", "file", "/tmp/m.pt2"),
        ("py:pkg.mod:build", "py", "pkg.mod:build"),
    ],
)
def test_parse_spec(text, kind, name):
    spec = parse_spec(text)
    assert (spec.kind, spec.name) == (kind, name)


def test_zoo_names_resolve_by_unique_prefix_and_fail_clearly():
    names = ["Wang2023Better_WRN-28-10", "Wang2023Better_WRN-70-16", "Carmon2019Unlabeled"]
    assert resolve_zoo_name("Carmon", names) == "Carmon2019Unlabeled"
    with pytest.raises(AsmixError, match="ambiguous: Wang2023Better_WRN-28-10, Wang2023Better_WRN-70-16"):
        resolve_zoo_name("Wang2023", names)
    with pytest.raises(AsmixError, match="closest: Carmon2019Unlabeled"):
        resolve_zoo_name("Carmon2019Unlabelled", names)


def test_demo_models_load_with_shipped_weights_and_show_the_clean_accuracy_gap():
    std, rob = load_model("demo-std"), load_model("demo-rob")
    assert not std.training and not rob.training
    x, y = load_data("demo", n_examples=1000)
    with torch.no_grad():
        std_acc = (std(x).argmax(1) == y).float().mean().item()
        rob_acc = (rob(x).argmax(1) == y).float().mean().item()
    # measured: 99.2% and 97.9%; the robust model pays for its robustness in clean accuracy
    assert std_acc >= 0.99 and 0.97 <= rob_acc <= std_acc - 0.01


def test_timm_model_from_local_weights_normalises_inputs(tmp_path):
    reference = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    state = random_state(reference)
    reference.load_state_dict(state)
    save_file(state, tmp_path / "r18.safetensors")
    model = load_model("timm:resnet18", dataset="cifar10", weights=tmp_path / "r18.safetensors")
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor(reference.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(reference.pretrained_cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(model(x), reference((x - mean) / std), atol=1e-5)
        resized = load_model("timm:resnet18@64", dataset="cifar10", weights=tmp_path / "r18.safetensors")
        expected = reference((F.interpolate(x, size=(64, 64), mode="bilinear") - mean) / std)
        assert torch.allclose(resized(x), expected, atol=1e-5)


def test_timm_errors_are_one_line(monkeypatch):
    with pytest.raises(AsmixError, match="unknown timm model 'resnet19'; did you mean"):
        load_model("timm:resnet19", dataset="cifar10")
    monkeypatch.setattr(timm, "create_model", mock.Mock(side_effect=OSError("offline")))
    with pytest.raises(AsmixError, match="timm/resnet18.*Hugging Face cache.*--std-weights"):
        load_model("timm:resnet18", dataset="cifar10")


def google_bit_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A BiT-M R50x1 state dict in Google's layout, from RobustBench's BiT implementation."""
    from asmix.compat import import_robustbench

    import_robustbench()
    from robustbench.model_zoo.architectures import bit_rn

    with mock.patch.object(torch.Tensor, "cuda", lambda self, *args, **kwargs: self):  # it calls .cuda()
        reference = bit_rn.KNOWN_MODELS["BiT-M-R50x1"](head_size=10).eval()
    reference.load_state_dict(random_state(reference, seed))
    return reference


def test_bit_layout_conversion_is_exact():
    reference = google_bit_state()
    converted = timm.create_model("resnetv2_50x1_bit", pretrained=False, num_classes=10).eval()
    converted.load_state_dict(bit_to_timm_state_dict(reference.state_dict()))
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(reference(x)[0], converted((x - 0.5) / 0.5), atol=1e-5)


def test_bit_loads_the_bai2023_std_checkpoint_and_resizes_to_128(tmp_path):
    reference = google_bit_state(seed=1)
    folder = tmp_path / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, folder / BAI2023_STD_FILE)
    model = load_model("bit-r50", dataset="cifar10", model_dir=tmp_path)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = reference(F.interpolate(x, size=(128, 128), mode="bilinear"))[0]
        assert torch.allclose(model(x), expected, atol=1e-4)


def test_bit_without_weights_names_every_path_tried(tmp_path):
    linf = Path("cifar10") / "Linf"
    tried = [
        folder / linf / file
        for folder in (tmp_path, Path("models"), tmp_path / "home" / ".cache" / "asmix" / "models")
        for file in (BAI2023_STD_FILE, BAI2023_STD_FILE_OLD)
    ]
    with pytest.raises(AsmixError) as refused:
        load_model("bit-r152", dataset="cifar10", model_dir=tmp_path)
    message = str(refused.value)
    assert f"(tried {', '.join(map(str, tried))}): put {BAI2023_STD_FILE}" in message
    assert f"in {tmp_path / linf}," in message and len(message.splitlines()) == 1


def put(folder: Path, file: str, content: bytes = b"") -> Path:
    path = folder / "cifar10" / "Linf" / file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return path


def test_model_folders_are_searched_in_order(tmp_path, monkeypatch):
    cache = tmp_path / "home" / ".cache" / "asmix" / "models"
    assert model_dirs() == (Path("models"), cache)
    assert model_dirs(cache) == (cache, Path("models"))  # no folder twice
    monkeypatch.setenv("ASMIX_MODEL_DIR", str(tmp_path / "env"))
    assert model_dirs(tmp_path / "cli") == (tmp_path / "cli", tmp_path / "env", Path("models"), cache)

    in_cache = put(cache, BAI2023_STD_FILE)
    monkeypatch.delenv("ASMIX_MODEL_DIR")
    assert bit_weights_path(None, model_dirs(), "cifar10") == in_cache
    in_models = put(Path("models"), BAI2023_STD_FILE_OLD)  # RobustBench's ./models, under asmix's old name
    assert bit_weights_path(None, model_dirs(), "cifar10") == in_models
    in_env = put(tmp_path / "env", BAI2023_STD_FILE)
    monkeypatch.setenv("ASMIX_MODEL_DIR", str(tmp_path / "env"))
    assert bit_weights_path(None, model_dirs(), "cifar10") == in_env
    in_cli = put(tmp_path / "cli", BAI2023_STD_FILE_OLD)
    assert bit_weights_path(None, model_dirs(tmp_path / "cli"), "cifar10") == in_cli
    both = put(tmp_path / "cli", BAI2023_STD_FILE)  # RobustBench's name first within a folder
    assert bit_weights_path(None, model_dirs(tmp_path / "cli"), "cifar10") == both
    assert BAI2023_STD_FILE == "Bai2023Improving_edm.pt_m0.pt"


@pytest.mark.parametrize(
    "content, message",
    [
        (b"not a checkpoint", "cannot read weights .*_m0.pt: "),
        ({"stem.conv.weight": torch.zeros(1)}, "BiT weights .*_m0.pt do not fit resnetv2_50x1_bit: "),
    ],
)
def test_bit_corrupt_and_misfit_files_are_told_apart(tmp_path, content, message):
    path = put(Path("models"), BAI2023_STD_FILE)
    if isinstance(content, dict):
        torch.save(content, path)
    else:
        path.write_bytes(content)
    with pytest.raises(AsmixError, match=message) as refused:
        load_model("bit-r50", dataset="cifar10")
    assert len(str(refused.value).splitlines()) == 1


def test_robustbench_model_from_local_checkpoint(tmp_path):
    from asmix.compat import import_robustbench

    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    zoo = model_dicts[BenchmarkDataset.cifar_10][ThreatModel.Linf]
    reference = zoo["Ding2020MMA"]["model"]().eval()
    state = random_state(reference, seed=3)
    reference.load_state_dict(state)
    folder = tmp_path / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    torch.save({"state_dict": state}, folder / "Ding2020MMA.pt")
    model = load_model("Ding2020", dataset="cifar10", model_dir=tmp_path)  # unique prefix
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-5)
    torch.save(state, tmp_path / "w.pt")
    assert torch.allclose(
        load_model("rb:Ding2020MMA", dataset="cifar10", weights=tmp_path / "w.pt")(x), reference(x), atol=1e-5
    )


@pytest.mark.parametrize("dataset", ["cifar100", "imagenet"])
def test_robustbench_threat_model_without_models_is_one_line(tmp_path, dataset):
    # RobustBench 1.1.1 has L2 models for cifar10 only; this was a raw KeyError
    with pytest.raises(
        AsmixError, match=f"RobustBench has no {dataset} L2 models for 'Wang2023Better_WRN-70-16': use --norm linf"
    ) as refused:
        load_model("Wang2023", dataset=dataset, norm="L2", model_dir=tmp_path)
    assert len(str(refused.value).splitlines()) == 1


def test_robustbench_missing_checkpoint_names_every_path_tried(tmp_path, monkeypatch):
    import robustbench.utils

    download = mock.Mock(side_effect=ConnectionError("offline"))
    monkeypatch.setattr(robustbench.utils, "download_gdrive_new", download)
    monkeypatch.setenv("ASMIX_MODEL_DIR", str(tmp_path / "env"))
    linf = Path("cifar10") / "Linf" / "Ding2020MMA.pt"
    tried = [tmp_path / linf, tmp_path / "env" / linf, "models" / linf, tmp_path / "home/.cache/asmix/models" / linf]
    with pytest.raises(AsmixError) as refused:
        load_model("rb:Ding2020MMA", dataset="cifar10", model_dir=tmp_path)
    assert str(refused.value) == (
        f"cannot load RobustBench model Ding2020MMA: not found (tried {', '.join(map(str, tried))}) and the "
        f"download failed (ConnectionError); put Ding2020MMA.pt in {tmp_path / linf.parent}"
    )
    assert download.call_args.args[1] == tmp_path / linf  # downloads go to the first folder
    with pytest.raises(AsmixError, match=r"tried .*Bai2023Improving_edm\.pt_m0\.pt, .*Bai2023Improving_edm\.pt_m1"):
        load_model("rb:Bai2023Improving_edm", dataset="cifar10")


def test_robustbench_checkpoint_in_models_folder_and_its_failures(tmp_path):
    from asmix.compat import import_robustbench

    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    reference = model_dicts[BenchmarkDataset.cifar_10][ThreatModel.Linf]["Ding2020MMA"]["model"]().eval()
    state = random_state(reference, seed=4)
    reference.load_state_dict(state)
    path = put(Path("models"), "Ding2020MMA.pt")  # RobustBench's default folder, no --model-dir
    torch.save({"state_dict": state}, path)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(load_model("rb:Ding2020MMA", dataset="cifar10")(x), reference(x), atol=1e-5)
    failures = []
    for content in ({"conv1.weight": torch.zeros(1)}, b"not a checkpoint"):
        if isinstance(content, dict):
            torch.save(content, path)
        else:
            path.write_bytes(content)
        with pytest.raises(AsmixError) as refused:
            load_model("rb:Ding2020MMA", dataset="cifar10")
        failures.append(str(refused.value))
    misfit, corrupt = failures
    assert misfit.startswith(f"RobustBench checkpoint {path} does not fit Ding2020MMA: Error(s) in loading state_dict")
    assert corrupt == f"cannot read RobustBench checkpoint {path} (corrupt or truncated?)"
    assert all(len(message.splitlines()) == 1 for message in failures)


def test_exported_and_torchscript_files(tmp_path):
    model = LinearImageModel(4, 3).eval()
    x = torch.rand(2, 1, 2, 2)
    torch.export.save(torch.export.export(model, (x,)), tmp_path / "m.pt2")
    torch.jit.save(torch.jit.trace(model, x), tmp_path / "m.ts")
    for name in ("m.pt2", "m.ts"):
        assert torch.allclose(load_model(f"file:{tmp_path / name}", trust_code=True)(x), model(x), atol=1e-6)
    with pytest.raises(AsmixError, match="model file not found"):
        load_model(f"file:{tmp_path / 'nope.pt2'}", trust_code=True)
    (tmp_path / "broken.pt2").write_bytes(b"not a model")
    with pytest.raises(AsmixError, match="cannot load model file"):
        load_model(f"file:{tmp_path / 'broken.pt2'}", trust_code=True)


def test_file_models_are_not_opened_without_consent(tmp_path, monkeypatch):
    monkeypatch.delenv("ASMIX_TRUST_CODE", raising=False)
    marker = tmp_path / "pwned"
    archive = booby_trapped_export(tmp_path, marker)
    for spec in (f"file:{archive}", f"file:{tmp_path / 'absent.pt2'}"):
        with pytest.raises(AsmixError, match="refusing file:.*pass --trust-code") as refused:
            load_model(spec)
        assert len(str(refused.value).splitlines()) == 1
    monkeypatch.setenv("ASMIX_TRUST_CODE", "0")
    with pytest.raises(AsmixError, match="--trust-code"):
        load_model(f"file:{archive}")
    assert not marker.exists()
    # the archive is live: with consent torch.export.load unpickles the payload
    with pytest.raises(AsmixError, match="cannot load model file"):
        load_model(f"file:{archive}", trust_code=True)
    assert marker.exists()
    marker.unlink()
    monkeypatch.setenv("ASMIX_TRUST_CODE", "1")
    with pytest.raises(AsmixError, match="cannot load model file"):
        load_model(f"file:{archive}")
    assert marker.exists()


def test_python_specs_need_consent_too(tmp_path, monkeypatch):
    monkeypatch.delenv("ASMIX_TRUST_CODE", raising=False)
    marker = tmp_path / "imported"
    (tmp_path / "factory.py").write_text(
        f"import pathlib, torch\npathlib.Path({str(marker)!r}).touch()\n\n"
        "def build():\n    return torch.nn.Linear(4, 3)\n"
    )
    with pytest.raises(AsmixError, match="refusing py:.*it imports and runs Python code; pass --trust-code"):
        load_model(f"py:{tmp_path / 'factory.py'}:build")
    assert not marker.exists()
    assert isinstance(load_model(f"py:{tmp_path / 'factory.py'}:build", trust_code=True), torch.nn.Linear)
    assert marker.exists()


def test_python_factory_and_weights(tmp_path):
    (tmp_path / "factory.py").write_text(
        "import torch\n\ndef build():\n    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))\n"
        "\ndef not_a_model():\n    return 3\n"
    )
    model = load_model(f"py:{tmp_path / 'factory.py'}:build", trust_code=True)
    state = random_state(model, seed=4)
    save_file(state, tmp_path / "w.safetensors")
    loaded = load_model(f"py:{tmp_path / 'factory.py'}:build", weights=tmp_path / "w.safetensors", trust_code=True)
    assert torch.equal(loaded.state_dict()["1.weight"], state["1.weight"])
    with pytest.raises(AsmixError, match="not a torch.nn.Module"):
        load_model(f"py:{tmp_path / 'factory.py'}:not_a_model", trust_code=True)
    with pytest.raises(AsmixError, match="cannot import"):
        load_model("py:asmix.nothing_here:build", trust_code=True)


def test_weights_are_checked_and_never_unpickle_code(tmp_path):
    save_file({"wrong.weight": torch.zeros(2)}, tmp_path / "wrong.safetensors")
    with pytest.raises(AsmixError, match="do not fit the model: missing"):
        load_model("demo-std", weights=tmp_path / "wrong.safetensors")
    (tmp_path / "corrupt.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(AsmixError, match="cannot read weights"):
        load_model("demo-std", weights=tmp_path / "corrupt.safetensors")
    torch.save({"state_dict": {"x": torch.zeros(1)}, "evil": Path("/tmp")}, tmp_path / "pickled.pt")
    with pytest.raises(AsmixError, match="cannot read weights"):
        load_model("demo-std", weights=tmp_path / "pickled.pt")
    with pytest.raises(AsmixError, match="weights file not found"):
        load_model("demo-std", weights=tmp_path / "absent.pt")


def test_model_fit_checks():
    model = LinearImageModel(4, 3)
    check_model_fits(model, torch.rand(1, 1, 2, 2), 3, role="STD (g)")
    with pytest.raises(AsmixError, match="returns 3 classes, the data has 10"):
        check_model_fits(model, torch.rand(1, 1, 2, 2), 10, role="STD (g)")
    with pytest.raises(AsmixError, match=r"does not accept inputs of shape \(3, 32, 32\)"):
        check_model_fits(model, torch.rand(1, 3, 32, 32), 3, role="ROB (h)")


def test_imagenet_preprocessing_comes_from_the_zoo_entries():
    from collections import Counter

    from asmix.compat import import_robustbench
    from asmix.models import model_preprocessing

    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    names = list(model_dicts[BenchmarkDataset.imagenet][ThreatModel.Linf])
    found = {name: model_preprocessing(name, dataset="imagenet") for name in names}
    kinds = Counter((p.resize, p.crop, p.interpolation) for p in found.values())
    # RobustBench 1.1.1: 17 bicubic 256/224 entries, 7 bilinear, 2 Res224, 1 Crop288, 3 XCiT via timm's config
    assert kinds[(256, (224, 224), "bicubic")] == 17 and kinds[(256, (224, 224), "bilinear")] == 7
    assert kinds[((224, 224), None, "bilinear")] == 2 and kinds[(None, (288, 288), "bilinear")] == 1
    assert kinds[(224, (224, 224), "bicubic")] == 3  # crop_pct 1.0
    assert found["Liu2023Comprehensive_Swin-B"].source == "RobustBench BicubicRes256Crop224"
    assert model_preprocessing("Ding2020MMA", dataset="cifar10") is None


def test_robustbench_imagenet_model_carries_its_preprocessing(tmp_path):
    from torchvision.transforms import v2

    from asmix.compat import import_robustbench
    from asmix.mixer import tap_root
    from asmix.models.adapters import InputAdapter

    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset, ThreatModel

    reference = model_dicts[BenchmarkDataset.imagenet][ThreatModel.Linf]["Salman2020Do_R18"]["model"]().eval()
    state = random_state(reference.model, seed=5)
    reference.model.load_state_dict(state)
    folder = tmp_path / "imagenet" / "Linf"
    folder.mkdir(parents=True)
    torch.save({"state_dict": state}, folder / "Salman2020Do_R18.pt")
    model = load_model("Salman2020Do_R18", dataset="imagenet", model_dir=tmp_path)
    assert isinstance(model, InputAdapter) and type(tap_root(model)).__name__ == "ResNet"
    assert (
        model.preprocessing.describe()
        == "resize short side to 256 (bilinear), center-crop 224x224 [RobustBench Res256Crop224]"
    )
    x = torch.rand(2, 3, 256, 270)  # the common input space is 256 on the short side
    leaderboard = v2.Compose([v2.Resize(256, antialias=True), v2.CenterCrop(224)])
    with torch.no_grad():
        assert torch.allclose(model(x), reference(leaderboard(x)), atol=1e-5)
        assert torch.allclose(model(x[..., :224, :224]), reference(x[..., :224, :224]), atol=1e-5)  # already cropped


def test_g_with_another_imagenet_pipeline_gets_a_note():
    from asmix.models import model_preprocessing, preprocessing_note

    swin = model_preprocessing("timm:swin_base_patch4_window7_224", dataset="imagenet")
    assert (swin.resize, swin.crop, swin.interpolation) == (248, (224, 224), "bicubic")
    rob = model_preprocessing("Liu2023Comprehensive_Swin-B", dataset="imagenet")
    note = preprocessing_note(swin, rob, dataset="imagenet")
    assert note.startswith("STD (g) expects resize short side to 248 (bicubic)") and "\n" not in note
    assert "resize short side to 256 (bicubic), center-crop 256x256" in note
    assert (
        preprocessing_note(
            model_preprocessing("Liu2023Comprehensive_ConvNeXt-B", dataset="imagenet"), rob, dataset="imagenet"
        )
        is None
    )
    assert (
        preprocessing_note(model_preprocessing("Salman2020Do_R18", dataset="imagenet"), None, dataset="imagenet")
        is None
    )
    assert "the images as they are" in preprocessing_note(None, rob, dataset="imagenet")
    assert preprocessing_note(None, None, dataset="cifar10") is None


def test_architecture_names_as_robustbench_writes_them():
    from asmix.compat import import_robustbench
    from asmix.models import architecture_name
    from asmix.models.adapters import InputAdapter

    import_robustbench()
    from robustbench.model_zoo.architectures.dm_wide_resnet import DMWideResNet
    from robustbench.model_zoo.architectures.wide_resnet import WideResNet

    demo = load_model("demo-std")
    assert architecture_name("demo-std", demo) == "DemoCNN-16" and architecture_name("demo-rob", demo) == "DemoCNN-8"
    # the name says it: no module is read
    assert architecture_name("bit-r152", demo) == "BiT-R152x2" and architecture_name("bit-r50", demo) == "BiT-R50x1"
    assert architecture_name("timm:resnet18.a1_in1k@64", demo) == "resnet18"
    # RobustBench's zoo holds builders, not names: depth and width are read from the built network
    assert architecture_name("rb:Some2026Name", DMWideResNet(depth=16, width=2)) == "WideResNet-16-2"
    assert architecture_name("rb:Some2026Name", InputAdapter(WideResNet(depth=10, widen_factor=3))) == "WideResNet-10-3"
    assert architecture_name("py:zoo.py:make", LinearImageModel(4, 10)) == "LinearImageModel"
