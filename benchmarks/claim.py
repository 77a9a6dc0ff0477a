"""The claim: at a hand-designed reference's MACs, the student kdnas finds beats the reference
when both are distilled fully the same way, by more than the seed spread of either.

1. ``kdnas search`` (its library call, resumable) with the budget set to the reference's
   MACs, the default brief recipe, the reference trained alongside (``--references``);
2. the most accurate trial within budget is the found student;
3. ``kdnas distill`` (its library calls, each checkpointed per epoch and resumable) trains the
   found student and ``--reference`` for ``--epochs`` epochs with every seed of ``--seeds``.

Raw runs under ``claim_runs`` and test accuracies, means and spreads under ``claim`` in
``reports/claim.json`` (the proxy study's data, teacher and --work are shared); the page is
``reports/claim.md``. Interrupt at any time; the same command goes on. Two
processes of the same command share the work (each distillation is locked to one of them).
A larger ``--trials`` extends the search; if it finds another best student, that one is
distilled and the earlier pick's results stay beside it.

    python -m benchmarks.claim                       # CIFAR-10, resnet8, 3 seeds
    python -m benchmarks.claim --data digits --trials 2 --steps 5 --epochs 1  # a tiny run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import numpy as np

from benchmarks.common import (
    add_setup_args,
    data_and_teacher,
    held,
    keep_trials,
    update_results,
    welch_p,
)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_setup_args(ap, out="claim.json")  # --across: claim_across.json beside it
    ap.add_argument("--reference", default="resnet8", help="preset of the resnet space")
    ap.add_argument("--trials", type=int, default=20, help="search trials")
    ap.add_argument("--steps", type=int, help="brief steps (default: the CLI's default)")
    ap.add_argument("--epochs", type=float, default=10, help="full distillation epochs "
                    "(default 10, the proxy study's long recipe: about 3,100 steps of "
                    "CIFAR-10; 30 epochs took 4.5 h a model on one core here)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="full distillation seeds (default 0 1 2; with --across 0-4)")
    ap.add_argument("--across", action="store_true", help="the claim across families "
                    "(docs/evidence/claim_across.md): a --space all search, against the "
                    "strongest of the references that fit the budget")
    ap.add_argument("--shipped", action="store_true", help="with --across: the same claim "
                    "with the defaults as shipped, the search's ranker and distill's method "
                    "(docs/evidence/claim_shipped.md; reports/claim_shipped.json)")
    args = ap.parse_args(argv)
    if args.shipped and not args.across:
        ap.error("--shipped is a variant of --across: give both")
    argv = sys.argv[1:] if argv is None else list(argv)
    if args.across:
        from benchmarks.claim_across import run_across

        args.seeds = args.seeds or [0, 1, 2, 3, 4]
        return run_across(args, argv)
    args.seeds = args.seeds or [0, 1, 2]

    from kdnas.cli.progress import SearchProgress, StepBar
    from kdnas.core.settings import SearchConfig
    from kdnas.cost import count_macs
    from kdnas.report import pick_trial
    from kdnas.search.loop import run_search
    from kdnas.teacher.prepare import prepare
    from kdnas.search.storage import load_record
    from kdnas.ship.final import distill_reference, distill_trial
    from search_spaces import describe, get_space

    spec, teacher_path = data_and_teacher(args)
    cfg = SearchConfig(study=f"claim-{args.reference}", teacher=str(teacher_path), data=spec,
                       budget="1GMACs", trials=args.trials, steps=args.steps, latency=False,
                       space="resnet", kd="feature",  # the ResNet-only claim, as made
                       workdir=str(args.work / "runs"), reports=str(args.work / "reports"),
                       references=(args.reference,))
    cfg, teacher, data, _ = prepare(cfg)
    space = get_space("resnet")
    ref_spec = space.preset(args.reference, in_channels=data.in_channels,
                            num_classes=data.num_classes, input_size=data.input_size)
    budget = count_macs(space.build(ref_spec), data.input_shape)
    cfg = dataclasses.replace(cfg, budget=f"{budget / 1e6:.6f}MMACs")  # exact: whole MACs
    out = run_search(cfg, teacher, data, on_event=SearchProgress(cfg))
    record = load_record(out.study)
    keep_trials(record, args.out, cfg.study)
    found = pick_trial(record, "best")
    rec = record.trained_trial(found)
    runs = (legacy_keys(json.loads(args.out.read_text())) if args.out.exists() else {})
    noise = record.noise if (record.noise or {}).get("trial") == found else None
    ref_rec = record.references.get(args.reference, {})
    seen = {"found": list(noise["accuracies"]) if noise else [rec.val_accuracy],
             "reference": ref_rec.get("val_accuracy"), "found_params": rec.cost.get("params"),
             "reference_params": ref_rec.get("cost", {}).get("params")}

    def save() -> None:
        def update(res: dict) -> dict:
            res["claim_runs"] = {**legacy_keys(res), **runs}
            res["claim"] = summarise(res["claim_runs"], args, argv, budget, found,
                                     describe(rec.spec), rec.cost["macs"], seen)
            return res

        write_page(args.out.with_suffix(".md"), update_results(args.out, update)["claim"])

    save()  # the search's outcome is on the page before the first long distillation ends
    opts = dict(epochs=args.epochs, formats=(), kd="feature")  # as measured: FitNets
    try:
        for seed in args.seeds:
            for who in ("found", "reference"):
                key = f"trial-{found}/s{seed}" if who == "found" else f"reference/s{seed}"
                if runs.get(key, {}).get("epochs") == args.epochs:
                    continue
                with held(args.work / "claim" / f"{key.replace('/', '-')}.lock") as mine:
                    if not mine:  # a second worker takes the next one: two cores, two runs
                        print(f"{key}: another process distils it; skipped", flush=True)
                        continue
                    print(f"distilling the {who} student, seed {seed}, {args.epochs:g} "
                          "epochs", flush=True)
                    opts["progress"] = StepBar(f"  {key}", every_s=120)
                    if who == "found":
                        info = distill_trial(record, cfg, found, teacher, data, seed=seed,
                                             out_dir=args.work / "claim" / key, **opts)
                    else:
                        info = distill_reference(cfg, args.reference, teacher, data,
                                                 seed=seed, out_dir=args.work / "claim" / key,
                                                 **opts)
                runs[key] = {k: info[k] for k in ("test_accuracy", "val_accuracy", "macs",
                                                  "epochs")}
                if who == "found":
                    runs[key]["trial"] = found
                save()
    except KeyboardInterrupt:
        save()
        raise SystemExit("interrupted: the distillation resumes from its last epoch when "
                         "the same command runs again") from None
    save()


def legacy_keys(res: dict) -> dict:
    """The claim's runs, found students keyed by their trial (``trial-19/s0``): a longer
    search (a larger ``--trials``) may find another student, whose runs must not mix with
    the earlier pick's. Runs saved as ``found/sN`` belong to the pick recorded beside them."""
    runs = dict(res.get("claim_runs", {}))
    for key in [k for k in runs if k.startswith("found/")]:
        trial = runs[key].get("trial", res.get("claim", {}).get("found_trial"))
        new = f"trial-{trial}/{key.split('/', 1)[1]}"
        runs.setdefault(new, {**runs[key], "trial": trial})
        del runs[key]
    return runs


