"""What the user sees while kdnas works: a line per event, and one progress bar for training
steps (a bar on a terminal; elsewhere, such as logs and CI, a line every half minute)."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

from kdnas.core.budget import fmt_count
from kdnas.search import events as ev
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

    def __call__(self, event: ev.SearchEvent) -> None:
        if isinstance(event, ev.Step):
            if self.bar is not None:
                self.bar(event.step, event.total, event.loss)
            return
        handler = getattr(self, f"_on_{type(event).__name__}", None)
        if handler is not None:
            handler(event)

    def _on_StudyStart(self, e: ev.StudyStart) -> None:
        if e.trained:
            say(f"resuming study {self.cfg.study!r}: {e.trained} of {e.target} candidates "
                "already trained")
        if e.stale:
            say(f"  {e.stale} trial(s) of a process that died were marked failed; their "
                "candidates are trained again")
        if e.lead:
            say(f"  this study's references, promotions and noise check are trained on "
                f"{e.lead}, the machine that made it; this one trains candidates")

    def _on_Waiting(self, e: ev.Waiting) -> None:
        say(f"  {e.trained} of {e.target} trained; waiting for other workers' last trials")

    def _on_TrialStart(self, e: ev.TrialStart) -> None:
        self._close_bar()
        c = e.cost
        lat = f", {c.latency_ms:.2f} ms" if c.latency_ms is not None else ""
        if e.estimate is not None:
            lat += f", about {e.estimate:.0f} s to train"
        again = f", again (trial {e.retry_of} was cut off)" if e.retry_of is not None else ""
        say(f"trial {e.index}/{e.target} (#{e.trial}) {describe(e.spec)}: "
            f"{fmt_count(c.macs)} MACs, {fmt_count(c.params)} params{lat}, kd {e.kd}{again}")
        self._open_bar()

    def _on_ReferenceStart(self, e: ev.ReferenceStart) -> None:
        say(f"reference {e.name}: {fmt_count(e.cost.macs)} MACs, {fmt_count(e.cost.params)} "
            "params, same brief recipe")
        self._open_bar()

    def _on_ReferenceEnd(self, e: ev.ReferenceEnd) -> None:
        self._close_bar()
        say(f"  val acc {100 * e.accuracy:.2f}%")

    def _on_TrainingFailed(self, e: ev.TrainingFailed) -> None:
        self._close_bar()
        if e.again:
            say(f"  {e.reason}: training it again with the stabler recipe")
            self._open_bar()
        else:
            say(f"  {e.reason}, again: recorded as failed (not on the front, not told to the "
                "sampler as an accuracy)")

    def _on_Infeasible(self, e: ev.Infeasible) -> None:
        say(f"  trial {e.trial}: {fmt_count(e.cost.macs)} MACs, {fmt_count(e.cost.params)} "
            f"params: {e.reason}, not trained")

    def _on_Duplicate(self, e: ev.Duplicate) -> None:
        say(f"  trial {e.trial}: the same candidate as trial {e.twin}: its result is reused, "
            "not trained again (not counted)")

    def _on_NoiseStart(self, e: ev.NoiseStart) -> None:
        say(f"noise check: training the knee (trial {e.trial}) again with seed {e.seed}")
        self._open_bar()

    def _on_NoiseEnd(self, e: ev.NoiseEnd) -> None:
        self._close_bar()
        a, b = (100 * v for v in e.accuracies)
        say(f"  {a:.2f}% and {b:.2f}%: a seed spread of {100 * e.spread:.2f} points")

    def _on_PromotionStart(self, e: ev.PromotionStart) -> None:
        self._close_bar()
        say(f"promoted: trial {e.trial} trained on to rung {e.rung}x ({e.steps} steps in all)")
        self._open_bar()

    def _on_PromotionEnd(self, e: ev.PromotionEnd) -> None:
        self._close_bar()
        say(f"  val acc {100 * e.accuracy:.2f}% at rung {e.rung}x in {e.seconds:.1f}s")

    def _on_PromotionFailed(self, e: ev.PromotionFailed) -> None:
        self._close_bar()
        say(f"  promotion of trial {e.trial} to rung {e.rung}x failed ({e.reason}): it keeps "
            "the rung it reached")

    def _on_TrialEnd(self, e: ev.TrialEnd) -> None:
        self._close_bar()
        best = "-" if e.best_accuracy is None else f"{100 * e.best_accuracy:.2f}%"
        say(f"  val acc {100 * e.accuracy:.2f}% in {e.seconds:.1f}s | front {e.front_size} | "
            f"best within budget {best} | "
            f"{(time.perf_counter() - self.t_start) / 60:.1f} min so far")
