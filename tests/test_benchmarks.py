"""The study scripts behind reports/ run on a tiny workload, so that they cannot rot."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from benchmarks import common, search_quality, search_replay

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_search_quality_runs_resumes_and_reports(tmp_path):
    argv = ["--data", "digits", "--candidates", "4", "--steps", "5", "--band", "0.15,0.3",
            "--teacher-arch", "resnet8", "--teacher-epochs", "1", "--seeds", "0", "1",
            "--recipe", "long=factor:2", "--work", str(tmp_path / "work"),
            "--out", str(tmp_path / "sq.json")]
    search_quality.main(argv)
    res = json.loads((tmp_path / "sq.json").read_text())
    cands = res["candidates"]
    assert len(cands) == 4 and len({c["space"] for c in cands}) == 3  # resnet x2 blocks
    assert max(c["macs"] for c in cands) <= 0.3e6 and min(c["macs"] for c in cands) >= 0.15e6
    for recipe in ("brief", "brief_ce", "long"):
        for seed in (0, 1):
            runs = res["runs"][f"{recipe}/s{seed}"]
            assert set(runs) == {c["id"] for c in cands}
            steps = {r["steps"] for r in runs.values()}
            assert steps == ({10} if recipe == "long" else {5})
    p = res["proxy"]
    assert p["candidates"] == 4 and "5 steps" in p["brief_recipe"]
    assert "10 steps" in p["long_recipe"]
    for key in ("kendall_tau", "kendall_tau_without_kd", "ground_truth_seed_tau"):
        assert -1 <= p[key] <= 1
    md = (tmp_path / "sq.md").read_text()
    assert "tau vs ground truth" in md and "Reproduce" in md
    # the page's command runs every recipe on it, whichever process wrote it last
    search_quality.main([*argv[:argv.index("--seeds")], "--only", "brief", "--seeds", "0",
                         *argv[argv.index("--work"):]])
    md = (tmp_path / "sq.md").read_text()
    command = md.split("Reproduce: `")[1].split("`")[0]
    assert "--recipe long=factor:2" in command and "--only" not in command
    assert "--seeds" not in command and "--data digits" in command
    # the same command again: everything is done, nothing is trained again
    search_quality.main(argv)
    again = json.loads((tmp_path / "sq.json").read_text())
    assert again["runs"] == res["runs"]
    # the studies lost (the teacher kept): what the results file holds is not trained again
    shutil.rmtree(tmp_path / "work" / "runs")
    search_quality.main(argv)
    assert json.loads((tmp_path / "sq.json").read_text())["runs"] == res["runs"]
    assert not list((tmp_path / "work" / "runs").glob("*/*.db"))
    # results distilled from another teacher are not mixed with these
    again["setup"]["teacher_digest"] = "0" * 16
    (tmp_path / "sq.json").write_text(json.dumps(again))
    with pytest.raises(SystemExit, match="digest"):
        search_quality.main(argv)
    # --summarise recomputes every figure from the raw runs: the headline keys too, from the
    # new summary (not from the one the file held)
    stale = {k: v for k, v in res.items() if k not in ("summary", "proxy")}
    (tmp_path / "sq.json").write_text(json.dumps(stale))
    (tmp_path / "sq.md").unlink()
    search_quality.main(["--summarise", "--out", str(tmp_path / "sq.json")])
    assert "tau within each space" in (tmp_path / "sq.md").read_text()
    fresh = json.loads((tmp_path / "sq.json").read_text())
    assert fresh["runs"] == res["runs"]
    assert fresh["summary"] == res["summary"] and fresh["proxy"] == res["proxy"]


def test_the_default_study_takes_its_kept_teacher_and_keeps_a_new_one(tmp_path, monkeypatch):
    """A new checkout has no --work folder: the default study's teacher comes from the
    repository (the recorded results used it), and one trained afresh is kept there."""
    import argparse

    import kdnas.teacher.train as tt

    import kdnas.bench.workload as workload

    monkeypatch.setattr(common, "ROOT", tmp_path)
    monkeypatch.setattr(workload, "make_subset", lambda *a: tmp_path / "data")
    trained = []

    def train(spec, arch, *, out, **kw):
        trained.append(arch)
        Path(out).write_bytes(b"new " + arch.encode())

    monkeypatch.setattr(tt, "train_teacher", train)
    ap = argparse.ArgumentParser()
    common.add_setup_args(ap)
    args = ap.parse_args(["--work", str(tmp_path / "work")])
    kept = common.kept_teacher(args)
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"recorded")
    spec, path = common.data_and_teacher(args)
    assert path.read_bytes() == b"recorded" and not trained
    assert spec == f"imagefolder:{tmp_path / 'data'}"
    args = ap.parse_args(["--work", str(tmp_path / "work"), "--teacher-arch", "resnet8"])
    _, path = common.data_and_teacher(args)
    assert trained == ["resnet8"] and common.kept_teacher(args).read_bytes() == (
        b"new resnet8")
    assert common.kept_teacher(ap.parse_args(["--data", "digits"])) is None


def test_tau_within_space_sees_a_ranking_that_a_family_offset_hides():
    """Brief accuracies in the ground truth's order inside each space, but one space's
    candidates start slow: the pooled tau is low, the tau within each space is 1."""
    truth = {"a1": .70, "a2": .72, "a3": .74, "b1": .71, "b2": .73, "b3": .75}
    brief = {"a1": .50, "a2": .52, "a3": .54, "b1": .40, "b2": .42, "b3": .44}
    res = {"candidates": [{"id": k, "space": k[0]} for k in truth],
           "runs": {"long/s0": {k: {"val_accuracy": v} for k, v in truth.items()},
                    "brief/s0": {k: {"val_accuracy": v} for k, v in brief.items()}}}
    row = search_quality.summarise(res)["recipes"]["brief"]
    assert row["tau_vs_truth"] < 0.5
    within = row["tau_within_space"]
    assert within["spaces"] == {"a": 1.0, "b": 1.0} and within["mean"] == 1.0
    assert within["truth_range"] == pytest.approx({"a": 0.04, "b": 0.04})


def test_proxy_study_processes_keep_each_others_results(tmp_path):
    """Two processes of the proxy study write one json: each save keeps what the other
    wrote since it read the file."""
    out = tmp_path / "sq.json"
    first = {"runs": {"brief/s0": {"a": {"val_accuracy": 0.5}}}, "seconds": {"x": 1.0}}
    second = {"runs": {"brief/s0": {"b": {"val_accuracy": 0.6}}}, "seconds": {"y": 2.0}}

    def save(mine):
        def change(disk):
            search_quality.merge_saved(mine, disk)
            return mine
        common.update_results(out, change)

    save(first)
    save(second)  # read before the first saved: keeps the first's run
    res = json.loads(out.read_text())
    assert set(res["runs"]["brief/s0"]) == {"a", "b"} and res["seconds"] == {"x": 1.0, "y": 2.0}


def test_headlines_are_assembled_from_each_experiments_own_file(tmp_path):
    """Each experiment writes its own results file; the headline keys are derived from them
    by one function, so no two experiments write one file."""
    from benchmarks import headlines

    def put(name, value):
        (tmp_path / name).write_text(json.dumps(value))
    put("search_quality.json", {"runs": {}, "proxy": {"kendall_tau": 0.5}})
    put("claim.json", {"claim_runs": {}, "claim": {"margin": 0.006}})
    put("across_families.json", {"runs": {}, "across": {"kendall_tau_top_rung": 0.7}})
    put("search_replay.json", {"primary_budget_B": 12, "primary": {"a": {"verdict": "tie"}},
                               "budgets": {"12": {"a": {"pick_truth_mean": 0.75}}},
                               "complete": True, "live": {"verdict": "tie", "arms": {
                                   "a": {"pick_truth": 0.74}}}})
    assert headlines.assemble(tmp_path) == {
        "proxy": {"kendall_tau": 0.5}, "claim": {"margin": 0.006},
        "across": {"kendall_tau_top_rung": 0.7,
                   "replay": {"primary_budget_B": 12, "primary": {"a": {"verdict": "tie"}},
                              "pick_truth_mean": {"a": 0.75}, "complete": True},
                   "live": {"margin_all_minus_resnet": None, "verdict": "tie",
                            "wall_seconds": None, "pick_truth": {"a": 0.74}}}}
    headlines.refresh(tmp_path / "claim.json")  # a file outside reports/: nothing written
    assert not (tmp_path / "headlines.json").exists()


def test_the_committed_headlines_are_what_their_sources_give():
    from benchmarks import headlines

    kept = json.loads((headlines.REPORTS / headlines.FILE).read_text())
    assert kept == headlines.assemble()
    assert {"proxy", "claim", "claim_across", "across", "methods", "rank"} <= set(kept)


@pytest.mark.slow
def test_claim_runs_resumes_and_reports(tmp_path):
    from benchmarks import claim

    argv = ["--data", "digits", "--teacher-arch", "resnet8", "--teacher-epochs", "1",
            "--reference", "resnet8", "--trials", "2", "--steps", "5", "--epochs", "1",
            "--seeds", "0", "1", "--work", str(tmp_path / "work"),
            "--out", str(tmp_path / "claim.json")]
    with common.held(tmp_path / "work" / "claim" / "reference-s1.lock") as mine:
        assert mine  # a second worker distils reference/s1: this one leaves it alone
        claim.main(argv)
    part = json.loads((tmp_path / "claim.json").read_text())
    found = part["claim"]["found_trial"]
    assert set(part["claim_runs"]) == {f"trial-{found}/s0", "reference/s0",
                                       f"trial-{found}/s1"}
    assert part["claim"]["verdict"].startswith("In progress")
    kept = pd.read_csv(tmp_path / "searches" / "claim-resnet8.csv")  # the search's trials
    trained = kept[kept.state == "trained"]  # beside the reference, told as trial 0
    assert len(trained) == 2 and found in set(trained.trial)
    claim.main(argv)  # the lock is free again: the rest
    res = json.loads((tmp_path / "claim.json").read_text())
    c = res["claim"]
    for key in ("found_accuracy_mean", "found_spread", "reference_accuracy_mean",
                "reference_spread", "budget_macs", "seeds"):
        assert c[key] is not None, key
    assert c["seeds"] == [0, 1] and len(c["found_accuracies"]) == 2
    assert c["found_macs"] <= c["budget_macs"]  # found within the reference's MACs
    assert c["reference_spread"] == pytest.approx(max(c["reference_accuracies"])
                                                  - min(c["reference_accuracies"]))
    assert "the claim" in c["verdict"] and "of the budget's MACs" in c["verdict"]
    assert 0 <= c["reference_brief_accuracy"] <= 1 and c["found_brief_accuracies"]
    md = (tmp_path / "claim.md").read_text()
    assert "The claim" in md and "reference resnet8" in md and "brief recipe" in md
    claim.main(argv)  # everything done: nothing trained again
    assert json.loads((tmp_path / "claim.json").read_text())["claim_runs"] == res["claim_runs"]
    claim.main([*argv, "--trials", "4"])  # a longer search: its best is distilled
    longer = json.loads((tmp_path / "claim.json").read_text())["claim"]
    assert len(longer["found_accuracies"]) == 2 and longer["search_trials"] == 4
    if longer["found_trial"] != found:  # the earlier pick's results stay, beside it
        assert longer["earlier_picks"] == {str(found): c["found_accuracies"]}
    else:
        assert longer["found_accuracies"] == c["found_accuracies"]


def test_claim_runs_saved_as_found_belong_to_the_pick_recorded_beside_them():
    from benchmarks import claim

    res = {"claim": {"found_trial": 19}, "claim_runs": {
        "found/s0": {"test_accuracy": 0.77}, "reference/s0": {"test_accuracy": 0.76},
        "trial-7/s0": {"test_accuracy": 0.78, "trial": 7}}}
    assert claim.legacy_keys(res) == {
        "trial-19/s0": {"test_accuracy": 0.77, "trial": 19},
        "reference/s0": {"test_accuracy": 0.76}, "trial-7/s0": {"test_accuracy": 0.78,
                                                                "trial": 7}}


@pytest.mark.slow
def test_kdnas_bench_runs_on_a_tiny_workload_and_reports_every_figure(tmp_path):
    """``kdnas bench --quick`` on real CIFAR-10 images: every figure the issue names is in
    benchmarks.json, each within its possible range, and BENCHMARKS.md shows it beside its
    target. (The quick workload's values mean nothing; the full run's go to reports/.)"""
    from kdnas.cli import main
    from conftest import CIFAR_ARCHIVE

    if not CIFAR_ARCHIVE.exists():
        pytest.skip(f"CIFAR-10 archive not found at {CIFAR_ARCHIVE}")
    out = tmp_path / "out"
    assert main(["bench", "--quick", "--archive", str(CIFAR_ARCHIVE), "--work",
                 str(tmp_path / "work"), "--out", str(out)]) == 0
    res = json.loads((out / "benchmarks.json").read_text())
    families = {"resnet", "resnet_bottleneck", "mobilenet", "shufflenet"}
    assert set(res["efficiency"]) == families
    assert all(0 < v < 2 for v in res["efficiency"].values())
    from kdnas.core.settings import AUTO_METHODS

    assert set(res["teacher_overhead"]) == set(AUTO_METHODS)
    # positive and finite; a quick trial lasts 0.2 s, so on a loaded machine a ratio swings
    # by several times (8.6x seen for one method with both cores busy)
    assert all(0.1 < v < 50 for v in res["teacher_overhead"].values())
    # the headline ratios are what the recorded counts give (each can be miscounted)
    d = res["details"]
    s, n, p = d["search"], d["search_no_cache"], d["plain_loop"]
    assert p["mac_images"] == pytest.approx(sum(t["macs"] * t["images"] for t in p["trials"]))
    assert s["mac_images"] == pytest.approx(sum(t["macs"] * t["images"] for t in s["trials"]))
    assert res["throughput_vs_plain_loop"] == pytest.approx(
        (s["mac_images"] / s["wall_seconds"]) / (p["mac_images"] / p["wall_seconds"]))
    assert res["throughput_vs_plain_loop_no_cache"] == pytest.approx(
        (n["mac_images"] / n["wall_seconds"]) / (p["mac_images"] / p["wall_seconds"]))
    assert res["framework_overhead"] == pytest.approx(
        1 - sum(s["shares"][k] for k in ("student", "teacher", "eval")))
    # framework_proper: a search of the default recipe (its method, its steps: 4 here)
    dr = s["default_recipe"]
    assert res["framework_proper"] == pytest.approx(
        1 - sum(dr["shares"][k] for k in ("student", "teacher", "eval")))
    assert dr["trained"] == 1 and [t["steps"] for t in dr["trials"]] == [4]
    # like for like: the three runs trained the same students on the same images, the plain
    # loop with each of its settings, and the peer is the fastest of them
    assert s["teacher_cache"] is True and n["teacher_cache"] is False
    archs = [t["arch"] for t in s["trials"]]
    assert archs == [t["arch"] for t in n["trials"]] == [t["arch"] for t in p["trials"]]
    # 160 images, 16 held out for validation: 144 a trial (1 epoch of 2 steps: 128 + 16)
    assert [t["images"] for t in s["trials"]] == [t["images"] for t in p["trials"]] == [144, 144]
    assert res["like_for_like"] == {"students": True, "images": True}
    assert len(p["settings"]) == 4
    assert p["wall_seconds"] == min(r["wall_seconds"] for r in p["settings"])
    mem = res["memory"]
    assert mem["peak_rss_mb"] > 100 and 0 < mem["teacher_cache_mb"] < 100
    # the bench's search ranks with logit KD: its cache holds logits alone, as a logit
    # method's cache beside a full one in the overhead section shows
    lean = d["teacher_overhead"]["logit_first_trial"]
    assert 0 < lean["logits_only_mb"] * 20 < lean["features_mb"]
    assert mem["teacher_cache_mb"] < 1 and "caches the teacher's logits alone" in \
        (out / "BENCHMARKS.md").read_text()
    d = res["details"]
    assert d["search"]["trained"] == 2 and len(d["plain_loop"]["trials"]) == 2
    assert all(t["macs"] <= 25e6 for t in d["plain_loop"]["trials"])
    assert abs(sum(d["search"]["shares"].values()) - 1) < 0.05  # the phases cover the wall
    assert all(t["step_ms"] > 0 and t["estimated_step_ms"] > 0 for t in d["training"].values())
    md = (out / "BENCHMARKS.md").read_text()
    for key in ("efficiency.resnet", "teacher_overhead.pkt", "framework_overhead",
                "framework_proper", "throughput_vs_plain_loop", "memory.peak_rss_mb"):
        assert f"`{key}`" in md
    assert "| >= 0.6 |" in md and "| <= 1.15 |" in md and "| >= 1.05 |" in md
    assert "| >= 1.3 |" in md and "| <= 0.03 |" in md and "like for like" in md and archs[0] in md
    assert "## On a GPU" in md and "Not measured: no GPU was visible" in md
    # step 5: the same students in every setting, as many runs as students, the default
    # planned as `kdnas search --workers auto` plans it, and the ratios from the walls
    c = res["cpu"]
    runs = c["runs"]
    assert {k: [r["student"] for r in v["runs"]] for k, v in runs.items()} == {
        k: list(range(len(c["students"]))) for k in runs}
    assert runs["one_at_a_time"]["workers"] == 1
    assert runs["one_at_a_time"]["threads"] == c["usable_cores"]
    assert runs["auto"]["workers"] * runs["auto"]["threads"] <= c["usable_cores"]
    assert c["trials_per_hour_vs_one_at_a_time"] == pytest.approx(
        runs["one_at_a_time"]["wall_seconds"] / runs["auto"]["wall_seconds"])
    assert c["contended_slowdown"] == pytest.approx(
        runs["auto_busy"]["wall_seconds"] / runs["auto"]["wall_seconds"])
    assert 0 <= c["estimate_error"]["alone"] < 10 and "`cpu.contended_slowdown`" in md


def test_the_plain_loop_reads_the_very_images_kdnas_trains_and_validates_on(cifar_subset):
    """kdnas' training and validation split of an ImageFolder tree, by index, picks the same
    decoded pixels from torchvision's ImageFolder (the plain loop's data set)."""
    import numpy as np
    from torchvision import datasets

    from kdnas.data import load_data, split_indices

    data = load_data(f"imagefolder:{cifar_subset}", val_fraction=0.1, seed=0)
    folder = datasets.ImageFolder(cifar_subset / "train")
    train, val = split_indices(len(folder), 0.1, 0)
    assert len(train) == len(data.train_y) and len(val) == len(data.val_y)
    for ours, xs, ys, idx in (("train", data.train_x, data.train_y, train[::97]),
                              ("val", data.val_x, data.val_y, val[::13])):
        pos = np.searchsorted(train if ours == "train" else val, idx)
        for i, j in zip(idx, pos, strict=True):
            img, label = folder[int(i)]
            assert label == int(ys[j])
            pixels = np.asarray(img.convert("RGB")).transpose(2, 0, 1)
            assert np.array_equal(pixels, xs[j].numpy()), (ours, int(i))


@pytest.mark.slow
def test_the_gpu_check_runs_on_a_cpu_in_its_quick_form(tmp_path):
    """tools/gpu_check.sh, as a GPU machine runs it but on this CPU and with the tiny
    workload: the device tests, then the GPU benchmark's plain loop and kdnas on the same
    candidates, its figures written and marked as not a GPU's."""
    import os
    import subprocess
    import sys

    from conftest import CIFAR_ARCHIVE

    if not CIFAR_ARCHIVE.exists():
        pytest.skip(f"CIFAR-10 archive not found at {CIFAR_ARCHIVE}")
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, QUICK="1", DEVICE="cpu", NO_INSTALL="1", PYTHON=sys.executable,
               REPORTS=str(tmp_path / "out"), TESTS="tests/test_device.py -k workers_auto")
    run = subprocess.run(["bash", str(root / "tools" / "gpu_check.sh"), "run",
                          str(CIFAR_ARCHIVE)], env=env, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "CUDA TESTS FAILED" not in run.stdout and " passed" in run.stdout
    gpu = json.loads((tmp_path / "out" / "benchmarks.json").read_text())["gpu"]
    assert gpu["gpu"] is False and gpu["device"] == "cpu"
    fams = [c["family"] for c in gpu["candidates"]]
    assert fams == ["resnet", "mobilenet", "shufflenet"]
    assert all(0.2e6 <= c["macs"] <= 3e6 for c in gpu["candidates"])
    peer, ours = gpu["peer"], gpu["kdnas"][0]
    assert len(peer["trials"]) == 3 and ours["trained"] == 3 and ours["workers"] == 1
    # the same steps of the same batches: 108 training images, one short batch an epoch
    assert peer["images"] == ours["images"] == 3 * 3 * 108
    assert gpu["throughput_vs_plain_loop"] > 0 and gpu["minutes_for_100_trials"] > 0
    assert gpu["teacher_step"]["kdnas_seconds"] > 0 and gpu["teacher_step"]["ratio"] > 0
    assert set(gpu["precision"]) == set(fams) and all(
        p[k] > 0 and p.get(f"{k}_speedup", 1) > 0 for p in gpu["precision"].values()
        for k in ("fp32", "bf16", "fp32_nchw", "bf16_nchw"))
    assert set(gpu["graphs"]) == set(fams) and all(  # a CPU captures nothing
        g["eager"] > 0 and g["graph"] > 0 and g["graph_replayed"] == 0
        for g in gpu["graphs"].values())
    md = (tmp_path / "out" / "BENCHMARKS.md").read_text()
    assert "**not a GPU**" in md and "| plain loop | 1 |" in md and "| kdnas | 1 |" in md
    assert "| mobilenet |" in md and "steps replayed" in md
    assert "| family | fp32 channels_last | bf16 channels_last | fp32 NCHW | bf16 NCHW |" in md
    # a second call sweeps worker counts (no tests, no other part) and keeps the first's
    sweep = subprocess.run(["bash", str(root / "tools" / "gpu_check.sh"), "run",
                            str(CIFAR_ARCHIVE)], env=dict(env, SKIP_TESTS="1", WORKERS="1,2"),
                           capture_output=True, text=True, timeout=600)
    assert sweep.returncode == 0, sweep.stdout[-3000:] + sweep.stderr[-3000:]
    assert "CUDA tests" not in sweep.stdout and "STOPPED" not in sweep.stdout
    both = json.loads((tmp_path / "out" / "benchmarks.json").read_text())
    assert both["gpu"] == gpu  # the full run's figures, untouched
    rows = both["gpu_workers"]["kdnas"]
    assert [r["workers"] for r in rows] == [1, 2] and all(r["trained"] == 3 for r in rows)
    assert "precision" not in both["gpu_workers"] and "graphs" not in both["gpu_workers"]
    md = (tmp_path / "out" / "BENCHMARKS.md").read_text()
    assert "### Trial processes sharing the GPU" in md and "| 2 |" in md
    # at its time budget the benchmark is interrupted: it stops its searches (no process
    # goes on training) and keeps the parts it finished, marked incomplete
    env.update(BUDGET="20", REPORTS=str(tmp_path / "cut"))
    cut = subprocess.run(["bash", str(root / "tools" / "gpu_check.sh"), "run",
                          str(CIFAR_ARCHIVE)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert cut.returncode == 0 and "GPU BENCHMARK STOPPED (status 124" in cut.stdout
    left = subprocess.run(["pgrep", "-f", "kdnas search --study bench-gpu"],
                          capture_output=True, text=True)
    assert left.stdout == "", left.stdout
    part = tmp_path / "cut" / "benchmarks.json"
    if part.exists():  # the plain loop finished within the budget
        assert json.loads(part.read_text())["gpu"]["complete"] is False


def test_the_gpu_section_states_its_figures_against_the_targets():
    from kdnas.bench.gpu import gpu_lines

    run = {"workers": 4, "images_per_second": 9000.0, "trials_per_hour": 1500.0,
           "wall_seconds": 40.0, "shares": {"student": 0.8, "eval": 0.1},
           "utilisation": {"mean_percent": 71.0, "median_percent": 80.0, "samples": 90}}
    gpu = {"device": "cuda:0 (NVIDIA H100 80GB HBM3)", "gpu": True, "steps": 400,
           "batch": 128, "kd": "dkd-ls", "train_images": 45000,
           "candidates": [{"macs": 6e6}, {"macs": 48e6}],
           "peer": {"images_per_second": 3000.0, "trials_per_hour": 500.0,
                    "wall_seconds": 120.0, "utilisation": None},
           "kdnas": [dict(run, workers=1, images_per_second=2000.0), run], "best_workers": 4,
           "throughput_vs_plain_loop": 3.0, "minutes_for_100_trials": 4.0,
           "teacher_step": {"arch": "resnet20", "kdnas_seconds": 0.010,
                            "plain_seconds": 0.0086, "ratio": 1.16},
           "graphs": {"resnet": {"eager": 0.009, "graph": 0.003, "graph_speedup": 3.0,
                                 "graph_replayed": 47}},
           "precision": {"mobilenet": {"fp32": 0.010, "bf16": 0.0125, "fp32_nchw": 0.005,
                                       "bf16_nchw": 0.008, "bf16_speedup": 0.8,
                                       "fp32_nchw_speedup": 2.0, "bf16_nchw_speedup": 1.25}}}
    text = "\n".join(gpu_lines(gpu))
    assert "| plain loop | 1 | 3000 | 500 | 120.0 | not sampled" in text
    assert "| kdnas | 4 | 9000 | 1500 | 40.0 | 71% mean (90 samples) |" in text
    assert "| 3.00x | >= 4: **not met** |" in text and "| 4.0 | <= 5: met |" in text
    assert "10.0 / 8.6 ms = 1.16x | <= 1.2: met |" in text and "student 80%" in text
    assert "not a GPU" not in text and "H100" in text
    assert "| resnet | 9.00 | 3.00 | 3.00x | 47 |" in text
    assert "| mobilenet | 10.00 | 12.50 (0.80x) | 5.00 (2.00x) | 8.00 (1.25x) |" in text
    assert "not a GPU" in "\n".join(gpu_lines(dict(gpu, gpu=False, device="cpu")))
    assert "Not measured" in "\n".join(gpu_lines(None))
    near = "\n".join(gpu_lines(dict(gpu, throughput_vs_plain_loop=3.999)))
    assert "| 3.999x | >= 4: **not met** |" in near  # never a rounded-up 4.00


def test_a_figure_against_its_target_never_rounds_across_the_bar():
    from kdnas.targets import figure, meets, shown, verdict

    assert figure(0.699, ">=", 0.7) == "0.699" and verdict(">=", 0.7, 0.699) == "not met"
    assert figure(0.70, ">=", 0.7) == "0.70" and figure(0.7349, ">=", 0.7) == "0.73"
    assert figure(3.0004, "<=", 3.0, ".3g") == "3.0004" and figure(3.9, "<=", 3, ".3g") == "3.9"
    assert figure(1.7996, ">=", 1.8) == "1.7996" and meets("<=", 1.0, 1.0)
    assert shown(0.699, ">=", 0.7) == "0.699 (target >= 0.7: not met)"
    assert shown(None, "<=", 1.0) == "not measured yet (target <= 1)"
    with pytest.raises(ValueError):
        meets(">", 1.0, 2.0)


def test_a_space_whose_truth_lies_within_seed_noise_is_marked_and_left_out_of_the_mean():
    import pandas as pd

    ids = list("abcdef")
    space = pd.Series(["x", "x", "x", "y", "y", "y"], index=ids)
    truth = pd.Series([0.70, 0.72, 0.74, 0.750, 0.751, 0.752], index=ids)
    proxy = pd.Series([0.40, 0.42, 0.44, 0.52, 0.51, 0.50], index=ids)  # y's order reversed
    w = search_quality._tau_within(proxy, truth, space, noise=0.004)
    assert w["spaces"] == pytest.approx({"x": 1.0, "y": -1.0})
    assert w["mean"] == pytest.approx(0.0)
    assert w["noise_spaces"] == ["y"] and w["mean_beyond_noise"] == pytest.approx(1.0)
    assert "y -1.00 over a 0.2-point truth range: noise" in search_quality._within_text(w)
    # with no seed noise measured, nothing is called noise
    assert search_quality._tau_within(proxy, truth, space)["noise_spaces"] == []


def _claim_runs(found: list[float], ref: list[float], epochs: float = 10) -> dict:
    runs = {f"trial-3/s{i}": {"test_accuracy": a, "epochs": epochs} for i, a in enumerate(found)}
    runs.update({f"reference/s{i}": {"test_accuracy": a, "epochs": epochs}
                 for i, a in enumerate(ref)})
    return runs


def _claim(found: list[float], ref: list[float]) -> dict:
    import argparse

    from benchmarks import claim

    args = argparse.Namespace(seeds=list(range(len(found))), epochs=10, reference="resnet8",
                              trials=20)
    return claim.summarise(_claim_runs(found, ref), args, [], 12_500_000, 3, "resnet x",
                           8_500_000, {"found": [0.6], "reference": 0.57})


def test_the_claim_holds_only_when_the_gap_exceeds_the_seed_spread():
    held = _claim([0.775, 0.770, 0.778], [0.760, 0.765, 0.762])
    assert held["margin"] == pytest.approx(0.012) and "the claim holds" in held["verdict"]
    assert held["welch_p"] < 0.05 and "beats the reference by +1.20 points" in held["verdict"]
    inside = _claim([0.770, 0.760, 0.775], [0.765, 0.758, 0.770])  # gap 0.4, spread 1.5
    assert "the claim does not hold here" in inside["verdict"]
    assert "not more than the larger seed spread (1.50 points)" in inside["verdict"]
    assert inside["welch_p"] > 0.3
    worse = _claim([0.740, 0.742, 0.741], [0.760, 0.762, 0.761])
    assert "does not beat" in worse["verdict"] and "does not hold" in worse["verdict"]
    assert "uses 68% of the budget's MACs" in held["verdict"]
    import argparse

    from benchmarks import claim

    args = argparse.Namespace(seeds=[0, 1], epochs=10, reference="resnet8", trials=20)
    part = claim.summarise(_claim_runs([0.77], [0.76, 0.75]), args, [], 12_500_000, 3, "x",
                           8_500_000, {"found": [0.6], "reference": 0.57})
    assert part["verdict"].startswith("In progress: 1 of 2 found") and "margin" not in part


def test_welch_p_is_welchs_test_by_its_formula():
    """Welch's t and Welch-Satterthwaite degrees of freedom, by hand, against common.welch_p."""
    import math

    from scipy.stats import t as student_t

    a, b = [0.775, 0.770, 0.778, 0.772], [0.760, 0.765, 0.762]

    def var(x):
        m = sum(x) / len(x)
        return sum((v - m) ** 2 for v in x) / (len(x) - 1)
    va, vb = var(a) / len(a), var(b) / len(b)
    t = (sum(a) / len(a) - sum(b) / len(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    assert common.welch_p(a, b) == pytest.approx(2 * student_t.sf(abs(t), df), rel=1e-9)
    assert common.welch_p([0.7], b) is None  # one seed: no test


def _replay_table(brief: dict, long: dict, truth: dict, family: dict):
    """A hand-built across-families table: every candidate 3.5M MACs, 10 s a rung-1x run,
    30 s to 4x, 40 s to 8x."""

    ids = list(truth)
    return search_replay.Table(
        ids=ids, family=family, macs={k: 3.5e6 for k in ids},
        acc={1: brief, 4: long, 8: long},
        seconds={1: {k: 10.0 for k in ids}, 4: {k: 30.0 for k in ids},
                 8: {k: 40.0 for k in ids}},
        truth=truth, truth_spread=0.004, budget=4e6)


def test_replayed_searches_see_their_own_families_spend_the_recorded_seconds_and_pick():
    """A slow starter (m1: last at rung 1x, best at 4x and in truth): the brief searches pick
    r1, the 1,4 search promotes m1 by the family quota and picks it; the ResNet-only search
    never sees m1; each search's seconds are the table's own."""

    fam = {"r1": "resnet", "r2": "resnet", "m1": "mobilenet", "s1": "shufflenet"}
    brief = {"r1": 0.50, "r2": 0.48, "m1": 0.40, "s1": 0.45}
    long = {"r1": 0.70, "r2": 0.69, "m1": 0.76, "s1": 0.72}
    t = _replay_table(brief, long, {k: v + 0.001 for k, v in long.items()}, fam)
    order = ["m1", "r2", "s1", "r1"]
    by = {s.name: s for s in search_replay.STRATEGIES}
    pick, front, spent, top = search_replay.run_search(t, by["resnet-brief"], order, 4)
    assert (pick, spent, top) == ("r1", 20.0, 2)
    pick, _, spent, _ = search_replay.run_search(t, by["all-brief"], order, 4)
    assert (pick, spent) == ("r1", 40.0)
    pick, front, spent, top = search_replay.run_search(t, by["all-rungs14"], order, 4)
    # one band (equal MACs): ceil(4/3) = 2 places, but each of the 3 families keeps one
    assert (pick, top, spent) == ("m1", 3, 40.0 + 3 * 30.0)
    assert front == ["m1"]  # equal MACs: the most accurate dominates


def test_replay_fits_the_trials_to_the_budget_and_marks_ties_by_the_seed_spread():

    fam = {f"r{i}": "resnet" for i in range(3)} | {f"m{i}": "mobilenet" for i in range(3)}
    brief = {k: 0.5 - 0.01 * i for i, k in enumerate(fam)}
    truth = {k: 0.7 + (0.05 if k == "m2" else 0.0) for k in fam}
    t = _replay_table(brief, truth, truth, fam)
    out = search_replay.replay(t, seeds=20, budgets=(3, 12))
    # B = 10 s: at 3B the brief searches train 3 candidates, a 1,4,8 search none (80 s for one)
    rows = out["budgets"]["3"]
    assert rows["all-brief"]["trials"] == 3 and rows["all-brief"]["seconds_used_in_B"] == 3.0
    assert not rows["all-rungs148"]["fits"]
    for name, r in out["budgets"]["12"].items():
        if r["fits"]:
            assert r["seconds_used_in_B"] <= 12.0 + 1e-9, name
    assert out["budgets"]["12"]["resnet-brief"]["pick_truth_mean"] == pytest.approx(0.7)
    # a 1,4,8 search of 2 trials (8-12B) that meets m2 beside a ResNet takes both to 4x and
    # picks m2 (truth +5 points); m2 is last at rung 1x, so the brief searches never pick it
    mf = out["budgets"]["12"]["all-rungs148"]
    assert mf["trials"] == 2 and mf["pick_truth_mean"] > 0.7 + 0.004
    assert out["budgets"]["12"]["all-brief"]["pick_truth_mean"] == pytest.approx(0.7)
    p = search_replay.primary(out, w=12)
    assert p["resnet-brief"]["verdict"] == p["all-brief"]["verdict"] == "better"
    out["truth_seed_spread"] = 1.0
    assert all(v is None or v["verdict"] == "tie" for v in search_replay.primary(out, 12).values())


def _across_runs(found: list[float], refs: dict[str, list[float]]) -> dict:
    runs = {f"trial-3/s{s}": {"test_accuracy": a, "epochs": 10} for s, a in enumerate(found)}
    for name, accs in refs.items():
        runs |= {f"ref-{name}/s{s}": {"test_accuracy": a, "epochs": 10}
                 for s, a in enumerate(accs)}
    return runs


def test_the_claim_across_families_meets_the_strongest_reference_at_the_first_seed():
    from benchmarks import claim_across

    setup = {"seeds": [0, 1, 2], "epochs": 10, "found_trial": 3, "found_arch": "shufflenet x"}
    mb, sh = "mobilenet:mobilenetv2_half", "shufflenet:shufflenetv2_half"
    refs = {"resnet8": [0.768], mb: [0.771, 0.770, 0.772], sh: [0.760]}
    # stage 1 is not complete until every reference has its first seed
    assert claim_across.strongest(_across_runs([], {"resnet8": [0.77]}), 0) is None
    c = claim_across.summarise(_across_runs([0.785, 0.781, 0.783], refs), setup)
    assert c["opponent"] == mb and c["stage1"]["resnet8"] == 0.768
    assert c["margin"] == pytest.approx(0.012) and "the claim holds" in c["verdict"]
    tie = claim_across.summarise(_across_runs([0.772, 0.765, 0.775], refs), setup)
    assert "a tie" in tie["verdict"] and "trails" in tie["verdict"]
    assert "MACs" not in tie["verdict"]  # not known in this setup: not made up
    sized = claim_across.summarise(_across_runs([0.772, 0.765, 0.775], refs), {
        **setup, "found_macs": 6e6, "references": {mb: {"macs": 8e6}}})
    assert sized["verdict"].endswith("with 75% of its MACs (6.00M against 8.00M).")
    worse = claim_across.summarise(_across_runs([0.750, 0.751, 0.752], refs), setup)
    assert "the reference is better" in worse["verdict"]
    part = claim_across.summarise(_across_runs([0.785], refs), setup)
    assert "In progress" in part["verdict"] and "margin" not in part


def test_the_shipped_claim_takes_its_recorded_pick_from_the_kept_trials(tmp_path):
    from benchmarks import claim_across
    from kdnas.core.settings import SearchConfig

    # the committed results and trials of the shipped claim's search, in a new checkout
    (tmp_path / "searches").mkdir()
    out = tmp_path / "claim_shipped.json"
    shutil.copyfile(ROOT / "reports" / "claim_shipped.json", out)
    shutil.copyfile(ROOT / "reports" / "searches" / "claim-shipped-resnet8.csv",
                    tmp_path / "searches" / "claim-shipped-resnet8.csv")
    cfg = SearchConfig(study="claim-shipped-resnet8", teacher="t.pt", data="cifar10:x",
                       workdir=str(tmp_path / "runs"))
    setup, spec = claim_across.kept_pick(out, "claim_shipped", cfg, (3, 32, 32))
    recorded = json.loads(out.read_text())["claim_shipped"]
    assert spec["space"] == "shufflenet" and setup["found_trial"] == recorded["found_trial"]
    assert "verdict" not in setup and "changed" not in setup  # recomputed, never carried
    assert setup["found_macs"] == recorded["found_macs"]
    # another trial's MACs: not the recorded pick, so it refuses instead of distilling it
    res = json.loads(out.read_text())
    res["claim_shipped"]["found_trial"] = 0
    out.write_text(json.dumps(res))
    with pytest.raises(SystemExit, match="not the same student"):
        claim_across.kept_pick(out, "claim_shipped", cfg, (3, 32, 32))
    # the study on this machine: the search resumes it instead
    cfg.study_dir.mkdir(parents=True)
    (cfg.study_dir / "study.db").write_bytes(b"")
    assert claim_across.kept_pick(out, "claim_shipped", cfg, (3, 32, 32)) is None


def test_the_shipped_claim_says_what_changed_against_the_claim_as_made():
    from benchmarks import claim_across

    made = json.loads((ROOT / "reports" / "claim_across.json").read_text())["claim_across"]
    sh, mb = "shufflenet:shufflenetv2_half", "mobilenet:mobilenetv2_half"
    setup = {"seeds": [0, 1, 2], "epochs": 10, "found_trial": 3, "distill_kd": "dist",
             "found_arch": "shufflenet x", "found_macs": 8e6}
    refs = {"resnet8": [0.7827], mb: [0.7138], sh: [0.7843, 0.7830, 0.7850]}
    c = claim_across.summarise(_across_runs([0.7900, 0.7890, 0.7910], refs), setup)
    w = claim_across.what_changed(c, made)
    assert not w["same_pick"] and w["opponent_as_made"] == sh
    assert w["stage1"][mb]["change"] == pytest.approx(0.7138 - made["stage1"][mb])
    # margin +0.59 against -0.05: a change of 0.64 points, inside the as-made pick's
    # 0.82-point spread (the largest of the four students')
    assert w["margin_change"] == pytest.approx(c["margin"] - made["margin"])
    assert w["noise"] == pytest.approx(made["found"]["spread"])
    assert w["verdict"] == "within the seed noise"
    c["changed"] = w
    text = " ".join(claim_across.changed_lines(c))
    assert "another architecture than the claim as made's trial 19" in text
    assert f"{mb} 71.38% against 75.60% (-4.22)" in text and "the same opponent" in text
    wide = claim_across.summarise(_across_runs([0.8000, 0.8010, 0.8005], refs), setup)
    assert claim_across.what_changed(wide, made)["verdict"] == "beyond the seed noise"
    part = claim_across.summarise(_across_runs([0.79], refs), setup)
    assert claim_across.what_changed(part, made) is None
    assert claim_across.changed_lines(part) == []


def test_a_deploy_run_in_another_checkout_is_the_same_data_only_for_the_same_work_tree():
    from benchmarks.claim_across import same_data

    assert same_data("imagefolder:/a/run_deploy/.bench/search_quality/data",
                     "imagefolder:/b/main/.bench/search_quality/data")
    assert not same_data("imagefolder:/a/.bench/other/data",
                         "imagefolder:/b/.bench/search_quality/data")
    assert not same_data("imagefolder:/a/data", "imagefolder:/b/data")
    assert not same_data(None, "imagefolder:/b/.bench/search_quality/data")
    assert same_data("digits", "digits") and not same_data("digits", "cifar10:/x")


def test_the_ranking_page_states_each_decision_and_the_ranker_against_its_target():
    from benchmarks import rank_fresh

    res = json.loads((ROOT / "reports" / "rank_fresh.json").read_text())
    r = res["rank"]
    text = "\n".join(rank_fresh.decision_lines(res))
    assert f"Decision 1 (the ranker): {r['decision']} (no learning-curve" in text
    assert f"Decision 2 (features): {r['features_decision']}." in text
    assert f"The search ranks with {r['ranker']}" in text
    # the chosen ranker's 0.69 below the 0.8 target, its 1.22x cost within 1.5x
    assert "tau 0.69 (target >= 0.8: not met) at a cost of 1.22 (target <= 1.5: met)" in text
    adopted = {"rank": {**r, "decision": "adopt curve_extrapolated"}}
    assert "(no learning-curve" not in "\n".join(rank_fresh.decision_lines(adopted))
    pending = {"rank": {"target": r["target"]}}
    assert rank_fresh.decision_lines(pending)[0].startswith("No signal is frozen yet.")


def test_the_full_recipe_figures_compare_each_method_with_fitnets_by_the_noise_rule():
    from benchmarks import method_choice

    def runs(per_method):
        return {f"{m}/s{s}": {"c1": {"val_accuracy": a}}
                for m, accs in per_method.items()
                for s, a in zip((10, 11, 12), accs, strict=False)}
    res = {"part_a_setup": {"students": {"c1": "resnet x"}, "seeds": [10, 11, 12],
                            "methods": ["fitnets", "dkd", "dist", "rkd"]},
           "part_a": runs({"fitnets": [0.740, 0.742, 0.744], "dkd": [0.760, 0.761, 0.762],
                           "dist": [0.741, 0.748, 0.735], "rkd": [0.70, 0.71]})}
    row = method_choice.part_a_figures(res)["c1"]["methods"]
    assert row["dkd"]["margin_over_fitnets"] == pytest.approx(0.019)
    assert row["dkd"]["verdict"] == "better" and row["dkd"]["welch_p"] < 0.01
    assert row["dist"]["verdict"] == "tie"  # a margin inside its own seed SD
    assert "verdict" not in row["rkd"] and len(row["rkd"]["accuracies"]) == 2  # not done


def _part_a(students: dict[str, dict[str, list[float]]]) -> dict:
    runs: dict = {}
    for cid, per_method in students.items():
        for m, accs in per_method.items():
            for s, a in zip((10, 11, 12), accs, strict=False):
                runs.setdefault(f"{m}/s{s}", {})[cid] = {"val_accuracy": a}
    methods = list(next(iter(students.values())))
    return {"part_a_setup": {"students": {cid: f"arch {cid}" for cid in students},
                             "seeds": [10, 11, 12], "methods": methods}, "part_a": runs}


def test_the_distill_default_changes_only_for_a_method_that_beats_fitnets_on_both_students():
    from benchmarks import method_choice

    fit = [0.740, 0.742, 0.744]
    # dkd is best on average but ties FitNets on the second student: FitNets stays
    res = _part_a({"a": {"none": [0.9, 0.9, 0.9], "fitnets": fit, "dkd": [0.77, 0.771, 0.772]},
                   "b": {"none": [0.9, 0.9, 0.9], "fitnets": [0.70, 0.71, 0.72],
                         "dkd": [0.705, 0.715, 0.72]}})
    d = method_choice.part_a_decision(method_choice.part_a_figures(res), 3)
    assert d["best"] == "dkd" and not d["best_beats_fitnets_on_both"]  # "none" is not a method
    assert d["method"] == "fitnets" and d["student"]["id"] == "a"
    res = _part_a({"a": {"fitnets": fit, "dkd": [0.77, 0.771, 0.772]},
                   "b": {"fitnets": fit, "dkd": [0.76, 0.761, 0.762]}})
    d = method_choice.part_a_decision(method_choice.part_a_figures(res), 3)
    assert d["method"] == "dkd" and d["best_beats_fitnets_on_both"]
    res = _part_a({"a": {"fitnets": fit, "dkd": [0.77, 0.771]}})
    assert method_choice.part_a_decision(method_choice.part_a_figures(res), 3) == {
        "complete": False}


def test_the_two_kd_defaults_are_the_ones_the_recorded_evidence_chose():
    """SEARCH_DEFAULT and the taus the report quotes follow part B's rule on the recorded
    runs; DISTILL_DEFAULT follows part A's once all its runs are recorded (FitNets before)."""
    from benchmarks import method_choice

    from kdnas.core.kd_methods import (ACROSS_FAMILIES_TAU, DISTILL_DEFAULT, SEARCH_DEFAULT,
                                       canonical_method)

    res = json.loads((ROOT / "reports" / "distill_methods.json").read_text())
    res.pop("methods", None)
    figures = method_choice.figures(res)["methods"]  # from the raw runs, not a stored summary
    tau = figures["brief_tau_pooled"]
    best = max(tau, key=tau.get)
    assert ACROSS_FAMILIES_TAU == {m: round(t, 2) for m, t in tau.items()}
    from benchmarks import rank_fresh

    from kdnas.core.kd_methods import ACROSS_FAMILIES_FRESH, ACROSS_FAMILIES_RERUN
    rerun = json.loads((ROOT / "reports" / "rank_fresh.json").read_text())
    assert ACROSS_FAMILIES_RERUN["dkd-ls"] == round(
        rerun["summary"]["dev"]["arms"]["brief-dkd-ls/s2"]["tau_pooled"], 2)
    # the search's method: part B's rule, until the fresh set's decision 2 (derived again
    # from the raw runs) replaces it
    ranking = rank_fresh.rank_keys(rerun)
    if ranking["features_decision"] is None:
        assert canonical_method(SEARCH_DEFAULT) == (best if tau[best] > tau["fitnets"] + 0.1
                                                    else "fitnets")
    else:
        arm = {"keep dkd-ls": "dkd-ls", "move to brief_fitnets": "fitnets",
               "move to brief_dkd_ls_hints": "dkd-ls-hints"}[ranking["features_decision"]]
        assert canonical_method(SEARCH_DEFAULT) == arm
    signals = rerun["summary"]["fresh"]["signals"]
    assert ACROSS_FAMILIES_FRESH == {
        m: round(signals["brief_" + m.replace("-", "_")]["tau_pooled"], 2)
        for m in ("fitnets", "dkd-ls", "dkd-ls-hints")}
    decision = figures["distill_decision"]
    expected = decision["method"] if decision["complete"] else "fitnets"
    assert canonical_method(DISTILL_DEFAULT) == expected
    # part D: a method's final cross-entropy weight is its paper's exactly where the papers'
    # weighting beat the mixing on both students; the default follows decision 2
    d = figures.get("papers_weighting", {})
    if d.get("complete"):
        from kdnas.core.kd_methods import KD_BY_NAME

        for m in d["students"][next(iter(d["students"]))]["methods"]:
            papers = KD_BY_NAME[m].final_ce_weight == d["ce_weight"]
            assert papers == (m in d["papers_weighting_wins"]), m
        default = d["distill_default"]
        assert canonical_method(DISTILL_DEFAULT) == default.removesuffix("-ce1")
        if default.endswith("-ce1"):
            assert KD_BY_NAME[canonical_method(DISTILL_DEFAULT)].final_ce_weight == 1.0
    # part C's verdict, derived again, is the one the user's guide states (no early-teacher
    # flag unless the early teacher wins)
    gap = figures["capacity_gap"]
    readme = (ROOT / "docs" / "guide.md").read_text()  # the user's guide states it
    if gap.get("verdict") == "worse":
        assert f"{100 * gap['early_mean']:.1f}%" in readme
        assert f"{100 * gap['final_mean']:.1f}%" in readme


def test_the_capacity_gap_pairs_each_early_teacher_run_with_part_as_run_of_that_seed():
    from benchmarks import method_choice

    res = _part_a({"a": {"fitnets": [0.740, 0.750, 0.760], "none": [0.70, 0.71, 0.72]}})
    res["part_c_setup"] = {"student": {"id": "a", "arch": "arch a"}, "method": "fitnets",
                           "seeds": [10, 11, 12], "early_teacher": {"fraction": 0.25,
                           "digest": "e", "val_accuracy": 0.6}, "final_teacher": {
                           "digest": "f", "val_accuracy": 0.79, "rerun_val_accuracy": 0.79}}
    res["part_c"] = {"early-fitnets/s10": {"a": {"val_accuracy": 0.745}},
                     "early-fitnets/s11": {"a": {"val_accuracy": 0.751}}}
    gap = method_choice.part_c_figures(res)
    assert gap["paired_differences"] == pytest.approx([0.005, 0.001]) and "verdict" not in gap
    res["part_c"]["early-fitnets/s12"] = {"a": {"val_accuracy": 0.762}}
    gap = method_choice.part_c_figures(res)
    assert gap["margin"] == pytest.approx(0.0026667, abs=1e-6)
    assert gap["verdict"] == "tie"  # well inside the seeds' SD of 0.01
    assert any("**tie**" in line for line in method_choice.part_c_lines(gap))
    # the student without a teacher, same seeds, is quoted for scale
    assert gap["no_teacher_mean"] == pytest.approx(0.71)
    assert any("reaches 71.00%" in line for line in method_choice.part_c_lines(gap))


def test_the_live_confirmation_marks_a_margin_inside_the_seed_spread_a_tie():
    from benchmarks import search_live

    def live(resnet, all_):
        return {"arms": {"resnet": {"pick_trial": 1}, "all": {"pick_trial": 2}},
                "runs": {f"truth/s{s}": {"resnet-trial1": {"val_accuracy": resnet[s]},
                                         "all-trial2": {"val_accuracy": all_[s]}}
                         for s in (0, 1)}}
    better = search_live.summarise(live([0.72, 0.73], [0.75, 0.755]))
    assert better["verdict"] == "all better"
    assert better["margin_all_minus_resnet"] == pytest.approx(0.0275)
    assert search_live.summarise(live([0.72, 0.73], [0.722, 0.73]))["verdict"] == "tie"
    assert "contradicts" in search_live.summarise(live([0.75, 0.75], [0.72, 0.73]))["verdict"]
    one = live([0.72, 0.73], [0.75, 0.75])
    del one["runs"]["truth/s1"]["all-trial2"]
    assert "verdict" not in search_live.summarise(one)  # a pick's truth is not complete


def test_part_d_pairs_the_papers_weighting_with_part_as_runs_and_applies_both_rules():
    from benchmarks import method_choice

    res = _part_a({"a": {"none": [0.70, 0.70, 0.70], "fitnets": [0.74, 0.74, 0.75],
                         "dist": [0.750, 0.752, 0.754], "dkd": [0.730, 0.732, 0.734]},
                   "b": {"none": [0.70, 0.70, 0.70], "fitnets": [0.74, 0.74, 0.75],
                         "dist": [0.740, 0.742, 0.744], "dkd": [0.720, 0.722, 0.724]}})
    res["part_d_setup"] = {"students": {"a": "arch a", "b": "arch b"}, "seeds": [10, 11, 12],
                           "methods": ["dist", "dkd"], "ce_weight": 1.0, "steps": 3200}
    part_a = method_choice.part_a_decision(method_choice.part_a_figures(res), 3)
    runs = res["part_d"] = {}
    # dkd with the papers' weighting: +3 points on both students, well beyond its SD of 0.2
    for cid, base in (("a", 0.760), ("b", 0.750)):
        for s, acc in zip((10, 11, 12), (base, base + 0.002, base + 0.004), strict=True):
            runs.setdefault(f"dkd-ce1/s{s}", {})[cid] = {"val_accuracy": acc}
    d = method_choice.part_d_figures(res, part_a)
    assert not d["complete"] and "best" not in d  # dist's runs missing: no decision
    for s in (10, 11, 12):  # dist with the papers' weighting: part A's accuracies (a tie)
        runs[f"dist-ce1/s{s}"] = {cid: dict(r) for cid, r in res["part_a"][f"dist/s{s}"].items()}
    d = method_choice.part_d_figures(res, part_a)
    assert d["complete"]
    dkd_a = d["students"]["a"]["methods"]["dkd"]
    assert dkd_a["against_mixing"]["margin"] == pytest.approx(0.03)
    assert dkd_a["against_mixing"]["verdict"] == "better"
    assert d["students"]["a"]["methods"]["dist"]["against_mixing"]["verdict"] == "tie"
    assert d["papers_weighting_wins"] == ["dkd"]
    assert d["best"] == "dkd-ce1" and d["best_beats_dist_on_both"]
    assert d["distill_default"] == "dkd-ce1"
    assert any("**`dkd-ce1`**" in line for line in method_choice.part_d_lines(d))
    # a part D entry that wins on one student only leaves dist as the default
    for s in (10, 11, 12):
        runs[f"dkd-ce1/s{s}"]["b"]["val_accuracy"] -= 0.03
    d = method_choice.part_d_figures(res, part_a)
    assert d["papers_weighting_wins"] == [] and d["distill_default"] == "dist"


def test_the_run_grid_trains_what_is_missing_and_drops_each_seeds_caches_once(monkeypatch):
    """Parts A and D: a missing run is trained; once a seed's runs are all recorded its
    teacher caches go, found through the methods' recipes (a logits-only cache serves no
    feature method, and part A's first method, none, has no cache at all)."""
    import dataclasses

    from benchmarks import method_choice

    from kdnas.core.settings import TrainConfig

    @dataclasses.dataclass
    class Cache:
        def cache_for(self, recipe):  # logits only: no cache for a feature method or none
            return (None if recipe.kd in ("none", "feature", "fitnets")
                    else type("C", (), {"dir": f"cache-s{recipe.seed}"})())

    done = {f"{m}-ce1/s{s}": {"a": {}} for m in ("dist", "dkd") for s in (10, 11, 12)}
    del done["dkd-ce1/s12"]
    trained, dropped = [], []

    class Runs:
        def runs(self, field):
            assert field == "part_d"
            return done

    def run_one(cache, recipe, c, spec, init, work, key, results, field):
        trained.append((key, recipe.kd, recipe.ce_weight))
        done[key] = {c["id"]: {}}
    monkeypatch.setattr(method_choice, "run_one", run_one)
    monkeypatch.setattr(method_choice, "drop_caches", lambda d, what: dropped.append(d))
    method_choice.run_grid(Cache(), Runs(), "part_d", [(0, {"id": "a", "spec": {}})],
                           ("dist", "dkd"),
                           lambda s: TrainConfig(kd="feature", seed=s, ce_weight=1.0),
                           "-ce1", None, None, "logits")
    assert trained == [("dkd-ce1/s12", "dkd", 1.0)]
    assert dropped == ["cache-s10", "cache-s11", "cache-s12"]


def _signal_frame(n_per=6, seed=0):
    import numpy as np
    import pandas as pd

    rng = np.random.RandomState(seed)
    fams = ["mobilenet"] * n_per + ["resnet"] * n_per + ["shufflenet"] * n_per
    offset = {"mobilenet": 0.70, "resnet": 0.71, "shufflenet": 0.75}
    curve = rng.uniform(0.3, 0.6, len(fams))
    truth = [offset[f] + 0.05 * c for f, c in zip(fams, curve, strict=True)]
    return pd.DataFrame({"family": fams, "curve_extrapolated": curve, "truth": truth,
                         "brief_dkd_ls": curve - 0.1 + rng.normal(0, 0.05, len(fams)),
                         "brief_dkd_ls_seconds": 40.0},
                        index=[f"c{i}" for i in range(len(fams))])


def test_the_mix_recovers_family_offsets_and_a_slope_it_was_made_from():
    """Truth = family offset + 0.05 x a signal: the ridge fit (penalty 0) finds both and
    ranks a fresh set drawn the same way perfectly; the leave-one-out tau is computed
    without each candidate's own truth (it stays perfect here, as the model is exact)."""
    from benchmarks import rank_signals as rs

    dev, fresh = _signal_frame(seed=0), _signal_frame(seed=1)
    mix = rs.fit_mix(dev, ["curve_extrapolated"], ridge=0.0)
    pred = rs.mix_score(fresh, mix)
    assert max(abs(pred - fresh["truth"])) < 1e-9
    assert rs.loo_tau(dev, ["curve_extrapolated"]) == pytest.approx(1.0)
    noisy = rs.fit_mix(dev, ["brief_dkd_ls"])  # a noisy signal ranks worse out of sample
    assert rs.mix_score(fresh, noisy).corr(fresh["truth"], method="kendall") < 1.0


def test_the_protocols_decisions_take_a_signal_only_past_its_margin_and_cost():
    from benchmarks import rank_signals as rs

    def arm(tau, cost=1.0):
        return {"tau_pooled": tau, "cost_vs_brief": cost}
    base = {"brief_dkd_ls": arm(0.50), "brief_fitnets": arm(0.45),
            "brief_dkd_ls_hints": arm(0.55), "macs": arm(0.9, 0.0)}
    assert rs.decisions(base, complete=False)["decision"] is None
    keep = rs.decisions({**base, "mix": arm(0.60)}, complete=True)
    assert keep["decision"].startswith("keep")
    assert keep["features_decision"] == "move to brief_dkd_ls_hints"  # not beaten by > 0.1
    assert keep["ranker"] == "brief_dkd_ls_hints"  # the brief recipe with decision 2's method
    adopt = rs.decisions({**base, "mix": arm(0.61), "naswot": arm(0.9, 2.0)}, complete=True)
    assert adopt["ranker"] == "mix"  # naswot is past the cost, macs is a baseline
    stay = rs.decisions({**base, "brief_dkd_ls": arm(0.70)}, complete=True)
    assert stay["features_decision"] == "keep dkd-ls" and stay["ranker"] == "brief_dkd_ls"


def test_the_signal_table_reads_the_recorded_development_set():
    """The committed raw results give every development candidate its brief accuracy, its
    curve's signals and its truth; the taus are those of the recorded numbers."""
    from benchmarks import rank_signals as rs

    res = json.loads((common.ROOT / "reports" / "rank_fresh.json").read_text())
    dev = rs.table(res, "dev")
    assert len(dev) == 18 and dev["truth"].notna().all()
    assert dev["curve_extrapolated"].between(0, 1).all()
    taus = rs.taus(dev, None)
    assert taus["brief_dkd_ls"]["tau_pooled"] == pytest.approx(
        res["summary"]["dev"]["arms"]["brief-dkd-ls/s2"]["tau_pooled"])
    lo, hi = taus["brief_dkd_ls"]["ci95"]
    assert lo < taus["brief_dkd_ls"]["tau_pooled"] < hi


@pytest.mark.slow
def test_the_deploy_evidence_runs_resumes_and_measures_again(tmp_path, capsys):
    """benchmarks/deploy.py on digits, tiny: six students distilled with --int8 (the claim's
    pick, three references, the front's two), fp32 and int8 compared image by image, the
    latency measured again, the headline keys derived from the raw runs."""
    from benchmarks import deploy

    out = tmp_path / "deploy.json"  # the claim with the defaults as shipped reads it there
    argv = ["--data", "digits", "--teacher-arch", "resnet8", "--teacher-epochs", "1",
            "--epochs", "0.1", "--front-trials", "3", "--front-budget", "2MMACs", "--steps",
            "5", "--work", str(tmp_path / "work"), "--out", str(out)]
    deploy.main(argv)
    res = json.loads(out.read_text())
    keys = set(res["runs"])
    assert len(keys) == 6 and {"claim-pick", "resnet8", "mobilenet-mobilenetv2_half",
                               "shufflenet-shufflenetv2_half"} < keys
    n = res["runs"]["resnet8"]["fp32"]["images"]
    for r in res["runs"].values():  # the paired counts are the accuracies' difference
        pr = r["paired"]
        assert pr["only_fp32"] - pr["only_int8"] == round(
            n * (r["fp32"]["accuracy"] - r["int8"]["accuracy"]))
        assert Path(r["files"]["int8"]).exists() and 0 < pr["mcnemar_p"] <= 1
        assert r["beyond_noise"] == (pr["mcnemar_p"] < 0.05)  # the int8 report's own rule
    d = res["deploy"]
    for key, row in d["students"].items():  # the page's verdict is the run's, not a second rule
        assert (row["drop_verdict"] == "beyond noise") == res["runs"][key]["beyond_noise"]
    kept = pd.read_csv(tmp_path / "searches" / "deploy-front.csv")  # the front's search
    assert len(kept) == 3 and {"trial", "val_accuracy", "macs"} <= set(kept.columns)
    assert d["int8_accuracy_drop_max"] == pytest.approx(
        max(s["drop_points"] for s in d["students"].values()))
    assert d["int8_speedup_min"] == pytest.approx(min(
        r["fp32"]["latency_p50_ms"] / r["int8"]["latency_p50_ms"] for r in res["runs"].values()))
    capsys.readouterr()
    deploy.main(argv)  # all done: nothing distilled again
    assert "distilling" not in capsys.readouterr().out
    deploy.main([*argv, "--phase", "measure"])
    again = json.loads(out.read_text())
    rep = again["runs"]["resnet8"]["latency_repeats"]
    assert len(rep["fp32"]) == len(rep["int8"]) == deploy.REPEATS
    ops = again["runs"]["resnet8"]["op_times"]  # the runtime's own operators, by kernel time
    assert "QLinearConv" in ops["int8"] and "QLinearConv" not in ops["fp32"]
    assert all(v["us"] > 0 and v["nodes"] >= 1 for v in ops["int8"].values())
    row = again["deploy"]["students"]["resnet8"]
    assert row["latency_repeated"] and row["fp32_p50_ms"] == pytest.approx(
        sorted(rep["fp32"])[1])
    md = out.with_suffix(".md").read_text()
    assert "`deploy.int8_speedup_min`" in md and "| resnet8 |" in md
    assert "Where the time goes" in md and "QLinearConv" in md

    # the claim with the defaults as shipped takes the references' seed-0 runs from here:
    # the same data, teacher and recipe (distill's default, 0.1 epochs, seed 0)
    from benchmarks import claim

    capsys.readouterr()
    claim.main(["--across", "--shipped", *argv[:6], "--trials", "2", "--steps", "5",
                "--epochs", "0.1", "--seeds", "0", "1", "--work", str(tmp_path / "work"),
                "--out", str(tmp_path / "claim.json")])
    said = capsys.readouterr().out
    shipped = json.loads((tmp_path / "claim_shipped.json").read_text())
    runs = shipped["claim_shipped_runs"]
    for name in ("resnet8", "mobilenet-mobilenetv2_half", "shufflenet-shufflenetv2_half"):
        ref = name.replace("-", ":", 1) if name != "resnet8" else name
        assert runs[f"ref-{ref}/s0"]["from"] == "reports/deploy.json"
        assert runs[f"ref-{ref}/s0"]["test_accuracy"] == res["runs"][name]["test_accuracy"]
        assert f"distilling ref-{ref}/s0" not in said
    c = shipped["claim_shipped"]
    assert c["distill_kd"] == res["runs"]["resnet8"]["recipe"]["kd"] and c["search_kd"]
    assert {f"trial-{c['found_trial']}/s0", f"trial-{c['found_trial']}/s1",
            f"ref-{c['opponent']}/s1"} <= set(runs)
    assert (tmp_path / "searches" / "claim-shipped-resnet8.csv").is_file()
    page = (tmp_path / "claim_shipped.md").read_text()
    assert page.startswith("# The claim at resnet8's MACs with the defaults as shipped")


@pytest.mark.slow
def test_the_claim_at_the_budget_runs_its_chain_and_resumes(tmp_path):
    """`benchmarks.claim_budget run --tiny`: the search through kdnas' own CLI (its database
    kept), every student of the ranking distilled at seed 0, the opponent chosen by
    validation accuracy, the pick and the opponent at every seed, each run identified by its
    data digest, device, threads and recipe; run again, it trains nothing more."""
    from benchmarks import claim_budget

    claim_budget.main(["run", "--tiny", "--work", str(tmp_path)])
    res = json.loads((tmp_path / "claim_budget.json").read_text())
    runs, who, c = res["runs"], res["setup"]["students"], res["claim_budget"]
    roles = {w["role"] for w in who.values()}
    assert roles == {"pick", "next", "reference"} and len(who) >= 3
    assert {f"{k}/s0" for k in who} <= set(runs)
    refs = [k for k, w in who.items() if w["role"] == "reference"]
    opponent = max(refs, key=lambda k: runs[f"{k}/s0"]["val_accuracy"])
    assert c["opponent"] == who[opponent]["reference"]
    assert len(c["found"]["accuracies"]) == len(c["opponent_runs"]["accuracies"]) == 2
    for r in runs.values():
        assert r["data_digest"] and r["threads"] >= 1 and r["cpu"] and r["recipe"]["kd"]
    assert sum(r["journey"] for r in runs.values()) == 1  # the pick's seed 0 exports
    assert c["verdict"] in ("beats", "holds", "tie", "reference better",
                            "ahead beyond the spread")
    r = c["ranking"]  # a tiny run's accuracies may all tie: then no tau, said so
    assert r["students"] == len(who) and (r["tau"] is None or -1 <= r["tau"] <= 1)
    assert (tmp_path / "kept" / "claim-budget-50m.db").exists()
    assert (tmp_path / "searches" / "claim-budget-50m.csv").exists()
    claim_budget.main(["run", "--tiny", "--work", str(tmp_path)])
    again = json.loads((tmp_path / "claim_budget.json").read_text())
    assert again["runs"] == runs and len(again["search"]["runs"]) == 1