def summarise(runs: dict, args, argv, budget: int, found: int, arch: str, macs: int,
              seen: dict) -> dict:
    """The claim's figures; ``seen``: what the search saw of both students (brief accuracies,
    parameters)."""
    def accs(who):
        return [runs[f"{who}/s{s}"]["test_accuracy"] for s in args.seeds  # this recipe's
                if runs.get(f"{who}/s{s}", {}).get("epochs") == args.epochs]

    f, r = accs(f"trial-{found}"), accs("reference")
    earlier = {int(k.split("/")[0][6:]) for k in runs if k.startswith("trial-")} - {found}
    c = {"budget_macs": budget, "seeds": list(args.seeds), "epochs": args.epochs,
         "reference": args.reference, "found_trial": found, "found_arch": arch,
         "found_macs": macs, "search_trials": args.trials,
         "found_brief_accuracies": seen["found"],
         "reference_brief_accuracy": seen["reference"],
         "found_params": seen.get("found_params"),
         "reference_params": seen.get("reference_params"),
         "found_accuracies": f, "reference_accuracies": r,
         "found_accuracy_mean": float(np.mean(f)) if f else None,
         "found_spread": float(np.ptp(f)) if f else None,
         "reference_accuracy_mean": float(np.mean(r)) if r else None,
         "reference_spread": float(np.ptp(r)) if r else None,
         "device": "CPU (2 cores)", "argv": " ".join(argv).strip(),
         "earlier_picks": {str(t): accs(f"trial-{t}") for t in sorted(earlier)}}
    done = len(f) == len(r) == len(args.seeds)
    if not done:
        c["verdict"] = (f"In progress: {len(f)} of {len(args.seeds)} found and {len(r)} "
                        "reference seeds done; no verdict yet.")
    else:
        gap = c["found_accuracy_mean"] - c["reference_accuracy_mean"]
        spread = max(c["found_spread"], c["reference_spread"])
        c["margin"] = gap
        c["welch_p"] = welch_p(f, r)
        c["verdict"] = (
            f"The found student {'beats' if gap > 0 else 'does not beat'} the reference by "
            f"{100 * gap:+.2f} points, " + ("more" if abs(gap) > spread else "not more")
            + f" than the larger seed spread ({100 * spread:.2f} points): "
            + ("the claim holds" if gap > spread else "the claim does not hold here")
            + ("" if c["welch_p"] is None else
               f" (Welch's t-test over the seeds: p = {c['welch_p']:.3f})") + "." + context(c))
    return c


