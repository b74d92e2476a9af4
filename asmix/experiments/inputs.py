"""What every experiment starts from: the (g, h) pair and the data, loaded and checked once."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from asmix.checks import check_norm
from asmix.data import check_labels, check_n_examples, dataset_info, load_data, standard_eps
from asmix.errors import AsmixError
from asmix.models import architecture_name, check_model_fits, load_model, model_preprocessing, preprocessing_note
from asmix.models.registry import check_code_consent


@dataclass(frozen=True)
class PairSource:
    """The models and data a user names (defaults: the embedded demo pair and data). ``n_examples`` takes the first N
    (``from_end``: the last N; more than there are is an error); without it N is ``default_n_examples`` (a command's
    default), else the dataset's (500 on ``demo``, else all). ``trust_code`` is the user's consent to load models that
    can run code (``file:``, ``py:``, timm tags timm unpickles); None asks ``$ASMIX_TRUST_CODE``, False refuses even
    with it. Without consent they are refused here, before anything is opened."""

    std: str = "demo-std"
    rob: str = "demo-rob"
    dataset: str = "demo"
    data: str | None = None
    data_dir: str = "./data"
    n_examples: int | None = None
    model_dir: str | None = None
    std_weights: str | None = None
    rob_weights: str | None = None
    norm: str = "linf"
    trust_code: bool | None = None
    default_n_examples: int | None = None
    from_end: bool = False
    """Take the last N examples of the split (held-out ones, as train-mixer's) instead of the first N."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "norm", check_norm(self.norm))
        check_n_examples(self.n_examples)
        check_n_examples(self.default_n_examples)
        for spec, weights in ((self.std, self.std_weights), (self.rob, self.rob_weights)):
            check_code_consent(spec, self.trust_code, dataset=self.dataset, norm=self.norm, weights=weights)

    @property
    def default_eps(self) -> float:
        """The standard radius of the dataset and norm (cifar10 l2: 0.5); an error where there is none."""
        return standard_eps(self.dataset, self.norm)


@dataclass(frozen=True)
class LoadedPair:
    """The loaded pair and data; ``notes`` are one-line caveats for the user (g's ImageNet
    preprocessing differing from the common input space, which is h's)."""

    std: nn.Module
    rob: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    names: dict[str, str]
    notes: tuple[str, ...] = ()

    @property
    def architectures(self) -> dict[str, str]:
        """g's and h's architectures as RobustBench names them (``models.architecture_name``)."""
        return {
            role: architecture_name(self.names[role], model) for role, model in (("std", self.std), ("rob", self.rob))
        }


def load_pair(source: PairSource) -> LoadedPair:
    """Load data first (cheap, fails fast) and check its labels, then both models, then check they
    fit the data: every bad input is found before the expensive work. ImageNet images come in h's
    input space, so h is evaluated exactly as on RobustBench's leaderboard; a difference for g is a note."""
    info = dataset_info(source.dataset)
    rob_preprocessing = model_preprocessing(source.rob, dataset=source.dataset, norm=source.norm)
    std_preprocessing = model_preprocessing(source.std, dataset=source.dataset, norm=source.norm)
    note = preprocessing_note(std_preprocessing, rob_preprocessing, dataset=source.dataset)
    x, y = load_data(
        source.dataset,
        data_path=source.data,
        data_dir=source.data_dir,
        n_examples=None if source.from_end else source.n_examples,
        preprocessing=rob_preprocessing,
    )
    n = source.n_examples or source.default_n_examples or info.default_n_examples
    if source.from_end:
        if source.n_examples is not None and source.n_examples > len(x):
            raise AsmixError(f"n-examples {source.n_examples} is more than the {len(x)} examples of the test split")
        start = 0 if n is None else max(len(x) - n, 0)
        x, y = x[start:], y[start:]
    elif source.n_examples is None:
        x, y = x[:n], y[:n]
    check_labels(y, info.num_classes, source=source.data or f"{source.dataset} labels")
    models = {}
    for role, spec, weights in (("std", source.std, source.std_weights), ("rob", source.rob, source.rob_weights)):
        models[role] = load_model(
            spec,
            dataset=source.dataset,
            norm=source.norm,
            model_dir=source.model_dir,
            weights=weights,
            trust_code=source.trust_code,
        )
        check_model_fits(models[role], x, info.num_classes, role="STD (g)" if role == "std" else "ROB (h)")
    return LoadedPair(
        models["std"],
        models["rob"],
        x,
        y,
        {"std": source.std, "rob": source.rob},
        notes=(note,) if note and source.data is None else (),
    )
