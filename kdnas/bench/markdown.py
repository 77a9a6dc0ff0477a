"""BENCHMARKS.md: every figure of ``kdnas bench`` beside its target, then the details."""

from __future__ import annotations

from kdnas.bench.gpu import gpu_lines, sweep_lines
from kdnas.targets import figure, meets, verdict


def _target(key: str, targets: dict) -> tuple[str, float] | None:
    family = key.split(".")[0] + ".*"
    return targets.get(key) or targets.get(family)


def _row(key: str, value: float, targets: dict) -> str:
    t = _target(key, targets)
    if t is None:
        return f"| `{key}` | {value:.3g} | - | - |"
    op, bound = t
    v = verdict(op, bound, value)
    return (f"| `{key}` | {figure(value, op, bound, '.3g')} | {op} {bound:g} | "
            f"{v if v == 'met' else f'**{v}**'} |")


def benchmarks_markdown(res: dict, targets: dict) -> str:
    if "efficiency" not in res:  # a GPU run (or the CPU workers part) before any CPU run
        return "\n".join(["# kdnas benchmarks", "", "CPU figures: not measured yet "
                          "(`kdnas bench`).", "", *cpu_lines(res.get("cpu"), targets),
                          *gpu_lines(res.get("gpu")), *sweep_lines(res.get("gpu_workers"))])
    d, w, m = res["details"], res["workload"], res["machine"]
    s = d["search"]
    lines = ["# kdnas benchmarks", "",
             f"Machine: {m['cpu']}, {m['threads']} torch threads, {m['device']}; torch "
             f"{m['torch']}, Python {m['python']}. Command: `{res['command']}` "
             f"({res['seconds'] / 60:.1f} min). Every ratio is measured within this one run.",
             "", f"Workload: CIFAR-10 JPEGs, {10 * w['per_class']} training images "
             f"({10 * w['test_per_class']} test), {w['epochs']} epoch a trial, "
             f"{w['trials']} trials a search, budget {w['budget_macs'] / 1e6:g}M MACs; teacher "
             f"{d['teacher']['arch']} ({(d['teacher']['macs'] or 0) / 1e6:.0f}M MACs, seeded, "
             "untrained unless --teacher: timing does not depend on weights).", "",
             "| figure | value | target | |", "| --- | --- | --- | --- |"]
    for fam, v in res["efficiency"].items():
        lines.append(_row(f"efficiency.{fam}", v, targets))
    for meth, v in res["teacher_overhead"].items():
        lines.append(_row(f"teacher_overhead.{meth}", v, targets))
    lines.append(_row("framework_overhead", res["framework_overhead"], targets))
    if "framework_proper" in res:
        lines.append(_row("framework_proper", res["framework_proper"], targets))
    lines.append(_row("throughput_vs_plain_loop", res["throughput_vs_plain_loop"], targets))
    if "throughput_vs_plain_loop_no_cache" in res:
        lines.append(_row("throughput_vs_plain_loop_no_cache",
                          res["throughput_vs_plain_loop_no_cache"], targets))
    for key in ("trials_per_hour_vs_one_at_a_time", "contended_slowdown",
                "estimate_error_median"):
        if key in res.get("cpu", {}):
            lines.append(_row(f"cpu.{key}", res["cpu"][key], targets))
    mem = res["memory"]
    lines += [f"| `memory.peak_rss_mb` | {mem['peak_rss_mb']:.0f} | - | data set "
              f"{mem['dataset_mb']:.0f} MB as uint8 |",
              f"| `memory.teacher_cache_mb` | {mem['teacher_cache_mb']:.0f} | bounded | "
              "`--cache-limit`, default half the free disk |", ""]
    lines += [f"**Caveat.** {c}" for c in res.get("caveats", [])] + \
        ([""] if res.get("caveats") else [])
    lines += unmet_lines(res, targets)
    lines += cpu_lines(res.get("cpu"), targets)
    lines += ["## Training efficiency per family", "",
              f"This machine's fp32 GEMM: {d['gemm_flops'] / 1e9:.1f} GFLOP/s (1024x1024). "
              "Student training FLOP/s = 3 x forward MACs x 2 per image over the seconds of "
              "student forward/backward (cross-entropy alone, batch 128, channels_last). "
              "Step ms: measured over the run, and as the search estimates it before a "
              "candidate trains (three timed steps on random images: `train_step_ms`).", "",
              "| family | student | MACs | images/s | GFLOP/s | efficiency | step ms | "
              "estimated |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for fam, t in d["training"].items():
        est = t.get("estimated_step_ms")
        lines.append(f"| {fam} | {d['students'][fam]['arch']} | "
                     f"{t['macs'] / 1e6:.1f}M | {t['images_per_second']:.0f} | "
                     f"{t['flops'] / 1e9:.1f} | {res['efficiency'][fam]:.2f} | "
                     f"{t.get('step_ms', 0):.0f} | {'-' if est is None else f'{est:.0f}'} |")
    o = d["teacher_overhead"]
    lines += ["", "## Teacher overhead per method", "",
              f"Trial time (training and validation) of the resnet student, teacher read from "
              f"the study's cache, over cross-entropy alone; median over "
              f"{w['rounds']} alternating round(s). The study's first trial, which writes the "
              f"cache, took {o['fitnets_writes_cache']:.2f}x; running the teacher at every "
              f"step instead of reading the cache: {o['fitnets_no_cache']:.2f}x."
              + _logit_first(o.get("logit_first_trial")), "",
              "| method | ratio | range | seconds |", "| --- | --- | --- | --- |"]
    for meth, r in o["ratio"].items():
        lo, hi = o["ratio_range"][meth]
        lines.append(f"| {meth} | {r:.2f} | {lo:.2f}-{hi:.2f} | {o['seconds'][meth]:.1f} |")
    lines += ["", "## Where a search's time goes", "",
              f"A fresh kdnas search of {s['trained']} trained trials ({s['proposals']} "
              f"proposals; blocks {', '.join(map(str, s['arch']))}) took "
              f"{s['wall_seconds']:.1f} s from loading to the written report.", "",
              "| phase | share of wall time |", "| --- | --- |"]
    for phase, v in sorted(s["shares"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {phase} | {100 * v:.1f}% |")
    lines += plain_lines(res)
    return "\n".join(lines + gpu_lines(res.get("gpu")) + sweep_lines(res.get("gpu_workers")))


def plain_lines(res: dict) -> list[str]:
    """The comparison with the plain loop: what both trained, each of the plain loop's
    settings, the peer."""
    d = res["details"]
    p, s, n = d["plain_loop"], d["search"], d.get("search_no_cache")
    if "settings" not in p:  # a run made before the like-for-like comparison
        return ["", "## Against a plain loop", "", f"kdnas / plain loop: "
                f"{res['throughput_vs_plain_loop']:.2f}x (not like for like: each loop drew "
                "its own students)", ""]
    same = res.get("like_for_like", {})
    out = ["", "## Against a plain loop, like for like", "",
           "The plain Optuna + torchvision loop (ImageFolder, PIL transforms, DataLoader, the "
           "teacher run at every step) trains exactly the students the kdnas search trained, "
           "in the same order, on the same training images (kdnas' split, by index) for the "
           "same steps, with the same teacher and Hinton KD, and validates once on kdnas' "
           "validation images. Same students in all three runs: "
           f"{'yes' if same.get('students') else '**no**'}; same images seen per trial: "
           f"{'yes' if same.get('images') else '**no**'}. kdnas reads the decoded images from "
           "its data cache (made on first use, outside the timed runs when the work folder is "
           "kept); its learning curve (validation points during training) is counted as "
           "framework.", "",
           "| student | MACs | images | steps |", "| --- | --- | --- | --- |"]
    out += [f"| {t['arch']} | {t['macs'] / 1e6:.1f}M | {t['images']} | {t['steps']} |"
            for t in s["trials"]]
    out += ["", "| run | wall s | G student MAC-images/s | kdnas / this |",
            "| --- | --- | --- | --- |"]
    k_rate = s["mac_images"] / s["wall_seconds"]
    runs = [("kdnas, teacher cache", s), *([("kdnas, no teacher cache", n)] if n else [])]
    for name, r in runs:
        out.append(f"| {name} | {r['wall_seconds']:.1f} | "
                   f"{r['mac_images'] / r['wall_seconds'] / 1e9:.2f} | - |")
    for r in p["settings"]:
        rate = r["mac_images"] / r["wall_seconds"]
        peer = " (the peer)" if r["wall_seconds"] == p["wall_seconds"] else ""
        out.append(f"| plain loop, {r['workers']} loader workers, "
                   f"{'channels_last' if r['channels_last'] else 'NCHW'}{peer} | "
                   f"{r['wall_seconds']:.1f} | {rate / 1e9:.2f} | {k_rate / rate:.2f}x |")
    out += ["", "Each lever tried, with its figures before and after: "
            "[benchmarks/levers.md](benchmarks/levers.md).", ""]
    return out


def _steps(res: dict) -> str:
    trials = res["details"]["search"].get("trials") or [{}]
    return str(trials[0].get("steps", "?"))


def _met(key: str, value: float, targets: dict) -> bool:
    return meets(*_target(key, targets), value)


def cpu_lines(c: dict | None, targets: dict) -> list[str]:
    """The CPU workers part (:mod:`kdnas.bench.cpu`): candidates at once as planned by
    default against one at a time, alone and beside a busy process, and the estimates."""
    if not c:
        return []
    r = c["runs"]
    load = c["load"]

    def plan(run: dict) -> str:
        return f"{run['workers']} worker(s) x {run['threads']} thread(s)"
    lines = ["## Candidates at once on this CPU", "",
             f"`kdnas bench`, step 5 ({c.get('machine', {}).get('cpu', 'this CPU')}, "
             f"{c['usable_cores']} usable cores): the same {len(c['students'])} students "
             f"({', '.join(s['arch'] for s in c['students'])}), {load['steps']} steps each of "
             "the search's default recipe with its teacher cache (written before any timing), "
             "the same initialisations, taken from one queue by each setting's workers. "
             "Beside a busy process: a small convolutional net trained in a loop at torch's "
             f"default threads ({c['torch_default_threads']}), the plan made after it started.",
             "", "| setting | plan | wall s | trial-time estimate off by (median) |",
             "| --- | --- | --- | --- |"]
    for name, key, err in (("one at a time (the default before)", "one_at_a_time",
                            "one_at_a_time"), ("as planned now, alone", "auto", "alone"),
                           ("as planned now, beside a busy process", "auto_busy", "contended"),
                           ("one at a time, beside a busy process", "one_at_a_time_busy",
                            None)):
        if key not in r:  # the quick form leaves the last out
            continue
        e = c["estimate_error"].get(err) if err else None
        lines.append(f"| {name} | {plan(r[key])} | {r[key]['wall_seconds']:.1f} | "
                     + ("-" if e is None else f"{100 * e:.0f}%") + " |")
    lines += ["", "| figure | value | target | |", "| --- | --- | --- | --- |"]
    for key in ("trials_per_hour_vs_one_at_a_time", "contended_slowdown",
                "estimate_error_median"):
        lines.append(_row(f"cpu.{key}", c[key], targets))
    before = c["contended_slowdown_one_at_a_time"]
    lines += ["| `cpu.contended_slowdown_one_at_a_time` | "
              + ("not run" if before is None else f"{before:.3g}")
              + " | - | the default before |", ""]
    if not _met("cpu.contended_slowdown", c["contended_slowdown"], targets):
        a, b = r["auto"], r["auto_busy"]
        per = (sum(x["train_seconds"] for x in b["runs"])
               / sum(x["train_seconds"] for x in a["runs"]))
        lines += [f"`cpu.contended_slowdown` is not met: beside the busy process the plan "
                  f"ran {b['workers']} worker(s) instead of {a['workers']} (it leaves the "
                  f"cores it finds busy to their owner), and each student trained "
                  f"{per:.2f}x as long (its thread shares the cores with the neighbour's "
                  f"{c['torch_default_threads']}); {a['workers'] / b['workers']:.2g} x "
                  f"{per:.2f} = {a['workers'] / b['workers'] * per:.2f}, measured "
                  f"{c['contended_slowdown']:.2f}."
                  + ("" if before is None else " One at a time with every core a thread, "
                     f"the default before, slowed {before:.2f}x beside the same process."),
                  ""]
    return lines


def unmet_lines(res: dict, targets: dict) -> list[str]:
    """Each target this run did not meet, with why, in figures from the same run."""
    d, s = res["details"], res["details"]["search"]
    sh, out = s["shares"], []
    eff = {k: v for k, v in res["efficiency"].items()
           if not _met(f"efficiency.{k}", v, targets)}
    if eff:
        best = max(d["training"].values(), key=lambda t: t["flops"])
        out.append(
            f"- **efficiency** ({', '.join(eff)}): the students' convolutions reach at most "
            f"{best['flops'] / 1e9:.0f} of the {d['gemm_flops'] / 1e9:.0f} GFLOP/s this CPU's "
            "GEMM does: their layers are small (tens to hundreds of channels on 32x32 images "
            "and smaller), and "
            "depthwise, grouped and 1x1 convolutions (mobilenet, shufflenet, bottleneck) move "
            "more bytes per MAC, so they are bound by memory, not arithmetic. Since a budget in "
            "MACs cannot see that, the search measures each candidate's training step before "
            "it trains (`train_step_ms`, `--objectives train_time`) and the report shows it.")
    over = d["teacher_overhead"]
    slow = [m for m, v in res["teacher_overhead"].items()
            if not _met(f"teacher_overhead.{m}", v, targets)]
    if slow:
        within = [m for m in slow if over["ratio_range"][m][0] <= targets[
            "teacher_overhead.*"][1]]
        out.append(
            f"- **teacher_overhead** ({', '.join(slow)}): "
            + (f"{' and '.join(within)} met the target in some of the rounds (ranges in "
               "the table below), so the miss is within this shared machine's noise. "
               if within else "")
            + "The teacher's outputs are read from the cache; what is left is the "
            "distillation loss itself (sp and pkt compare every pair of a batch's images).")
    proper = s.get("default_recipe")
    if proper and not _met("framework_proper", res["framework_proper"], targets):
        psh = proper["shares"]
        parts = {"propose": "sampling, cost counting and latency", "estimate":
                 "the step-time estimate", "signals": "the training-free signals", "data":
                 "batches", "curve": "the learning curve",
                 "storage": "checks and storage", "other": "checkpoints and progress",
                 "outside trials": "loading, the references and the report"}
        named = ", ".join(f"{v} {100 * psh.get(k, 0.0):.1f}%" for k, v in sorted(
            parts.items(), key=lambda kv: -psh.get(kv[0], 0.0)))
        out.append(
            f"- **framework_proper** ({proper['trained']} trials of the default recipe, "
            f"{proper['trials'][0]['steps']} steps each): the framework proper (all but the "
            f"student's {100 * psh['student']:.0f}%, the teacher's "
            f"{100 * psh['teacher']:.0f}% and the final validation's "
            f"{100 * psh.get('eval', 0.0):.0f}%) is {100 * res['framework_proper']:.1f}% of "
            f"the search's wall time: {named}.")
    if not _met("throughput_vs_plain_loop", res["throughput_vs_plain_loop"], targets):
        ceiling = res["throughput_vs_plain_loop"] / max(sh["student"], 1e-9)
        out.append(
            f"- **throughput_vs_plain_loop**: {res['throughput_vs_plain_loop']:.2f}x. With no "
            f"overhead at all (only its student forward/backward) kdnas would reach "
            f"{ceiling:.2f}x: the rest of the gap to the target is the student's step itself, the "
            "same convolutions in the same layout in both loops (the peer is the plain loop "
            "at its best settings, channels_last included); what kdnas gains over it is the "
            "teacher's cached outputs and data resident in memory, on trials of "
            f"{_steps(res)} steps whose fixed costs (loading, proposals, the report) weigh "
            "more than in a real search.")
    key = "throughput_vs_plain_loop_no_cache"
    if key in res and not _met(key, res[key], targets):
        out.append(
            f"- **{key}**: {res[key]:.2f}x. Without the cache kdnas runs the teacher at every "
            "step as the plain loop does, so what is left of its gain is data resident in "
            "memory and its own layout against the plain loop's best settings.")
    if not out:
        return []
    return ["## Targets not met, and why", "", *out, ""]


def _logit_first(f: dict | None) -> str:
    """The sentence on a logit method's first trial (older results have none)."""
    if not f:
        return ""
    return (f" A logit method's study (dkd-ls, for one) caches the teacher's logits "
            f"alone: its first trial took {f['writes_logits_only']:.2f}x, writing "
            f"{f['logits_only_mb']:.1f} MB, against {f['writes_features']:.2f}x and "
            f"{f['features_mb']:.0f} MB with the stage features.")
