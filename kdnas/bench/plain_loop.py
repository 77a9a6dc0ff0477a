"""The search loop a practitioner writes in an afternoon, the peer of the throughput
comparison: torchvision ImageFolder with PIL transforms (random crop with 4-pixel padding,
horizontal flip, normalisation) in a DataLoader, the teacher run at every step, Hinton KD on
the logits, and an Optuna study. Everything else is kdnas-free on purpose, except the space's
builder and the MACs counter.

Like for like: it trains exactly the students a kdnas search trained (their Optuna
parameters enqueued, in the same order), on the same training images (kdnas' training split
of the same folder, by index), for the same steps, with the same teacher and loss, and
validates once on kdnas' validation images. Its own settings (DataLoader workers,
channels_last) are the caller's, so the bench can report the best of them as the peer."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import torch
import torch.nn.functional as F

from kdnas.cost import count_macs
from search_spaces import describe, get_space


def _datasets(root: Path, mean, std, train_indices, val_indices):
    from torchvision import datasets, transforms

    norm = transforms.Normalize(mean, std)
    train = datasets.ImageFolder(root / "train", transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), norm]))
    plain = datasets.ImageFolder(root / "train", transforms.Compose([transforms.ToTensor(),
                                                                     norm]))
    sub = torch.utils.data.Subset
    return sub(train, list(train_indices)), sub(plain, list(val_indices)), len(train.classes)


def run_plain_loop(root: Path, teacher: torch.nn.Module, *, space: str, trials: list[dict],
                   steps: int, train_indices, val_indices, mean, std, batch: int = 128,
                   workers: int = 0, channels_last: bool = False, lr: float = 0.1,
                   temperature: float = 4.0, alpha: float = 0.9, seed: int = 0) -> dict:
    """Train each of ``trials`` (``{"params": ...}``: a kdnas trial's Optuna parameters) for
    ``steps`` steps; returns the student MAC-images trained, the wall seconds (opening the
    data set included) and each trial's architecture, MACs, images and accuracy."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    train, val, classes = _datasets(root, mean, std, train_indices, val_indices)
    loader = torch.utils.data.DataLoader(train, batch_size=batch, shuffle=True,
                                         num_workers=workers,
                                         persistent_workers=workers > 0)
    val_loader = torch.utils.data.DataLoader(val, batch_size=batch, num_workers=0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    sp = get_space(space)
    teacher = teacher.eval().to(memory_format=fmt)
    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=optuna.samplers.TPESampler(seed=seed))
    for t in trials:
        study.enqueue_trial(t["params"])
    done: list[dict] = []

    def objective(trial: optuna.Trial):
        spec = sp.sample(trial, in_channels=3, num_classes=classes, input_size=32)
        model = sp.build(spec).to(memory_format=fmt)
        macs = count_macs(model, (3, 32, 32))
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True,
                              weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps)
        images, step = 0, 0
        model.train()
        while step < steps:
            for x, y in loader:
                x = x.contiguous(memory_format=fmt)
                out = model(x)
                with torch.no_grad():
                    t_out = teacher(x)
                kd = F.kl_div(F.log_softmax(out / temperature, 1),
                              F.softmax(t_out / temperature, 1), reduction="batchmean")
                loss = (1 - alpha) * F.cross_entropy(out, y) + alpha * temperature ** 2 * kd
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                images += len(y)
                step += 1
                if step == steps:
                    break
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(x.contiguous(memory_format=fmt)).argmax(1) == y).sum())
                          for x, y in val_loader)
        acc = correct / len(val)
        done.append({"arch": describe(spec), "macs": macs, "images": images, "steps": step,
                     "val_accuracy": acc})
        return acc, macs

    with _quiet():
        study.optimize(objective, n_trials=len(trials))
    wall = time.perf_counter() - t0
    return {"mac_images": float(sum(d["macs"] * d["images"] for d in done)),
            "wall_seconds": wall, "trials": done, "workers": workers,
            "channels_last": channels_last}


class _quiet:
    """Optuna's per-trial log lines off for the loop's duration."""

    def __enter__(self):
        self.level = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)

    def __exit__(self, *exc):
        optuna.logging.set_verbosity(self.level)
