"""The signals of docs/evidence/rank_fresh.md: every candidate's brief accuracies, training-free
scores and learning-curve signals as one table, the mix fitted on the development set only,
Kendall's tau of each against the truth with a bootstrap over candidates, and what the
protocol's decisions make of them. Reads the raw results of :mod:`benchmarks.rank_fresh`;
trains nothing.

The mix is a ridge regression of the truth on standardised signals plus one offset per family,
fitted on the development set. Which signals it takes is chosen among ``MIXES`` by the
development set's leave-one-out pooled tau (a candidate's score from a fit without it): all
on the development set, none on the fresh one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from benchmarks import across_families as af

PROXY_SEED = 2
BRIEF = f"brief-dkd-ls/s{PROXY_SEED}"
ARMS = {"brief_dkd_ls": BRIEF, "brief_fitnets": f"brief-fitnets/s{PROXY_SEED}",
        "brief_dkd_ls_hints": f"brief-dkd-ls-hints/s{PROXY_SEED}"}
FREE = ("naswot", "synflow", "grad_norm", "teacher_similarity")
CURVE = ("curve_extrapolated", "curve_slope")
COSTS = ("macs", "params")
MIXES = (("brief_dkd_ls",), ("curve_extrapolated",), ("brief_dkd_ls", "curve_extrapolated"),
         ("brief_dkd_ls", "naswot"), ("brief_dkd_ls", "curve_extrapolated", "naswot"),
         ("brief_dkd_ls", "curve_slope", "log_macs"))
RIDGE = 1.0
BOOTSTRAP = 1000
BOOTSTRAP_SEED = 0


def set_table(res: dict, which: str) -> dict:
    """One set as the across-families summary reads it: candidates, runs (without the set's
    prefix) and, for the development set, the table's truth as ``source_truth``."""
    runs = {k.split("/", 1)[1]: v for k, v in res.get("runs", {}).items()
            if k.startswith(which + "/")}
    out = {"candidates": res.get(f"{which}_candidates", []), "runs": runs}
    if which == "dev":
        out["source_truth"] = res.get("dev_truth", {})
    return out


def table(res: dict, which: str) -> pd.DataFrame:
    """One row per candidate of set ``which``: family, MACs, params, each brief arm's
    accuracy and seconds, each training-free score and its seconds, the dkd-ls curve's
    signals, and the truth (the mean of its seeds, NaN until both are in)."""
    from kdnas.distill.signals import curve_signals

    t = set_table(res, which)
    truth, _ = af.truth(t)
    scores = res.get("signals", {}).get(which, {})
    rows = {}
    for c in t["candidates"]:
        cid, row = c["id"], {"family": c["space"], "macs": float(c["macs"]),
                             "params": float(c["params_count"])}
        row["log_macs"] = float(np.log(row["macs"]))
        for name, key in ARMS.items():
            run = t["runs"].get(key, {}).get(cid)
            row[name] = run["val_accuracy"] if run else np.nan
            row[f"{name}_seconds"] = run["seconds"] if run else np.nan
        for name, v in scores.get(cid, {}).items():
            row[name], row[f"{name}_seconds"] = v["value"], v["seconds"]
        brief = t["runs"].get(BRIEF, {}).get(cid)
        for name, v in (curve_signals(brief["curve"]) if brief else {}).items():
            row[name], row[f"{name}_seconds"] = v["value"], v["seconds"]
        row["truth"] = truth.get(cid, np.nan)
        rows[cid] = row
    return pd.DataFrame.from_dict(rows, orient="index")


# ---- the mix ---------------------------------------------------------------------------------

def _design(df: pd.DataFrame, features, families, mean, std) -> np.ndarray:
    z = [(df[f].to_numpy(float) - mean[f]) / std[f] for f in features]
    onehot = [(df["family"] == fam).to_numpy(float) for fam in families]
    return np.stack(z + onehot, 1)


def fit_mix(df: pd.DataFrame, features, ridge: float = RIDGE) -> dict:
    """Ridge regression of the truth on the standardised ``features`` and one offset per
    family (the offsets unpenalised), as a dict a later set is scored with."""
    families = sorted(df["family"].unique())
    mean = {f: float(df[f].mean()) for f in features}
    std = {f: float(df[f].std(ddof=0)) or 1.0 for f in features}
    x = _design(df, features, families, mean, std)
    pen = np.diag([ridge] * len(features) + [0.0] * len(families))
    coef = np.linalg.solve(x.T @ x + pen, x.T @ df["truth"].to_numpy(float))
    return {"features": list(features), "families": families, "mean": mean, "std": std,
            "coef": [float(v) for v in coef], "ridge": ridge}


def mix_score(df: pd.DataFrame, mix: dict) -> pd.Series:
    """The fitted mix's prediction of the truth for every row (a family the fit never saw
    gets no offset)."""
    x = _design(df, mix["features"], mix["families"], mix["mean"], mix["std"])
    return pd.Series(x @ np.asarray(mix["coef"]), index=df.index)


def loo_tau(df: pd.DataFrame, features) -> float:
    """The pooled tau of leave-one-out predictions: each candidate scored by a mix fitted
    on the others."""
    pred = pd.Series({cid: float(mix_score(df.loc[[cid]], fit_mix(df.drop(index=cid),
                                                                   features)).iloc[0])
                      for cid in df.index})
    return float(pred.corr(df["truth"], method="kendall"))


