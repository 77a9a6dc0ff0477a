"""The search loop a practitioner writes in an afternoon, for the throughput comparison:
torchvision ImageFolder with PIL transforms (random crop with 4-pixel padding, horizontal
flip, normalisation) in a DataLoader, NCHW tensors, the teacher run at every step, Hinton KD
on the logits, and Optuna's multi-objective TPE over the same space and budget (a candidate
over budget is counted and pruned before training). Everything else is kdnas-free on
purpose, except the space's builder and the MACs counter, so that both loops train the same
kind of student."""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import torch
import torch.nn.functional as F

from kdnas.core.errors import KdnasError
from kdnas.cost import count_macs
from search_spaces import get_space


def _loaders(root: Path, mean, std, batch: int):
    from torchvision import datasets, transforms

    norm = transforms.Normalize(mean, std)
    train = datasets.ImageFolder(root / "train", transforms.Compose([
        transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), norm]))
    test = datasets.ImageFolder(root / "test", transforms.Compose([transforms.ToTensor(),
                                                                   norm]))
    # num_workers=0: on a 2-core machine, loader processes would compete with the training
    # threads; this is the plain loop's most favourable setting here
    return (torch.utils.data.DataLoader(train, batch_size=batch, shuffle=True),
            torch.utils.data.DataLoader(test, batch_size=batch), len(train.classes))


def run_plain_loop(root: Path, teacher: torch.nn.Module, *, space: str, budget_macs: float,
                   trials: int, epochs: int, mean, std, batch: int = 128, lr: float = 0.1,
                   temperature: float = 4.0, alpha: float = 0.9, seed: int = 0) -> dict:
    """Train ``trials`` feasible candidates; returns the student MAC-images trained, the wall
    seconds (data set opening included) and each trial's accuracy and MACs."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    train, test, classes = _loaders(root, mean, std, batch)
    sp = get_space(space)
    teacher = teacher.eval().to(memory_format=torch.contiguous_format)
    study = optuna.create_study(directions=["maximize", "minimize"],
                                sampler=optuna.samplers.TPESampler(seed=seed))
    done: list[dict] = []

    def objective(trial: optuna.Trial):
        spec = sp.sample(trial, in_channels=3, num_classes=classes, input_size=32)
        model = sp.build(spec)
        macs = count_macs(model, (3, 32, 32))
        if macs > budget_macs:
            raise optuna.TrialPruned()
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True,
                              weight_decay=5e-4)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * len(train))
        images = 0
        model.train()
        for _ in range(epochs):
            for x, y in train:
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
        model.eval()
        with torch.no_grad():
            correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in test)
        acc = correct / len(test.dataset)
        done.append({"macs": macs, "images": images, "val_accuracy": acc})
        return acc, macs

    with _quiet():
        while len(done) < trials:
            if len(study.trials) >= 100 * trials:
                raise KdnasError(f"the plain loop found {len(done)} of {trials} candidates "
                                 f"within {budget_macs / 1e6:g}M MACs in "
                                 f"{len(study.trials)} proposals: raise the budget")
            study.optimize(objective, n_trials=1)
    wall = time.perf_counter() - t0
    return {"mac_images": float(sum(d["macs"] * d["images"] for d in done)),
            "wall_seconds": wall, "trials": done,
            "proposals": len(study.trials)}


class _quiet:
    """Optuna's per-trial log lines off for the loop's duration."""

    def __enter__(self):
        self.level = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.WARNING)

    def __exit__(self, *exc):
        optuna.logging.set_verbosity(self.level)
