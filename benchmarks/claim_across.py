"""The claim across families (protocol: docs/evidence/claim_across.md), run by
``python -m benchmarks.claim --across``: a ``--space all`` search at resnet8's MACs, its pick
distilled fully against the strongest hand-designed student that fits the budget.

``--across --shipped`` (protocol: docs/evidence/claim_shipped.md) is the same claim with the
defaults as shipped instead of FitNets: the search ranks with its default method and ranker,
``kdnas distill`` trains with its default method. Its results go to claim_shipped.json; the
references' seed-0 runs of the deploy evidence (reports/deploy.json) stand in for its own
where their recorded recipe is the one it would use.

Stage 1 distils every reference once (the first seed); the strongest by that seed's test
accuracy is the opponent; stage 2 distils the pick and the opponent with every seed. Raw
results under ``claim_across_runs`` and figures under ``claim_across`` in
reports/claim_across.json (beside the claim's ``--out``, whose resnet8 runs it starts from);
the page is reports/claim_across.md. Resumable; two processes share the distillations.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import statistics
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import data_and_teacher, held, keep_trials, update_results, welch_p

SPACE = "all"
REFERENCES = ("resnet8", "mobilenet:mobilenetv2_half", "shufflenet:shufflenetv2_half")


@dataclass(frozen=True)
class Variant:
    """What differs between the claim across families as made (FitNets to rank and to
    distil) and as shipped (each command's default)."""

    name: str  # the results file's stem, the study's prefix and the work folder
    kd: str | None  # the search's and distill's method; None: each command's default
    protocol: str
    title: str


AS_MADE = Variant("claim_across", "feature", "docs/evidence/claim_across.md",
                  "The claim at resnet8's MACs, searched across families")
SHIPPED = Variant("claim_shipped", None, "docs/evidence/claim_shipped.md",
                  "The claim at resnet8's MACs with the defaults as shipped")


def run_across(args, argv: list[str]) -> None:
    v = SHIPPED if getattr(args, "shipped", False) else AS_MADE
    from kdnas.cli.progress import SearchProgress, StepBar
    from kdnas.core.settings import SearchConfig
    from kdnas.cost import count_macs
    from kdnas.report import pick_trial
    from kdnas.search.loop import run_search
    from kdnas.search.storage import load_record
    from kdnas.ship.final import (
        distill_reference,
        distill_trial,
        final_method,
        reference_recipe,
    )
    from kdnas.teacher.prepare import prepare
    from search_spaces import describe, get_space, preset_spec

    spec, teacher_path = data_and_teacher(args)
    method = {} if v.kd is None else {"kd": v.kd}
    cfg = SearchConfig(study=f"{v.name.replace('_', '-')}-{args.reference}",
                       teacher=str(teacher_path), data=spec, budget="1GMACs",
                       trials=args.trials, steps=args.steps, latency=False, space=SPACE,
                       workdir=str(args.work / "runs"), reports=str(args.work / "reports"),
                       references=REFERENCES, **method)
    cfg, teacher, data, _ = prepare(cfg)
    shape = dict(in_channels=data.in_channels, num_classes=data.num_classes,
                 input_size=data.input_size)
    ref_spec = preset_spec(args.reference, "resnet", **shape)
    budget = count_macs(get_space(ref_spec["space"]).build(ref_spec), data.input_shape)
    cfg = dataclasses.replace(cfg, budget=f"{budget / 1e6:.6f}MMACs")  # exact: whole MACs
    out = args.out.with_name(f"{v.name}.json")
    kept = kept_pick(out, v.name, cfg, data.input_shape)
    if kept is not None:  # searched before, its study not on this machine: not searched again
        setup, kept_spec = kept
        setup = {**setup, "seeds": list(args.seeds), "epochs": args.epochs}
        found, record = setup["found_trial"], None
        print(f"the search's pick, trial {found} ({setup['found_arch']}), is recorded in "
              f"{out.name} and its spec in searches/{cfg.study}.csv; the study is not in "
              f"{args.work}, so the search is not run again", flush=True)
    else:
        record = load_record(run_search(cfg, teacher, data,
                                        on_event=SearchProgress(cfg)).study)
        keep_trials(record, args.out, cfg.study)
        found = pick_trial(record, "best")
        rec = record.trained_trial(found)
        refs = {}
        for name in REFERENCES:
            s = preset_spec(name, "resnet", **shape)
            r = record.references.get(name, {})
            refs[name] = {"macs": count_macs(get_space(s["space"]).build(s),
                                             data.input_shape),
                          "params": r.get("cost", {}).get("params"),
                          "brief": r.get("val_accuracy")}
        setup = {"budget_macs": budget, "seeds": list(args.seeds), "epochs": args.epochs,
                 "space": SPACE, "search_trials": args.trials, "found_trial": found,
                 "found_arch": describe(rec.spec), "found_macs": rec.cost["macs"],
                 "found_params": rec.cost.get("params"), "found_brief": rec.val_accuracy,
                 "references": refs, "argv": " ".join(["--across", *argv]).replace(
                     "--across --across", "--across").strip(),
                 "protocol": v.protocol, "title": v.title, "device": "CPU (2 cores)",
                 "search_kd": cfg.kd,  # and the ranker, once the search has more than one:
                 "search_ranker": getattr(cfg, "ranker", "brief validation accuracy"),
                 "distill_kd": final_method(v.kd, cfg.kd, None)[0]}
    runs: dict = {}
    made_file = out.with_name(f"{AS_MADE.name}.json")  # what changed is read against it
    made = (json.loads(made_file.read_text()).get(AS_MADE.name) or {}
            if v is not AS_MADE and made_file.exists() else None)
    if v is AS_MADE:  # the earlier claim's resnet8 runs: same teacher, data and recipe
        earlier = earlier_reference_runs(args.out, args.epochs)
    else:  # the deploy evidence's seed-0 references, where their recipe is this one's
        earlier = deploy_reference_runs(args.out.with_name("deploy.json"), {
            name: reference_recipe(cfg, name, data, epochs=args.epochs, seed=0)
            for name in REFERENCES}, spec, teacher.digest) if 0 in args.seeds else {}

    def save() -> dict:
        def update(res: dict) -> dict:
            for key, r in earlier.items():  # a run of this experiment's own comes first
                if key not in res.get(f"{v.name}_runs", {}):
                    runs.setdefault(key, r)
            runs.update({k: r for k, r in res.get(f"{v.name}_runs", {}).items()
                         if k not in runs})
            res[f"{v.name}_runs"] = dict(runs)
            res[v.name] = summarise(runs, setup)
            if made is not None:
                res[v.name]["changed"] = what_changed(res[v.name], made)
            return res
        res = update_results(out, update)
        write_page(out.with_suffix(".md"), res[v.name])
        return res

    def distill(who: str, seed: int) -> None:
        key = f"{who}/s{seed}"
        if runs.get(key, {}).get("epochs") == args.epochs:
            return
        with held(args.work / v.name / f"{key.replace('/', '-')}.lock") as mine:
            if not mine:  # a second process takes the next one
                print(f"{key}: another process distils it; skipped", flush=True)
                return
            print(f"distilling {key}, {args.epochs:g} epochs", flush=True)
            opts = dict(epochs=args.epochs, formats=(), seed=seed, kd=v.kd,
                        out_dir=args.work / v.name / key,
                        progress=StepBar(f"  {key}", every_s=120))
            if not who.startswith("trial-"):
                info = distill_reference(cfg, who.removeprefix("ref-"), teacher, data, **opts)
            elif record is None:  # the kept pick: the same student, spec and recipe
                info = distill_reference(cfg, who, teacher, data, spec=kept_spec, **opts)
            else:
                info = distill_trial(record, cfg, found, teacher, data, **opts)
        runs[key] = {k: info[k] for k in ("test_accuracy", "val_accuracy", "macs", "epochs")}
        save()

    save()  # the search's outcome is on the page before the first distillation ends
    first = args.seeds[0]
    for name in REFERENCES:  # stage 1
        distill(f"ref-{name}", first)
    save()
    opponent = strongest(runs, first)
    if opponent is None:
        print("stage 1 is not complete (another process is distilling a reference); run "
              "again when it is", flush=True)
        return
    for seed in args.seeds:  # stage 2
        for who in (f"trial-{found}", f"ref-{opponent}"):
            distill(who, seed)
    save()


# what summarise (and, for the shipped claim, what_changed) add to the setup in the results
_DERIVED = ("stage1", "opponent", "found", "opponent_runs", "verdict", "margin", "welch_p",
            "changed")


def kept_pick(out: Path, name: str, cfg, input_shape) -> tuple[dict, dict] | None:
    """The setup and pick's spec of a search that ran before, when its study is not in the
    work folder (a new checkout): the results file ``out`` names the pick (``found_trial``,
    written once the search finished) and its kept trials (``searches/STUDY.csv``) hold the
    pick's spec, checked against its recorded MACs. None where the study is here (a search
    resumes it) or either record is missing (the search runs)."""
    from kdnas.cost import count_macs
    from search_spaces import get_space

    if cfg.storage or (cfg.study_dir / "study.db").exists() or not out.exists():
        return None
    recorded = json.loads(out.read_text()).get(name) or {}
    trials = out.parent / "searches" / f"{cfg.study}.csv"
    if recorded.get("found_trial") is None or not trials.exists():
        return None
    with trials.open(newline="") as f:
        row = next((r for r in csv.DictReader(f)
                    if r["trial"] == str(recorded["found_trial"])), None)
    if row is None:
        raise SystemExit(f"{trials} has no trial {recorded['found_trial']}, the pick that "
                         f"{out} records: the two come from different searches")
    spec = json.loads(row["spec"])
    macs = count_macs(get_space(spec["space"]).build(spec), input_shape)
    if macs != recorded["found_macs"]:
        raise SystemExit(f"trial {recorded['found_trial']} in {trials} counts {macs} MACs; "
                         f"{out} records {recorded['found_macs']}: not the same student")
    return {k: v for k, v in recorded.items() if k not in _DERIVED}, spec


def earlier_reference_runs(claim_file: Path, epochs: float) -> dict:
    """The ResNet-only claim's resnet8 runs (same teacher, data and recipe), as this
    experiment's ``ref-resnet8/sN``: they are not distilled twice."""
    res = json.loads(claim_file.read_text()) if claim_file.exists() else {}
    if res.get("claim", {}).get("reference") != "resnet8":
        return {}
    return {f"ref-resnet8/{key.split('/')[1]}": dict(r)
            for key, r in res.get("claim_runs", {}).items()
            if key.startswith("reference/") and r.get("epochs") == epochs}


def deploy_reference_runs(deploy_file: Path, recipes: dict, data: str, teacher: str) -> dict:
    """The deploy evidence's runs of the references (seed 0), as this experiment's
    ``ref-NAME/s0``, for each reference whose recorded recipe is ``recipes[NAME]`` and
    whose data and teacher are this run's: the same training, not run twice."""
    res = json.loads(deploy_file.read_text()) if deploy_file.exists() else {}
    setup = res.get("setup", {})
    if not same_data(setup.get("data"), data) or setup.get("teacher_digest") != teacher:
        return {}
    out = {}
    for name, recipe in recipes.items():
        r = res.get("runs", {}).get(name.replace(":", "-"), {})
        if r.get("recipe") == recipe and r.get("epochs") == setup.get("epochs"):
            out[f"ref-{name}/s0"] = {k: r[k] for k in ("test_accuracy", "val_accuracy",
                                                        "macs", "epochs")}
            out[f"ref-{name}/s0"]["from"] = "reports/deploy.json"
    return out


def same_data(recorded: str | None, spec: str) -> bool:
    """Whether a recorded data spec names this run's data: the same spec, or the default
    work folder's copy of the CIFAR-10 archive in another checkout (``imagefolder:ROOT/
    .bench/...``: ``make_subset`` writes the same tree from the same archive wherever the
    checkout is)."""
    if recorded == spec:
        return True

    def tail(s: str | None) -> tuple[str, ...] | None:
        if not s or not s.startswith("imagefolder:"):
            return None
        parts = Path(s.removeprefix("imagefolder:")).parts
        return parts[parts.index(".bench"):] if ".bench" in parts else None
    return tail(recorded) is not None and tail(recorded) == tail(spec)


def strongest(runs: dict, seed: int) -> str | None:
    """The reference with the highest test accuracy at ``seed``; None until all have it."""
    accs = {n: runs.get(f"ref-{n}/s{seed}", {}).get("test_accuracy") for n in REFERENCES}
    if any(v is None for v in accs.values()):
        return None
    return max(accs, key=accs.get)


def summarise(runs: dict, setup: dict) -> dict:
    def accs(who):
        return [runs[f"{who}/s{s}"]["test_accuracy"] for s in setup["seeds"]
                if runs.get(f"{who}/s{s}", {}).get("epochs") == setup["epochs"]]

    def stats(a):
        return {"accuracies": a, "mean": statistics.fmean(a) if a else None,
                "spread": max(a) - min(a) if a else None,
                "sd": statistics.stdev(a) if len(a) > 1 else None}
    first = setup["seeds"][0]
    c = {**setup, "stage1": {n: runs.get(f"ref-{n}/s{first}", {}).get("test_accuracy")
                             for n in REFERENCES}}
    c["opponent"] = strongest(runs, first)
    c["found"] = stats(accs(f"trial-{setup['found_trial']}"))
    c["opponent_runs"] = stats(accs(f"ref-{c['opponent']}")) if c["opponent"] else None
    n = len(setup["seeds"])
    if c["opponent"] is None or len(c["found"]["accuracies"]) < n or len(
            c["opponent_runs"]["accuracies"]) < n:
        done = len(c["found"]["accuracies"])
        c["verdict"] = (f"In progress: stage {'1' if c['opponent'] is None else '2'}; "
                        f"{done} of {n} seeds of the pick done; no verdict yet.")
        return c
    f, o = c["found"], c["opponent_runs"]
    c["margin"] = f["mean"] - o["mean"]
    c["welch_p"] = welch_p(f["accuracies"], o["accuracies"])
    noise = max(f["spread"], o["spread"])
    c["verdict"] = (
        f"The found student ({setup['found_arch']}) "
        + ("beats" if c["margin"] > 0 else "trails")
        + f" the strongest reference ({c['opponent']}) by {100 * abs(c['margin']):.2f} "
        "points; "
        f"the larger seed spread is {100 * noise:.2f} points: "
        + ("the claim holds" if c["margin"] > noise else
           "a tie" if abs(c["margin"]) <= noise else "the reference is better")
        + ("" if c["welch_p"] is None else f" (Welch's p = {c['welch_p']:.3f})")
        + _macs_used(setup, c["opponent"]) + ".")
    return c


def what_changed(c: dict, made: dict) -> dict | None:
    """The protocol's "what changed" against the claim as made (``made``, claim_across's
    figures): the pick (the same architecture or not), each reference's seed-0 accuracy,
    the opponent, and the two margins, whose difference is read against the larger seed
    spread of the four students involved. None until both claims have their verdicts."""
    if c.get("margin") is None or made.get("margin") is None:
        return None
    stage1 = {n: {"now": c["stage1"].get(n), "as_made": made["stage1"].get(n)}
              for n in c["stage1"]}
    for r in stage1.values():
        r["change"] = (None if None in (r["now"], r["as_made"])
                       else r["now"] - r["as_made"])
    spreads = [x["spread"] for x in (c["found"], c["opponent_runs"], made["found"],
                                     made["opponent_runs"])]
    change = c["margin"] - made["margin"]
    return {"same_pick": c["found_arch"] == made["found_arch"],
            "pick_as_made": {k: made[k] for k in ("found_trial", "found_arch", "found_macs")},
            "stage1": stage1, "opponent_as_made": made["opponent"],
            "margin_as_made": made["margin"], "margin_change": change,
            "noise": max(spreads),
            "verdict": "beyond the seed noise" if abs(change) > max(spreads)
            else "within the seed noise"}


def changed_lines(c: dict) -> list[str]:
    """The page's "what changed" paragraph (empty until both verdicts are in)."""
    w = c.get("changed")
    if not w:
        return []
    p = w["pick_as_made"]
    pick = ("the same architecture" if w["same_pick"] else
            f"another architecture than the claim as made's trial {p['found_trial']}, "
            f"{p['found_arch']}, {p['found_macs'] / 1e6:.2f}M MACs")
    refs = "; ".join(f"{n} {100 * r['now']:.2f}% against {100 * r['as_made']:.2f}% "
                     f"({100 * r['change']:+.2f})" for n, r in w["stage1"].items()
                     if r["change"] is not None)
    opp = ("the same opponent" if w["opponent_as_made"] == c["opponent"]
           else f"another opponent (as made: {w['opponent_as_made']})")
    return ["## What changed against the claim as made", "",
            f"Against [the claim as made](claim_across.md) (FitNets to rank and to distil): "
            f"the pick is {pick}. Each reference's seed-0 test accuracy under "
            f"{c.get('distill_kd')} against FitNets (one seed each): {refs}; {opp}. "
            f"The margin is {100 * c['margin']:+.2f} points against "
            f"{100 * w['margin_as_made']:+.2f}: a change of {100 * w['margin_change']:+.2f} "
            f"points, {w['verdict']} (the larger seed spread of the four students, "
            f"{100 * w['noise']:.2f} points).", ""]


def _macs_used(setup: dict, opponent: str) -> str:
    """The pick's MACs as a share of the opponent's (a metric the protocol names)."""
    theirs = (setup.get("references") or {}).get(opponent, {}).get("macs")
    if not theirs or not setup.get("found_macs"):
        return ""
    return (f", with {100 * setup['found_macs'] / theirs:.0f}% of its MACs "
            f"({setup['found_macs'] / 1e6:.2f}M against {theirs / 1e6:.2f}M)")


def write_page(path: Path, c: dict) -> None:
    def pct(v):
        return "-" if v is None else f"{100 * v:.2f}%"
    protocol = c.get("protocol", AS_MADE.protocol)
    stem = Path(protocol).stem
    lines = [f"# {c.get('title', AS_MADE.title)}", "",
             f"Protocol: [{protocol}](../{protocol}) "
             f"(committed before the runs). Raw results: `{stem}_runs` in "
             f"`reports/{stem}.json`.", "",
             f"Budget {c['budget_macs'] / 1e6:.2f}M MACs. The search (`--space {c['space']}`, "
             f"{c['search_trials']} trials, brief recipe with {c.get('search_kd', 'feature')}) "
             f"picked trial {c['found_trial']}: "
             f"{c['found_arch']}, {c['found_macs'] / 1e6:.2f}M MACs, brief validation "
             f"{pct(c['found_brief'])}. Full recipe: `kdnas distill`, {c['epochs']:g} epochs, "
             f"{c.get('distill_kd', 'feature')}; "
             f"test accuracy (CIFAR-10's 10,000 test images); {c['device']}.", "",
             "| student | MACs | brief (val) | seed 0 (stage 1) | seeds | mean | spread | SD |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    f = c["found"]
    lines.append(f"| found: {c['found_arch']} | {c['found_macs'] / 1e6:.2f}M | "
                 f"{pct(c['found_brief'])} | - | {', '.join(pct(v) for v in f['accuracies'])} "
                 f"| {pct(f['mean'])} | {pct(f['spread'])} | {pct(f['sd'])} |")
    for name, r in c["references"].items():
        o = c["opponent_runs"] if name == c["opponent"] else None
        lines.append(f"| {name}{' (strongest)' if o else ''} | {r['macs'] / 1e6:.2f}M | "
                     f"{pct(r['brief'])} | {pct(c['stage1'].get(name))} | "
                     + (f"{', '.join(pct(v) for v in o['accuracies'])} | {pct(o['mean'])} | "
                        f"{pct(o['spread'])} | {pct(o['sd'])} |" if o else "- | - | - | - |"))
    lines += ["", c["verdict"], "", *changed_lines(c),
              f"Reproduce: `python -m benchmarks.claim {c['argv']}`."]
    path.write_text("\n".join(lines) + "\n")
