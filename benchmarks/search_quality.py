"""Proxy fidelity: does kdnas' brief recipe rank candidates like much longer training?

Candidates of one MACs band (the largest at most 1.25x the smallest, so MACs cannot explain
the ranking), drawn with a fixed seed from every built-in family, are trained by kdnas' own
search loop (one resumable study per recipe, seed and space, the candidates enqueued) with

- ``brief``: the CLI's default brief recipe, feature distillation;
- ``brief_ce``: the same steps with cross-entropy alone;
- ``long``: the same method for ``--factor`` (8) times the steps: the ground truth;

each over ``--seeds``. Reported: Kendall's tau between each proxy and the ground truth
(mean over seeds), the ground truth's own seed-to-seed tau (the ceiling any proxy can
reach), and each recipe's seed spread. More recipes: ``--recipe NAME=steps:800,kd:at``.

    python -m benchmarks.search_quality                  # CIFAR-10, resumes from --work
    python -m benchmarks.search_quality --data digits --candidates 4 --steps 5  # a tiny run

Every raw result is written to ``reports/search_quality.json`` as it comes; the figures and
plot to ``reports/search_quality.md`` / ``.png``. Interrupt at any time: the same command
goes on where it stopped (the studies, the teacher and the data stay in ``--work``). A
candidate recorded in the json is not trained again even where ``--work`` is gone, and the
default study's teacher is kept in ``benchmarks/teachers/``, so a new checkout goes on too.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from optuna.trial import TrialState

from kdnas.bench.workload import draw_in_band  # the bench's own draw
from benchmarks.common import (
    add_setup_args,
    check_teacher,
    data_and_teacher,
    update_results,
)

FAMILIES = (("resnet", "basic"), ("resnet", "bottleneck"), ("mobilenet", None),
            ("shufflenet", None))
RECIPES = {"brief": {}, "brief_ce": {"kd": "none"}, "long": {"factor": 8}}
GROUND_TRUTH = "long"


def pick_candidates(data, lo: float, hi: float, count: int, seed: int) -> list[dict]:
    """``count`` distinct candidates with MACs in [lo, hi], spread over FAMILIES (resnet
    split by block type), drawn at random with a fixed seed; a draw over the band has random
    numeric choices stepped down until it is not (as kdnas' sampler repairs a draw)."""
    from kdnas.cost import count_params
    from search_spaces import build, describe

    rng = np.random.RandomState(seed)
    quota = [count // len(FAMILIES) + (i < count % len(FAMILIES))
             for i in range(len(FAMILIES))]
    out: list[dict] = []
    for (family, block), want in zip(FAMILIES, quota, strict=True):
        fixed = {"block": block} if block is not None else None
        for c in draw_in_band(family, data, lo, hi, want, rng, fixed=fixed):
            spec = c.pop("spec")
            out.append({**c, "arch": describe(spec), "params_count": count_params(build(spec))})
    return out


def parse_recipe(text: str) -> tuple[str, dict]:
    """``NAME=key:value,key:value`` -> (NAME, overrides of SearchConfig, plus ``factor``)."""
    name, _, body = text.partition("=")
    out: dict = {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition(":")
        for cast in (int, float, str):
            try:
                out[key] = cast(value)
                break
            except ValueError:
                continue
    return name, out


def recipe_config(base, name: str, over: dict, seed: int, space: str, n_train: int,
                  trials: int):
    over = dict(over)
    factor = over.pop("factor", None)
    cfg = dataclasses.replace(base, study=f"sq-{name}-s{seed}-{space}", space=space,
                              seed=seed, trials=trials, **over)
    if factor:
        cfg = dataclasses.replace(cfg, steps=int(factor * base.brief_steps(n_train)))
    return cfg


def run_study(cfg, cands: list[dict], teacher, data, work: Path, on_result) -> None:
    """Train the candidates in kdnas' own (resumable) study ``cfg.study``: each is enqueued
    until it has been trained once; the teacher cache is shared by every study."""
    from kdnas.cli.progress import SearchProgress, say
    from kdnas.search.events import TrialEnd
    from kdnas.search.loop import run_search
    from kdnas.search.storage import open_study

    shared = work / "teacher_cache"
    shared.mkdir(parents=True, exist_ok=True)
    link = cfg.study_dir / "teacher_cache"
    if not link.exists():
        cfg.study_dir.mkdir(parents=True, exist_ok=True)
        link.symlink_to(shared.resolve(), target_is_directory=True)
    study = open_study(cfg, create=True)
    for _ in range(3):  # an interrupted trial leaves its candidate untrained: enqueue it again
        trials = study.get_trials(deepcopy=False)
        done = {t.user_attrs.get("spec_id") for t in trials
                if t.state == TrialState.COMPLETE and t.user_attrs.get("trained")}
        waiting = [t.system_attrs.get("fixed_params") for t in trials
                   if t.state == TrialState.WAITING]
        todo = [c for c in cands if c["id"] not in done]
        if not todo:
            break
        for c in todo:
            if c["params"] not in waiting:
                study.enqueue_trial(c["params"])
        run_cfg = dataclasses.replace(cfg, trials=len(done) + len(todo))
        say(f"{cfg.study}: {len(todo)} of {len(cands)} candidates to train")
        shown = SearchProgress(run_cfg)

        def on_event(event, shown=shown) -> None:
            shown(event)  # a line per candidate, a step line every half minute
            if isinstance(event, TrialEnd):
                on_result(event)

        out = run_search(run_cfg, teacher, data, on_event=on_event)
        if out.interrupted:
            raise KeyboardInterrupt


def collect(cfg, cands: list[dict]) -> dict:
    """The study's result for each candidate: accuracy, time, learning curve."""
    from kdnas.search.storage import open_study

    ids = {c["id"] for c in cands}
    out = {}
    for t in open_study(cfg, create=True).get_trials(deepcopy=False,
                                                      states=(TrialState.COMPLETE,)):
        u = t.user_attrs
        if u.get("trained") and u.get("spec_id") in ids:
            out[u["spec_id"]] = {"val_accuracy": u["val_accuracy"], "trial": t.number,
                                 "seconds": u.get("train_seconds"),
                                 "steps": (u.get("recipe") or {}).get("steps"),
                                 "curve": u.get("learning_curve")}
    return out


def summarise(res: dict) -> dict:
    """Kendall's tau of every recipe against the ground truth, the ground truth's own
    seed-to-seed tau and every recipe's seed spread, from the raw runs."""
    cands = pd.DataFrame(res["candidates"]).set_index("id")
    acc = {}
    for key, runs in res["runs"].items():
        name, seed = key.rsplit("/s", 1)
        for cid, r in runs.items():
            acc.setdefault(name, {}).setdefault(int(seed), {})[cid] = r["val_accuracy"]
    table = {name: pd.DataFrame(seeds).reindex(cands.index) for name, seeds in acc.items()}
    out: dict = {"recipes": {}}
    truth = table.get(GROUND_TRUTH)
    truth_mean = truth.mean(axis=1) if truth is not None else None
    # the ground truth's own seed noise: a space whose true accuracies lie within it has no
    # order for any proxy to find
    truth_noise = _seed_spread(truth) if truth is not None else None
    for name, df in table.items():
        full = df.dropna()
        row = {"seeds": sorted(df.columns.tolist()),
               "complete_candidates": int(len(full)),
               "mean_accuracy": float(full.mean().mean()) if len(full) else None,
               "range": float(full.mean(axis=1).max() - full.mean(axis=1).min())
               if len(full) else None}
        spread = _seed_spread(df)
        if spread is not None:
            row["seed_spread"] = spread
            row["seed_tau"] = float(full.iloc[:, 0].corr(full.iloc[:, 1], method="kendall"))
        if truth_mean is not None and name != GROUND_TRUTH:
            first = df[df.columns.min()]
            both = pd.concat([first, df.mean(axis=1), truth_mean], axis=1).dropna()
            if len(both) >= 3:
                row["tau_vs_truth"] = float(both.iloc[:, 0].corr(both.iloc[:, 2], "kendall"))
                row["tau_vs_truth_seed_mean"] = float(both.iloc[:, 1].corr(both.iloc[:, 2],
                                                                           "kendall"))
                row["tau_over"] = int(len(both))
                row["tau_within_space"] = _tau_within(both.iloc[:, 1], both.iloc[:, 2],
                                                      cands.space, truth_noise)
        out["recipes"][name] = row
    out["accuracy"] = {name: df.mean(axis=1).round(5).to_dict() for name, df in table.items()}
    return out


def _seed_spread(df: pd.DataFrame) -> float | None:
    """Mean over the candidates that have every seed of max - min over the seeds (None with
    fewer than 2 seeds or 2 such candidates)."""
    full = df.dropna()
    if df.shape[1] < 2 or len(full) < 2:
        return None
    return float((full.max(axis=1) - full.min(axis=1)).mean())


def _tau_within(proxy: pd.Series, truth: pd.Series, space: pd.Series,
                noise: float | None = None) -> dict:
    """Kendall's tau inside each space with at least 3 candidates, and their mean weighted by
    pairs: what one study ranks, since a study searches one space. A space whose truth range
    is within ``noise`` (the ground truth's seed spread) is listed in ``noise_spaces``: its
    tau is luck, so ``mean_beyond_noise`` leaves it out."""
    taus, pairs, spans = {}, {}, {}
    for name, ids in proxy.groupby(space.reindex(proxy.index)).groups.items():
        if len(ids) >= 3:
            taus[name] = float(proxy[ids].corr(truth[ids], method="kendall"))
            pairs[name] = len(ids) * (len(ids) - 1) / 2
            spans[name] = float(truth[ids].max() - truth[ids].min())
    if not taus:
        return {}

    def weighted(names):
        return (float(sum(taus[n] * pairs[n] for n in names) / sum(pairs[n] for n in names))
                if names else None)
    noisy = sorted(n for n in taus if noise is not None and spans[n] <= noise)
    return {"spaces": taus, "mean": weighted(list(taus)), "truth_range": spans,
            "noise_spaces": noisy, "mean_beyond_noise": weighted([n for n in taus
                                                                  if n not in noisy])}


def with_figures(res: dict) -> dict:
    """``res`` with its summary and then its headline keys (read from that summary)
    recomputed from the raw runs."""
    res["summary"] = summarise(res)
    res["proxy"] = proxy_keys(res)
    return res


def proxy_keys(res: dict) -> dict:
    """The proxy study's headline figures, under the names the report's readers use."""
    r, texts = res["summary"]["recipes"], res["setup"]["recipes"]
    return {"kendall_tau": r.get("brief", {}).get("tau_vs_truth_seed_mean"),
            "kendall_tau_without_kd": r.get("brief_ce", {}).get("tau_vs_truth_seed_mean"),
            "kendall_tau_within_space": r.get("brief", {}).get("tau_within_space", {}).get(
                "mean"),
            "kendall_tau_within_space_without_kd": r.get("brief_ce", {}).get(
                "tau_within_space", {}).get("mean"),
            "kendall_tau_within_space_beyond_noise": r.get("brief", {}).get(
                "tau_within_space", {}).get("mean_beyond_noise"),
            "ground_truth_seed_tau": r.get(GROUND_TRUTH, {}).get("seed_tau"),
            "seed_spread": {n: v.get("seed_spread") for n, v in r.items()},
            "candidates": len(res["candidates"]),
            "brief_recipe": texts.get("brief", {}).get("text"),
            "long_recipe": texts.get(GROUND_TRUTH, {}).get("text"),
            "device": "cpu"}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_setup_args(ap)
    ap.add_argument("--band", default="3.2,4.0", help="MACs band in millions: LO,HI")
    ap.add_argument("--candidates", type=int, default=12)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--steps", type=int, help="brief steps (default: the CLI's default)")
    ap.add_argument("--recipe", action="append", default=[], help="another proxy recipe, "
                    "NAME=key:value,... (SearchConfig fields, or factor:N)")
    ap.add_argument("--only", nargs="+", help="run only these recipes (default: all)")
    ap.add_argument("--spaces", nargs="+", help="train only these spaces' candidates (two "
                    "processes on disjoint spaces share one study folder, teacher cache and "
                    "results file)")
    ap.add_argument("--summarise", action="store_true", help="only recompute the figures "
                    "and rewrite the .md from the json (no training)")
    args = ap.parse_args(argv)
    if args.summarise:
        res = update_results(args.out, with_figures)
        write_markdown(args.out.with_suffix(".md"), res, res.get("argv"))
        return

    from kdnas.core.settings import SearchConfig
    from kdnas.teacher.prepare import prepare

    spec, teacher_path = data_and_teacher(args)
    lo, hi = (float(x) * 1e6 for x in args.band.split(","))
    base = SearchConfig(study="sq", teacher=str(teacher_path), data=spec,
                        budget=f"{hi / 1e6:.6g}MMACs", steps=args.steps, latency=False,
                        kd="feature", noise_check=False, cache_limit_gb=64,
                        references=("none",),  # as the protocol ran
                        workdir=str(args.work / "runs"),
                        reports=str(args.work / "reports"))
    base, teacher, data, _ = prepare(base)
    n_train = len(data.train_y)
    res = json.loads(args.out.read_text()) if args.out.exists() else {}
    res.setdefault("runs", {})
    check_teacher(res, teacher.digest, teacher_path)
    if "candidates" not in res:
        res["candidates"] = pick_candidates(data, lo, hi, args.candidates, seed=0)
    recipes = dict(RECIPES, **dict(parse_recipe(r) for r in args.recipe))
    res["setup"] = {
        "data": spec, "train_images": n_train, "val_images": len(data.val_y),
        "classes": data.num_classes, "teacher": args.teacher_arch,
        "teacher_val_accuracy": teacher.meta.get("val_accuracy"),
        "teacher_macs": teacher.meta.get("macs"), "teacher_digest": teacher.digest,
        "band_macs": [lo, hi],
        "recipes": {n: {"overrides": o, "text": recipe_config(
            base, n, o, 0, "resnet", n_train, 1).recipe_text(n_train)}
            for n, o in recipes.items() if not args.only or n in args.only}}

    def save() -> None:
        def update(disk: dict) -> dict:
            merge_saved(res, disk)
            with_figures(res)
            res["argv"] = sys.argv[1:] if argv is None else list(argv)
            return res

        write_markdown(args.out.with_suffix(".md"), update_results(args.out, update),
                       res["argv"])

    # the first seed of every recipe first, so that a partial run already answers
    order = [(s, n) for s in args.seeds for n in recipes if not args.only or n in args.only]
    try:
        run_all(order, res, recipes, base, teacher, data, args.work, save, args.spaces)
    except KeyboardInterrupt:
        save()
        raise SystemExit("interrupted: run the same command again to go on") from None
    save()


def merge_saved(res: dict, disk: dict) -> None:
    """Add the results another process wrote since ``res`` was read (``disk``: the file now)."""
    for key, runs in disk.get("runs", {}).items():
        res["runs"][key] = {**runs, **res["runs"].get(key, {})}
    res["seconds"] = {**disk.get("seconds", {}), **res.get("seconds", {})}
    if "setup" in res:  # the recipes another process ran (--recipe, --only) keep its text
        res["setup"]["recipes"] = {**disk.get("setup", {}).get("recipes", {}),
                                   **res["setup"]["recipes"]}


def run_all(order, res, recipes, base, teacher, data, work: Path, save,
            spaces=None) -> None:
    """Every (seed, recipe) run in order, each as one study per space (``spaces``: only
    these)."""
    from kdnas.search.costs import train_context

    n_train = len(data.train_y)
    for seed, name in order:
        key = f"{name}/s{seed}"
        cache_keys = set()
        for space in dict.fromkeys(c["space"] for c in res["candidates"]):
            if spaces and space not in spaces:
                continue
            # the results file is the record: a candidate in it is not trained again, even
            # where its study in --work is gone
            cands = [c for c in res["candidates"] if c["space"] == space
                     and c["id"] not in res["runs"].get(key, {})]
            if not cands:
                continue
            cfg = recipe_config(base, name, recipes[name], seed, space, n_train, len(cands))
            t0 = time.perf_counter()

            def on_result(info, cfg=cfg, cands=cands, key=key) -> None:
                res["runs"][key] = {**res["runs"].get(key, {}), **collect(cfg, cands)}
                save()

            run_study(cfg, cands, teacher, data, work, on_result)
            res["runs"][key] = {**res["runs"].get(key, {}), **collect(cfg, cands)}
            res.setdefault("seconds", {})[f"{key}/{space}"] = res.get("seconds", {}).get(
                f"{key}/{space}") or time.perf_counter() - t0
            save()
            cache = train_context(cfg, teacher, data).cache_for(cfg.train_config(n_train))
            if cache is not None:
                cache_keys.add(cache.dir)
        save()  # merges what another process has trained
        if recipes[name].get("factor") and len(res["runs"].get(key, {})) == len(
                res["candidates"]):  # a long recipe's cache is large: not kept
            for d in cache_keys:
                shutil.rmtree(d, ignore_errors=True)


def plot(path: Path, res: dict) -> bool:
    """Each proxy recipe's accuracy against the ground truth's, one panel per recipe, one
    colour per space: an order kept inside a colour but shifted between colours is a family
    offset, not a wrong ranking within a study. False when there is nothing to draw yet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc, space = res["summary"]["accuracy"], {c["id"]: c["space"] for c in res["candidates"]}
    truth = acc.get(GROUND_TRUTH, {})
    proxies = [n for n in acc if n != GROUND_TRUTH]
    if not truth or not proxies:
        return False
    fig, axes = plt.subplots(1, len(proxies), figsize=(4.2 * len(proxies), 4), dpi=110,
                             squeeze=False)
    colours = dict(zip(sorted(set(space.values())), plt.rcParams["axes.prop_cycle"]
                       .by_key()["color"], strict=False))
    for ax, name in zip(axes[0], proxies, strict=True):
        row = res["summary"]["recipes"].get(name, {})
        for sp, colour in colours.items():
            pts = [(100 * acc[name][i], 100 * truth[i]) for i in acc[name]
                   if space.get(i) == sp and not pd.isna(truth.get(i))
                   and not pd.isna(acc[name][i])]
            if pts:
                ax.scatter(*zip(*pts, strict=True), color=colour, label=sp, s=28)
        tau = row.get("tau_vs_truth_seed_mean")
        within = (row.get("tau_within_space") or {}).get("mean")
        ax.set_title(f"{name}: tau {'-' if tau is None else f'{tau:.2f}'} pooled, "
                     f"{'-' if within is None else f'{within:.2f}'} within space", fontsize=9)
        ax.set_xlabel(f"{name} validation accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"{GROUND_TRUTH} validation accuracy (%)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _recipe_text(res: dict, name: str) -> str:
    """The recipe in words, as its process recorded it, or else from the steps its runs
    took (a process started without that recipe rewrote the setup)."""
    text = res["setup"]["recipes"].get(name, {}).get("text")
    if text:
        return text
    steps = {r.get("steps") for key, runs in res["runs"].items()
             if key.rsplit("/s", 1)[0] == name for r in runs.values()} - {None}
    return f"{'/'.join(map(str, sorted(steps)))} steps" if steps else ""


def reproduce_command(res: dict, argv) -> str:
    """One command that runs every recipe on the page: the last process's setup flags (not
    its split over spaces, recipes or seeds) and a ``--recipe`` for each recipe that is not
    the script's own."""
    keep, skip = [], False
    for a in argv or []:
        if a in ("--spaces", "--only", "--seeds", "--recipe"):
            skip = True
        elif skip and not a.startswith("--"):
            continue
        else:
            skip = False
            keep.append(a)
    for name, r in res["setup"]["recipes"].items():
        if RECIPES.get(name) != r.get("overrides"):
            body = ",".join(f"{k}:{v}" for k, v in r.get("overrides", {}).items())
            keep += ["--recipe", f"{name}={body}"]
    return " ".join(["python -m benchmarks.search_quality", *keep])


def write_markdown(path: Path, res: dict, argv) -> None:
    if "summary" not in res:
        path.write_text("# Search quality\n\nThe proxy study has not run yet: "
                        "`python -m benchmarks.search_quality`.\n")
        return
    s, setup = res["summary"], res["setup"]
    lines = [
        "# Search quality: does the brief recipe rank like longer training?", "",
        f"Data `{setup['data']}`: {setup['train_images']} training / {setup['val_images']} "
        f"validation images, {setup['classes']} classes. Teacher {setup['teacher']} "
        f"({(setup['teacher_macs'] or 0) / 1e6:.1f}M MACs, "
        f"{100 * (setup['teacher_val_accuracy'] or 0):.1f}% val), trained by kdnas. "
        f"{len(res['candidates'])} candidates with "
        f"{setup['band_macs'][0] / 1e6:.2f}-{setup['band_macs'][1] / 1e6:.2f}M MACs. "
        "CPU (2 cores) unless said otherwise.", "",
        "| recipe | what | seeds done | candidates | mean acc | range | seed spread | "
        "seed tau | tau vs ground truth (seed 0 / seed mean) | tau within each space |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in s["recipes"].items():
        def pct(v):
            return "-" if v is None else f"{100 * v:.1f}"
        tau = (f"{r['tau_vs_truth']:.2f} / {r['tau_vs_truth_seed_mean']:.2f} "
               f"(n={r['tau_over']})" if "tau_vs_truth" in r else "-")
        lines.append(
            f"| {name} | {_recipe_text(res, name)} | "
            f"{','.join(map(str, r['seeds']))} | {r['complete_candidates']} | "
            f"{pct(r['mean_accuracy'])} | {pct(r['range'])} | {pct(r.get('seed_spread'))} | "
            + (f"{r['seed_tau']:.2f}" if "seed_tau" in r else "-") + f" | {tau} | "
            + _within_text(r.get("tau_within_space")) + " |")
    lines += ["", f"Ground truth: `{GROUND_TRUTH}`, mean over its seeds. Seed tau is Kendall's "
              "tau between a recipe's first two seeds: for the ground truth it is the ceiling "
              "any proxy can reach. Seed spread: mean over candidates of max - min over seeds "
              "(accuracy points). Tau within each space: the same tau among the candidates of "
              "one space (a study searches one space), and its mean weighted by pairs; a space "
              "marked noise has true accuracies within the ground truth's own seed spread, "
              "so its order is luck for any proxy, and the mean without it is given too.", "",
              "| candidate | family | MACs | " + " | ".join(s["accuracy"]) + " |",
              "| --- | --- | --- | " + " | ".join("---" for _ in s["accuracy"]) + " |"]
    for c in res["candidates"]:
        accs = [s["accuracy"][n].get(c["id"]) for n in s["accuracy"]]
        lines.append(f"| {c['arch']} | {c['space']} | {c['macs'] / 1e6:.2f}M | " + " | ".join(
            "-" if a is None or a != a else f"{100 * a:.1f}" for a in accs) + " |")
    if plot(path.with_suffix(".png"), res):
        lines += ["", f"![each proxy against the ground truth]({path.with_suffix('.png').name})"]
    lines += ["", f"Reproduce: `{reproduce_command(res, argv)}` (resumes from its --work "
              "folder; `--spaces resnet` and `--spaces mobilenet shufflenet` split it over two "
              "processes, `--only NAME` runs one recipe). `--summarise` rewrites this page "
              "from the json."]
    lines += ["", "The claim that grew out of this study (the found student against resnet8, "
              "both distilled fully) has its own page: [claim](claim.md)."]
    path.write_text("\n".join(lines) + "\n")


def _within_text(w: dict | None) -> str:
    if not w:
        return "-"
    spans, noisy = w.get("truth_range", {}), w.get("noise_spaces", [])
    beyond = w.get("mean_beyond_noise")
    return f"{w['mean']:.2f} (" + ", ".join(
        f"{k} {v:.2f}" + (f" over a {100 * spans[k]:.1f}-point truth range" if k in spans
                          else "") + (": noise" if k in noisy else "")
        for k, v in w["spaces"].items()) + ")" + (
        f"; {beyond:.2f} without the noise" if noisy and beyond is not None else "")


if __name__ == "__main__":
    main()