def context(c: dict) -> str:
    """What the verdict rests on, in the run's own figures: how much of the budget the found
    student uses, and how its brief lead over the reference compares with the full one."""
    share = c["found_macs"] / c["budget_macs"]
    out = f" The found student uses {100 * share:.0f}% of the budget's MACs"
    found, ref = c.get("found_brief_accuracies"), c.get("reference_brief_accuracy")
    if found and ref is not None:
        brief_gap = sum(found) / len(found) - ref
        out += (f"; in the search's brief recipe it led by {100 * brief_gap:+.1f} points, "
                f"fully distilled by {100 * c['margin']:+.2f}")
    return out + "."


def _params(c: dict, who: str) -> str:
    n = c.get(f"{who}_params")
    return "" if n is None else f", {n / 1e3:.1f}k parameters"


def _brief_lines(c: dict) -> list[str]:
    """What the search itself saw: its brief validation accuracies (the full distillations
    decide; these only say what to expect)."""
    found, ref = c.get("found_brief_accuracies"), c.get("reference_brief_accuracy")
    if not found or ref is None:
        return []
    seeds = f" (mean of {len(found)} seeds)" if len(found) > 1 else ""
    return ["", f"In the search's brief recipe (validation accuracy): the found student "
            f"{100 * sum(found) / len(found):.1f}%{seeds}, the reference {100 * ref:.1f}%."]


def write_page(path, c: dict) -> None:
    """The claim's page, from its figures alone."""
    def pct(v):
        return "-" if v is None else f"{100 * v:.2f}%"

    def pts(v):
        return "-" if v is None else f"{100 * v:.2f} points"
    lines = [
        "# The claim: a found student against a hand-designed one, both distilled fully", "",
        "Raw results: `reports/claim.json`. The same budget searched across families: "
        "[claim_across](claim_across.md).", "",
        f"Budget {c['budget_macs'] / 1e6:.2f}M MACs (the reference {c['reference']}'s). "
        f"Found: trial {c['found_trial']} of a {c['search_trials']}-trial search, "
        f"{c['found_arch']} ({c['found_macs'] / 1e6:.2f}M MACs{_params(c, 'found')}; the "
        f"reference {c['budget_macs'] / 1e6:.2f}M MACs{_params(c, 'reference')}). Both trained by "
        f"`kdnas distill` for {c['epochs']:g} epochs with the same teacher and method; "
        f"test accuracy over seeds {c['seeds']}; {c['device']}.", *_brief_lines(c), "",
        "| student | test accuracy per seed | mean | spread (max - min) |",
        "| --- | --- | --- | --- |",
        f"| found ({c['found_arch']}) | {', '.join(pct(v) for v in c['found_accuracies'])} | "
        f"{pct(c['found_accuracy_mean'])} | {pts(c['found_spread'])} |",
        f"| reference {c['reference']} | "
        f"{', '.join(pct(v) for v in c['reference_accuracies'])} | "
        f"{pct(c['reference_accuracy_mean'])} | {pts(c['reference_spread'])} |",
        *[f"| earlier pick: trial {t} (a shorter search's best) | "
          f"{', '.join(pct(v) for v in a)} | {pct(sum(a) / len(a)) if a else '-'} | "
          f"{pts(max(a) - min(a)) if a else '-'} |"
          for t, a in c.get("earlier_picks", {}).items()],
        "", c["verdict"], "",
        f"Reproduce: `{('python -m benchmarks.claim ' + c['argv']).strip()}`."]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
