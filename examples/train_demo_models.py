"""Rebuild the embedded demo pair (``demo-std``, ``demo-rob``) and the demo data from MNIST.

``demo-std`` (width 16) is trained on clean images; ``demo-rob`` (width 8) is PGD adversarially
trained at l_inf radius ``--train-eps`` 0.4 (ramped up over the first epochs), larger than the
evaluation radius 0.3: this makes it robust at 0.3 and visibly less accurate on clean images, the
trade-off the demo is meant to show. Both are then evaluated on the full 10k test set (clean accuracy
and PGD-40 accuracy, eps 0.3, step 0.01, random start), and the script writes into ``--out``:

* ``demo_std.safetensors``, ``demo_rob.safetensors``: the ``state_dict`` of each model,
* ``mnist_demo.npz``: uint8 ``x_test``/``y_test`` (first 2000 official test images, file order)
  and ``x_train``/``y_train`` (first 10000 train images),
* ``demo_models_card.json``: the measured accuracies (fractions) and the settings used.

Every file is written atomically (temp file in the same folder, then ``os.replace``).
Run from anywhere; defaults are relative to the repository root::

    python examples/train_demo_models.py                     # ~7 min on 2 idle CPU cores
    python examples/train_demo_models.py --train demo-rob --device cuda   # demo-rob alone, on a GPU
"""

from __future__ import annotations

import argparse
import io
import json
import math
import platform
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from asmix.attacks.pgd import PGD, cross_entropy_objective  # noqa: E402
from asmix.io import atomic_write  # noqa: E402
from asmix.models.demo import DEMO_WIDTHS, DemoCNN  # noqa: E402

N_DEMO_TEST = 2000
N_DEMO_TRAIN = 10000


@dataclass(frozen=True)
class TrainConfig:
    """How to train one demo model; ``attack`` None means standard (clean) training."""

    epochs: int
    batch_size: int
    lr: float
    attack: PGD | None = None
    ramp_epochs: float = 0.0
    bf16: bool = True


# ----------------------------------------------------------------------------------------------
# Data and file helpers
# ----------------------------------------------------------------------------------------------


def load_mnist(path: Path) -> dict[str, np.ndarray]:
    """Load the four MNIST arrays (uint8 images, integer labels) from an ``.npz`` file."""
    with np.load(path) as data:
        arrays = {k: np.asarray(data[k]) for k in ("x_train", "y_train", "x_test", "y_test")}
    assert arrays["x_train"].shape == (60000, 28, 28), arrays["x_train"].shape
    assert arrays["x_test"].shape == (10000, 28, 28), arrays["x_test"].shape
    return arrays


def to_tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images (N, 28, 28) -> float (N, 1, 28, 28) in [0, 1]; labels -> int64."""
    xt = torch.from_numpy(x.astype(np.float32) / 255.0).unsqueeze(1)
    return xt, torch.from_numpy(y.astype(np.int64))


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically, with asmix's own writer (temp file in the same folder, then
    ``os.replace``)."""
    atomic_write(path, lambda temporary: temporary.write_bytes(payload))


def save_weights(model: torch.nn.Module, path: Path) -> None:
    """Save ``model.state_dict()`` (contiguous fp32 copies) as safetensors, atomically."""
    state = {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, save(state))


def save_demo_data(mnist: dict[str, np.ndarray], path: Path) -> None:
    """Write the demo subset (first test / train images, uint8) as a compressed ``.npz``."""
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        x_test=mnist["x_test"][:N_DEMO_TEST].astype(np.uint8),
        y_test=mnist["y_test"][:N_DEMO_TEST].astype(np.uint8),
        x_train=mnist["x_train"][:N_DEMO_TRAIN].astype(np.uint8),
        y_train=mnist["y_train"][:N_DEMO_TRAIN].astype(np.uint8),
    )
    atomic_write_bytes(path, buf.getvalue())


# ----------------------------------------------------------------------------------------------
# Attack, training, evaluation
# ----------------------------------------------------------------------------------------------


def cross_entropy_in_bf16(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    """The PGD objective under bf16 autocast (the training attacks): per-example cross-entropy and the logits."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        logits = model(x).float()
    return F.cross_entropy(logits, y, reduction="none"), logits


@contextmanager
def frozen(model: torch.nn.Module) -> Iterator[None]:
    """Switch off the parameters' ``requires_grad`` inside the block (cheaper input-gradient attacks)."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def pgd_attack(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: PGD,
    generator: torch.Generator,
    bf16: bool = False,
) -> torch.Tensor:
    """The last PGD iterate of every example (the adversarial training batches): the library's PGD, not
    stopping where the model is already fooled."""
    objective = cross_entropy_in_bf16 if bf16 else cross_entropy_objective
    return replace(attack, stop_at_break=False).perturb(model, x, y, generator=generator, objective=objective)


