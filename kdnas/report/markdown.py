"""pareto.md: the front as a Markdown table, with the command that exports each row."""

from __future__ import annotations

import pandas as pd

from kdnas.core.budget import fmt_count
from kdnas.core.settings import SearchConfig
from kdnas.report.frames import (
    acc_text,
    at_once_text,
    curve_text,
    export_command,
    fmt_value,
    hypervolume_text,
    noise_text,
    time_text,
)


def front_markdown(front: pd.DataFrame, info: dict, cfg: SearchConfig) -> str:
    lines = [f"# Study {cfg.study}: accuracy versus MACs", "",
             f"Budget: {info['budget']} = {info['budget_described']}. MACs are "
             "multiply-accumulates at batch 1 (torch's flop counter); FLOPs = 2 x MACs.", ""]
    t = info.get("teacher_val_accuracy")
    if t is not None:
        lines += [f"Teacher validation accuracy: {100 * t:.2f}%", ""]
    counts = ", ".join(f"{v} {k}" for k, v in sorted(info["trials_by_state"].items()))
    n = info["front_size"]
    lines += [f"Trials: {counts}. Pareto front: {n} student{'' if n == 1 else 's'}; hypervolume "
              f"{hypervolume_text(info)}.", ""]
    if info.get("caveat"):
        lines += [f"**Read this first.** {info['caveat']}", ""]
    if info.get("against_references"):
        lines += [f"**Against hand design.** {info['against_references']['sentence']}", ""]
    if info.get("noise"):
        lines += [noise_text(info["noise"]).capitalize() + ".", ""]
    if front.empty:
        return "\n".join(lines + ["No trained student within budget yet.", ""])
    lines += ["Val acc: with its 95% interval (the validation set's sampling error); `tie`: "
              "within that error of the knee, which is the cheapest of its ties.", "",
              "| rank | trial | architecture | val acc | MACs | FLOPs | params | latency ms "
              "(p50/p90) | train s | export |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    order = front.sort_values("val_accuracy", ascending=False)
    for rank, (_, r) in enumerate(order.iterrows(), 1):
        knee = " (knee)" if r.knee else ""
        lines.append(
            f"| {rank} | {int(r.trial)}{knee} | {r.arch} | {acc_text(r)} | "
            f"{fmt_count(r.macs)} | {fmt_count(r.flops)} | {fmt_count(r.params)} | "
            f"{fmt_value(r.latency_ms)}/{fmt_value(r.latency_p90_ms)} | "
            f"{fmt_value(r.train_seconds, '.0f')} | "
            f"`{export_command(cfg, int(r.trial))}` |")
    setting = front.latency_setting.dropna()
    if len(setting):
        lines += ["", f"Latency measured on this machine: {setting.iloc[0]}."]
    if curve_text(info.get("curves")):
        lines += ["", curve_text(info["curves"]).capitalize() + "."]
    lines += ["", f"Time: {time_text(info)}" + (
        f"; candidates trained {at_once_text(info['trained_at_once'])}"
        if info.get("trained_at_once") else "") + "."]
    return "\n".join(lines + [""])
