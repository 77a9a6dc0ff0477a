"""What the user sees while kdnas works: a line per event, and one progress bar for training
steps (a bar on a terminal; elsewhere, such as logs and CI, a line every half minute)."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

from kdnas.core.budget import fmt_count
from kdnas.report import front_frame
from kdnas.report.frames import trials_frame
from kdnas.search.storage import load_record
from search_spaces import describe


def say(msg: str = "") -> None:
    print(msg, flush=True)


class StepBar:
    """Progress of one training run: ``bar(step, total, loss)`` after every step."""

    def __init__(self, desc: str, *, leave: bool = True, every_s: float = 30.0) -> None:
        self.desc, self.leave, self.every_s = desc, leave, every_s
        self.tty = sys.stderr.isatty()
        self.bar: tqdm | None = None
        self.t0 = self.last = time.perf_counter()

    def __call__(self, step: int, total: int, loss: float) -> None:
        if self.tty:
            if self.bar is None:
                self.bar = tqdm(total=total, desc=self.desc, unit="step", leave=self.leave,
                                file=sys.stderr)
            self.bar.update(1)
            if step % 10 == 0:
                self.bar.set_postfix(loss=f"{loss:.3f}")
            if step >= total:
                self.close()
        elif time.perf_counter() - self.last >= self.every_s or (
                step == total and self.last > self.t0):
            self.last = time.perf_counter()
            spent = self.last - self.t0
            eta = spent / step * (total - step)
            say(f"  {self.desc}: step {step}/{total}, loss {loss:.3f}, {spent:.0f}s spent, "
                f"about {eta:.0f}s to go")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class SearchProgress:
    """Turns study events into a line per trial and a step bar for each training run."""

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.bar: StepBar | None = None
        self.t_start = time.perf_counter()

    def _open_bar(self) -> None:
        self.bar = StepBar("  training", leave=False)

    def _close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __call__(self, kind: str, info: dict) -> None:
        if kind == "step":
            if self.bar is not None:
                self.bar(info["step"], info["total"], info["loss"])
            return
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(info)

    def _on_study_start(self, info: dict) -> None:
        if info["trained"]:
            say(f"resuming study {self.cfg.study!r}: {info['trained']} of {info['target']} "
                "candidates already trained")
        if info.get("stale"):
            say(f"  {info['stale']} trial(s) of a process that died were marked failed; their "
                "candidates are trained again")

    def _on_waiting(self, info: dict) -> None:
        say(f"  {info['trained']} of {info['target']} trained; waiting for other workers' "
            "last trials")

    def _on_trial_start(self, info: dict) -> None:
        self._close_bar()
        c = info["cost"]
        lat = f", {c.latency_ms:.2f} ms" if c.latency_ms is not None else ""
        if info.get("estimate") is not None:
            lat += f", about {info['estimate']:.0f} s to train"
        again = f", again (trial {info['retry_of']} was cut off)" \
            if info.get("retry_of") is not None else ""
        say(f"trial {info['index']}/{info['target']} (#{info['trial']}) "
            f"{describe(info['spec'])}: {fmt_count(c.macs)} MACs, "
            f"{fmt_count(c.params)} params{lat}, kd {info['kd']}{again}")
        self._open_bar()

    def _on_reference_start(self, info: dict) -> None:
        c = info["cost"]
        say(f"reference {info['name']}: {fmt_count(c.macs)} MACs, {fmt_count(c.params)} "
            "params, same brief recipe")
        self._open_bar()

    def _on_reference_end(self, info: dict) -> None:
        self._close_bar()
        say(f"  val acc {100 * info['accuracy']:.2f}%")

    def _on_infeasible(self, info: dict) -> None:
        c = info["cost"]
        say(f"  trial {info['trial']}: {fmt_count(c.macs)} MACs, {fmt_count(c.params)} "
            f"params: {info.get('reason', 'over budget')}, not trained")

    def _on_duplicate(self, info: dict) -> None:
        say(f"  trial {info['trial']}: the same candidate as trial {info['twin']}: its result "
            "is reused, not trained again (not counted)")

    def _on_noise_start(self, info: dict) -> None:
        say(f"noise check: training the knee (trial {info['trial']}) again with seed "
            f"{info['seed']}")
        self._open_bar()

    def _on_noise_end(self, info: dict) -> None:
        self._close_bar()
        a, b = (100 * v for v in info["accuracies"])
        say(f"  {a:.2f}% and {b:.2f}%: a seed spread of {100 * info['spread']:.2f} points")

    def _on_trial_end(self, info: dict) -> None:
        self._close_bar()
        front = front_frame(trials_frame(load_record(info["study"])), self.cfg.cost_columns)
        best = f"{100 * front.val_accuracy.max():.2f}%" if len(front) else "-"
        say(f"  val acc {100 * info['accuracy']:.2f}% in {info['seconds']:.1f}s | "
            f"front {len(front)} | best within budget {best} | "
            f"{(time.perf_counter() - self.t_start) / 60:.1f} min so far")