def freeze(dev: pd.DataFrame) -> dict:
    """The mix chosen and fitted on the development set: the candidate list of ``MIXES``
    by leave-one-out pooled tau (the first of equals), then fitted on all of it."""
    full = dev.dropna(subset=["truth"])
    loo = {"+".join(f): loo_tau(full, f) for f in MIXES}
    best = max(MIXES, key=lambda f: loo["+".join(f)])
    return {"mix": fit_mix(full, best), "mix_loo_tau": loo, "mixes_tried": len(MIXES)}


# ---- scoring ---------------------------------------------------------------------------------

def signal_columns(df: pd.DataFrame, frozen: dict | None) -> pd.DataFrame:
    """Every signal as a column, higher = better (the mix's prediction with a frozen mix)."""
    cols = [c for c in (*ARMS, *FREE, *CURVE, *COSTS) if c in df]
    out = df[cols].astype(float).copy()
    if frozen and all(f in df for f in frozen["mix"]["features"]):
        out["mix"] = mix_score(df, frozen["mix"])
    return out


def _tau_np(a: np.ndarray, b: np.ndarray) -> float | None:
    from scipy.stats import kendalltau  # tau-b, as pandas' corr(method="kendall")

    ok = ~(np.isnan(a) | np.isnan(b))
    if ok.sum() < 3:
        return None
    t = kendalltau(a[ok], b[ok]).statistic
    return None if t != t else float(t)


def taus(df: pd.DataFrame, frozen: dict | None) -> dict:
    """Each signal's pooled and within-family tau against the truth, a bootstrap 95%
    interval of its pooled tau and of its difference from brief dkd-ls's, and its cost."""
    sig = signal_columns(df, frozen)
    truth = df["truth"].to_numpy(float)
    rows = np.flatnonzero(~np.isnan(truth))
    rng = np.random.RandomState(BOOTSTRAP_SEED)
    draws = [rows[rng.randint(0, len(rows), len(rows))] for _ in range(BOOTSTRAP)] \
        if len(rows) >= 3 else []
    brief = sig["brief_dkd_ls"].to_numpy(float)
    brief_boot = [_tau_np(brief[i], truth[i]) for i in draws]
    out = {}
    for name in sig:
        s = sig[name].to_numpy(float)
        pairs = [(a, b) for a, b in zip((_tau_np(s[i], truth[i]) for i in draws), brief_boot,
                                        strict=True) if a is not None and b is not None]
        within = {f: _tau_np(s[(df["family"] == f).to_numpy()],
                             truth[(df["family"] == f).to_numpy()])
                  for f in sorted(df["family"].unique())}
        out[name] = {
            "tau_pooled": _tau_np(s, truth), "over": int((~np.isnan(s) & ~np.isnan(truth)).sum()),
            "tau_within": within,
            "ci95": _interval([a for a, _ in pairs]),
            "diff_vs_brief_ci95": _interval([a - b for a, b in pairs]),
            "cost_vs_brief": _cost(name, df, df["brief_dkd_ls_seconds"], frozen)}
    return out


def _interval(values: list[float]) -> list[float] | None:
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))] \
        if values else None


def _cost(name: str, df: pd.DataFrame, brief: pd.Series, frozen: dict | None) -> float | None:
    """Seconds per candidate relative to the brief dkd-ls run's (its seconds include its
    10-point curve); a signal read from that run costs the run plus its own seconds."""
    if name in COSTS:
        return 0.0
    if name == "mix" and frozen:
        parts = frozen["mix"]["features"]
        own = sum(df.get(f"{p}_seconds", 0.0) for p in parts if p != "log_macs")
        needs_brief = any(p in ARMS or p in CURVE for p in parts)
        return float(((needs_brief * brief + own) / brief).mean())
    own = df.get(f"{name}_seconds")
    if own is None:
        return None
    if name in CURVE:
        return float(((brief + own) / brief).mean())
    return float((own / brief).mean())


def decisions(fresh: dict, complete: bool) -> dict:
    """The protocol's decisions 1 and 2 from the fresh set's taus (None until the fresh
    truth is complete)."""
    if not complete:
        return {"decision": None, "features_decision": None}
    brief = fresh["brief_dkd_ls"]["tau_pooled"]
    cands = {k: v for k, v in fresh.items() if k not in COSTS and k not in ARMS
             and v["tau_pooled"] is not None and (v["cost_vs_brief"] or 0) <= 1.5}
    best = max(cands, key=lambda k: cands[k]["tau_pooled"], default=None)
    adopt = best is not None and cands[best]["tau_pooled"] > brief + 0.1
    feats = {k: fresh[k]["tau_pooled"] for k in ("brief_fitnets", "brief_dkd_ls_hints")
             if k in fresh and fresh[k]["tau_pooled"] is not None}
    feat = max(feats, key=feats.get, default=None)
    keep = feat is None or brief > feats[feat] + 0.1
    # the ranker the search is left with: decision 1's signal where it adopts one, else the
    # brief recipe with the method decision 2 leaves as the default
    ranker = best if adopt else ("brief_dkd_ls" if keep else feat)
    return {"decision": f"adopt {best}" if adopt else "keep the brief recipe",
            "ranker": ranker,
            "features_decision": "keep dkd-ls" if keep else f"move to {feat}"}