def train(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: TrainConfig,
    seed: int,
    log: Callable[[str], None],
    on_epoch_end: Callable[[int], None] | None = None,
) -> None:
    """Train ``model`` with Adam and a cosine learning-rate decay, clean or PGD-adversarial.

    With ``cfg.attack`` set, every batch is replaced by its PGD adversarial version; eps (and the
    step size with it) ramps linearly from 0 to ``cfg.attack.eps`` over the first
    ``cfg.ramp_epochs`` epochs.
    """
    g = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    steps_per_epoch = math.ceil(n / cfg.batch_size)
    total_steps = cfg.epochs * steps_per_epoch
    ramp_steps = cfg.ramp_epochs * steps_per_epoch
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1.0 + math.cos(math.pi * min(s, total_steps) / total_steps))
    )
    model.to(memory_format=torch.channels_last)
    step = 0
    for epoch in range(cfg.epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(n, generator=g)
        loss_sum, correct, eps_now = 0.0, 0, 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * cfg.batch_size : (i + 1) * cfg.batch_size]
            xb = x[idx].contiguous(memory_format=torch.channels_last)
            yb = y[idx]
            if cfg.attack is not None:
                frac = min(1.0, (step + 1) / ramp_steps) if ramp_steps > 0 else 1.0
                eps_now = cfg.attack.eps * frac
                attack = replace(cfg.attack, eps=eps_now, step_size=cfg.attack.step_size * frac)
                model.eval()
                with frozen(model):
                    xb = pgd_attack(model, xb, yb, attack, g, bf16=cfg.bf16)
            model.train()
            with torch.autocast(xb.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
                logits = model(xb)
                loss = F.cross_entropy(logits.float(), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            loss_sum += loss.item() * yb.shape[0]
            correct += (logits.argmax(1) == yb).sum().item()
        kind = f"adv (eps {eps_now:.3f})" if cfg.attack is not None else "clean"
        log(
            f"  epoch {epoch + 1}/{cfg.epochs}: {kind} train loss {loss_sum / n:.4f}, "
            f"train acc {correct / n:.4f}, lr {sched.get_last_lr()[0]:.2e}, "
            f"{time.perf_counter() - t0:.0f}s"
        )
        if on_epoch_end is not None:
            on_epoch_end(epoch)
    model.to(memory_format=torch.contiguous_format)
    model.eval()


@torch.no_grad()
def clean_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Fraction of ``x`` classified correctly (fp32)."""
    model.eval()
    correct = sum(
        (model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum().item()
        for i in range(0, x.shape[0], batch_size)
    )
    return correct / x.shape[0]


def pgd_accuracy(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attack: PGD,
    seed: int,
    batch_size: int = 500,
) -> float:
    """Robust accuracy under ``attack`` in fp32: the fraction of points classified correctly on the
    clean input and on every PGD iterate (the random start included).

    The library's PGD stops an example at the first iterate that fools the model (never weaker than scoring
    the last iterate only), so its returned point is misclassified exactly where some iterate was. The random
    starts are drawn for the whole batch, so they do not depend on the model.
    """
    model.eval()
    g = torch.Generator().manual_seed(seed)
    robust = 0
    with frozen(model):
        for i in range(0, x.shape[0], batch_size):
            xs, ys = x[i : i + batch_size], y[i : i + batch_size]
            x_adv = attack.perturb(model, xs, ys, generator=g)
            with torch.no_grad():
                robust += int(((model(xs).argmax(1) == ys) & (model(x_adv).argmax(1) == ys)).sum())
    return robust / x.shape[0]


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; path defaults are relative to the repository root."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--mnist",
        type=Path,
        default=REPO_ROOT / ".." / "shared" / "data" / "mnist.npz",
        help="MNIST .npz (x_train, y_train, x_test, y_test; uint8 images)",
    )
    p.add_argument("--out", type=Path, default=REPO_ROOT / "asmix" / "assets", help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--std-epochs", type=int, default=5, help="clean training epochs of demo-std")
    p.add_argument(
        "--train",
        default="demo-std,demo-rob",
        help="models to (re)train; the others keep their weights and model-card entry in --out",
    )
    p.add_argument("--rob-epochs", type=int, default=6, help="adversarial training epochs of demo-rob")
    p.add_argument(
        "--ramp-epochs", type=float, default=2.0, help="demo-rob: epochs over which eps ramps linearly from 0 to --eps"
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (cosine-decayed to 0)")
    p.add_argument("--eps", type=float, default=0.3, help="l_inf radius of the evaluation attack")
    p.add_argument(
        "--train-eps",
        type=float,
        default=0.4,
        help="l_inf radius of demo-rob's adversarial training (larger than --eps: more robust, "
        "less accurate on clean images)",
    )
    p.add_argument(
        "--rob-width",
        type=int,
        default=DEMO_WIDTHS["demo-rob"],
        help="channels of demo-rob's first stage (the package loads the width in DEMO_WIDTHS)",
    )
    p.add_argument("--device", default="cpu", help="torch device for training and evaluation (cpu, cuda)")
    p.add_argument("--train-steps", type=int, default=10, help="PGD steps during adversarial training")
    p.add_argument(
        "--train-step-size",
        type=float,
        default=0.05,
        help="PGD step size during adversarial training (at full eps; scaled during the ramp)",
    )
    p.add_argument("--eval-steps", type=int, default=40)
    p.add_argument("--eval-step-size", type=float, default=0.01)
    p.add_argument(
        "--monitor",
        type=int,
        default=500,
        help="demo-rob: PGD-eval accuracy on this many test points after each epoch (0: off)",
    )
    p.add_argument(
        "--no-bf16",
        dest="bf16",
        action="store_false",
        help="train in fp32 (default: bf16 autocast for training and training attacks)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Train, save and evaluate both demo models; write the demo data and the model card."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:7.1f}s] {msg}", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    mnist = load_mnist(args.mnist)
    save_demo_data(mnist, args.out / "mnist_demo.npz")
    log(f"wrote {args.out / 'mnist_demo.npz'}")
    device = torch.device(args.device)
    x_train, y_train = (t.to(device) for t in to_tensors(mnist["x_train"], mnist["y_train"]))
    x_test, y_test = (t.to(device) for t in to_tensors(mnist["x_test"], mnist["y_test"]))
    widths = {**DEMO_WIDTHS, "demo-rob": args.rob_width}

    eval_attack = PGD(eps=args.eps, steps=args.eval_steps, step_size=args.eval_step_size)
    configs = {
        "demo-std": TrainConfig(args.std_epochs, args.batch_size, args.lr, bf16=args.bf16),
        "demo-rob": TrainConfig(
            args.rob_epochs,
            args.batch_size,
            args.lr,
            attack=PGD(eps=args.train_eps, steps=args.train_steps, step_size=args.train_step_size),
            ramp_epochs=args.ramp_epochs,
            bf16=args.bf16,
        ),
    }
    to_train = {name.strip() for name in args.train.split(",") if name.strip()}
    card_path = args.out / "demo_models_card.json"
    previous = json.loads(card_path.read_text()) if card_path.is_file() else {}
    card: dict[str, object] = {}
    train_seconds: dict[str, float] = {
        name: previous.get("settings", {}).get("train", {}).get(name, {}).get("seconds", 0.0) for name in configs
    }
    for offset, (name, cfg) in enumerate(configs.items()):
        if name not in to_train:
            continue
        seed = args.seed + 1000 * offset
        torch.manual_seed(seed)
        model = DemoCNN(width=widths[name]).to(device)
        log(f"training {name} (width {widths[name]}, {device}): {cfg}")

        def monitor(epoch: int, model: DemoCNN = model) -> None:
            xm, ym = x_test[: args.monitor], y_test[: args.monitor]
            model.to(memory_format=torch.contiguous_format)
            acc = pgd_accuracy(model, xm, ym, eval_attack, seed=args.seed)
            model.to(memory_format=torch.channels_last)
            log(f"  monitor: PGD-{eval_attack.steps} acc on first {args.monitor} test points {acc:.4f}")

        t0 = time.perf_counter()
        use_monitor = cfg.attack is not None and args.monitor > 0
        train(model, x_train, y_train, cfg, seed, log, monitor if use_monitor else None)
        train_seconds[name] = time.perf_counter() - t0
        path = args.out / f"{name.replace('-', '_')}.safetensors"
        save_weights(model, path)
        log(f"wrote {path} ({train_seconds[name]:.0f}s of training)")

    for name in configs:
        if name not in to_train and name in previous:
            card[name] = previous[name]
            continue
        model = DemoCNN(width=widths[name])
        model.load_state_dict(load_file(args.out / f"{name.replace('-', '_')}.safetensors"))
        model.to(device)
        model.eval()
        t0 = time.perf_counter()
        clean = clean_accuracy(model, x_test, y_test)
        robust = pgd_accuracy(model, x_test, y_test, eval_attack, seed=args.seed)
        card[name] = {"clean": clean, "pgd40": robust}
        log(
            f"{name}: clean {clean:.4f}, PGD-{eval_attack.steps} {robust:.4f} "
            f"(10k test set, {time.perf_counter() - t0:.0f}s)"
        )

    card["settings"] = {
        "data": "MNIST, full 10000-image official test split, inputs in [0, 1]",
        "eval_attack": {
            **asdict(eval_attack),
            "seed": args.seed,
            "precision": "fp32",
            "scoring": "robust = correct on the clean input and on every PGD iterate",
        },
        "train": {
            name: {
                **asdict(cfg),
                "width": widths[name],
                "optimizer": "Adam",
                "lr_schedule": "cosine to 0 (per step)",
                "seconds": round(train_seconds[name], 1),
            }
            for name, cfg in configs.items()
        },
        "seed": args.seed,
        "torch": torch.__version__,
        "threads": args.threads,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "machine": platform.machine(),
        "command": " ".join(["python examples/train_demo_models.py", *(argv if argv is not None else sys.argv[1:])]),
        "total_seconds": round(time.perf_counter() - t_start, 1),
    }
    atomic_write_bytes(card_path, (json.dumps(card, indent=2) + "\n").encode())
    log(f"wrote {card_path}")


if __name__ == "__main__":
    main()
