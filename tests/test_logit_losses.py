"""The logit losses (DKD, DIST, logit standardisation) and RKD against their papers' formulas,
computed by hand on small values."""

from __future__ import annotations

import math

import numpy as np
import optuna
import pytest
import torch

from kdnas.core.settings import KD_BY_NAME
from kdnas.distill import DISTLoss, DKDLoss, KDLoss, RKDLoss, logit_loss, standardise
from search_spaces import TapInfo

S = torch.tensor([[2.0, -1.0, 0.5, 0.0], [0.3, 1.2, -0.7, 2.2], [-1.0, 0.0, 1.0, 0.4]])
T = torch.tensor([[3.0, 0.0, 1.0, -1.0], [0.0, 2.0, 0.5, 1.0], [0.2, -0.5, 2.5, 0.1]])
Y = torch.tensor([0, 1, 2])


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def _kl(p, q):
    return float(sum(a * math.log(a / b) for a, b in zip(p, q, strict=True)))


def test_dkd_is_its_two_kl_terms_computed_by_hand():
    temp, alpha, beta = 2.0, 1.5, 8.0
    total = 0.0
    for s, t, y in zip(S.numpy(), T.numpy(), Y.tolist(), strict=True):
        ps, pt = _softmax(s / temp), _softmax(t / temp)
        tckd = _kl([pt[y], 1 - pt[y]], [ps[y], 1 - ps[y]])
        rest = [c for c in range(len(s)) if c != y]
        nckd = _kl(_softmax(t[rest] / temp), _softmax(s[rest] / temp))
        total += alpha * tckd + beta * nckd
    expected = temp**2 * total / len(Y)
    assert float(DKDLoss(temp, alpha, beta)(S, T, Y)) == pytest.approx(expected, rel=1e-5)
    assert float(DKDLoss(temp)(T, T, Y)) == pytest.approx(0.0, abs=1e-6)


def test_hinton_kd_is_dkd_with_beta_one_minus_the_teachers_target_probability():
    """The paper's identity (Zhao et al. 2022, eq. 5), per sample."""
    for i in range(len(Y)):
        s, t, y = S[i:i + 1], T[i:i + 1], Y[i:i + 1]
        pt_y = float(torch.softmax(t / 4.0, 1)[0, y])
        assert float(KDLoss(4.0)(s, t)) == pytest.approx(
            float(DKDLoss(4.0, alpha=1.0, beta=1 - pt_y)(s, t, y)), rel=1e-5)


def test_dist_is_one_minus_pearson_between_and_within_classes():
    temp = 4.0
    ys = torch.softmax(S / temp, 1).numpy()
    yt = torch.softmax(T / temp, 1).numpy()
    inter = 1 - np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(ys, yt, strict=True)])
    intra = 1 - np.mean([np.corrcoef(a, b)[0, 1] for a, b in zip(ys.T, yt.T, strict=True)])
    got = float(DISTLoss(temp, beta=2.0, gamma=0.5)(S, T))
    assert got == pytest.approx(temp**2 * (2.0 * inter + 0.5 * intra), rel=1e-4)
    # identical predictions have nothing to learn
    assert float(DISTLoss(1.0)(S, S)) == pytest.approx(0.0, abs=1e-6)


def test_logit_standardisation_is_the_z_score_and_ignores_scale_and_shift():
    z = standardise(S)
    assert torch.allclose(z.mean(1), torch.zeros(3), atol=1e-6)
    assert torch.allclose(z.std(1), torch.ones(3), atol=1e-5)
    ls = KDLoss(2.0, standardised=True)
    assert float(ls(3 * S + 7, T)) == pytest.approx(float(ls(S, T)), rel=1e-4)
    assert float(ls(5 * T - 1, T)) == pytest.approx(0.0, abs=1e-5)
    assert float(KDLoss(2.0)(5 * T - 1, T)) > 0.1  # plain KD asks for the same range
    dkd_ls = DKDLoss(2.0, standardised=True)
    assert float(dkd_ls(2 * S + 1, T, Y)) == pytest.approx(float(dkd_ls(S, T, Y)), rel=1e-4)


def test_rkd_distances_and_angles_by_hand():
    e_s = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    e_t = np.array([[0.0, 0.0], [2.0, 0.0], [1.0, 1.0]])
    taps = [TapInfo("x", 8, 1)]
    loss = RKDLoss(taps, taps)

    def psi_d(e):
        d = np.linalg.norm(e[:, None] - e[None], axis=2)
        return d / d[~np.eye(3, dtype=bool)].mean()

    def psi_a(e):
        out = np.zeros((3, 3, 3))
        for j in range(3):
            for i in range(3):
                for k in range(3):
                    u, v = e[i] - e[j], e[k] - e[j]
                    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
                    out[j, i, k] = 0.0 if nu == 0 or nv == 0 else u @ v / nu / nv
        return out

    def huber(a, b):
        d = np.abs(a - b)
        return np.where(d < 1, 0.5 * d**2, d - 0.5).mean()

    expected = huber(psi_d(e_s), psi_d(e_t)) + 2 * huber(psi_a(e_s), psi_a(e_t))
    as_maps = lambda e: torch.tensor(e, dtype=torch.float32)[:, :, None, None]  # noqa: E731
    got = float(loss([as_maps(e_s)], [as_maps(e_t)]))
    assert got == pytest.approx(float(expected), rel=1e-4)
    # relational: a scaled copy of the teacher's embeddings has nothing left to learn
    assert float(loss([as_maps(3 * e_t)], [as_maps(e_t)])) == pytest.approx(0.0, abs=1e-6)


def test_each_method_weighs_and_ramps_its_logit_loss_as_its_paper_does():
    kd_ls = logit_loss(KD_BY_NAME["logit-ls"], temperature=4.0)  # LS: its own T of 2, x10
    assert float(kd_ls(S, T, Y)) == pytest.approx(10 * float(KDLoss(2.0, True)(S, T)),
                                                  rel=1e-5)
    dkd = logit_loss(KD_BY_NAME["dkd"], temperature=4.0)
    full = float(DKDLoss(4.0)(S, T, Y))
    assert float(dkd(S, T, Y, 0, 240)) == pytest.approx(full / 20, rel=1e-5)  # 20 of 240
    assert float(dkd(S, T, Y, 19, 240)) == pytest.approx(full, rel=1e-5)
    dist = logit_loss(KD_BY_NAME["dist"], temperature=4.0)
    assert float(dist(S, T, Y)) == pytest.approx(2 * float(DISTLoss(4.0)(S, T)), rel=1e-5)
    plain = logit_loss(KD_BY_NAME["logit"], temperature=3.0)
    assert float(plain(S, T, Y)) == pytest.approx(float(KDLoss(3.0)(S, T)), rel=1e-6)


def test_kd_auto_keeps_the_methods_a_study_searched_from_its_first_trial():
    """A study made when --kd auto searched five methods keeps searching those five (Optuna
    refuses a categorical whose choices change); a new study searches all of them."""
    from kdnas.core.settings import AUTO_METHODS
    from kdnas.search.trial import _auto_methods

    old = optuna.create_study(directions=["maximize", "minimize"])
    t = old.ask()
    t.suggest_categorical("kd", ("logit", "fitnets", "at", "sp", "pkt"))
    old.tell(t, [0.5, 1.0])
    assert _auto_methods(old) == ("logit", "fitnets", "at", "sp", "pkt")
    new = optuna.create_study(directions=["maximize", "minimize"])
    assert _auto_methods(new) == AUTO_METHODS and len(AUTO_METHODS) == 10
    t = new.ask()
    assert t.suggest_categorical("kd", _auto_methods(new)) in AUTO_METHODS


def test_the_cross_entropy_weight_switches_hintons_mixing_for_the_papers_form():
    """Default: 0.1 x CE + 0.9 x the method's loss; ``ce_weight`` 1: CE + the method's loss at
    its own weights (DKD and DIST as their papers train)."""
    import torch.nn.functional as F

    from kdnas.core.errors import KdnasError
    from kdnas.core.settings import TrainConfig
    from kdnas.distill.trainer import _loss

    torch.manual_seed(0)
    student, x = torch.nn.Linear(6, 5), torch.randn(4, 6)
    t_logits = torch.randn(4, 5)  # the teacher's, as the cache serves them
    y = torch.tensor([0, 1, 2, 3])
    dist = logit_loss(KD_BY_NAME["dist"], temperature=4.0)
    ce = float(F.cross_entropy(student(x), y))
    kd = float(dist(student(x), t_logits, y))

    def loss(cfg):
        return float(_loss(student, cfg, dist, None, None, [], x, y, t_logits,
                           dist.scale(0, 10)))
    assert loss(TrainConfig(kd="dist", device="cpu")) == pytest.approx(0.1 * ce + 0.9 * kd,
                                                                        rel=1e-5)
    assert loss(TrainConfig(kd="dist", device="cpu", ce_weight=1.0)) == pytest.approx(
        ce + kd, rel=1e-5)
    with pytest.raises(KdnasError, match="cross-entropy weight"):
        TrainConfig(ce_weight=-1.0)


def test_a_recipe_resolves_its_method_to_the_table_entry_once():
    """A TrainConfig carries its method's table entry (``feature`` is FitNets'); a copy with
    another method carries the other's; an unknown name is refused where it is given."""
    import dataclasses

    from kdnas.core.errors import KdnasError
    from kdnas.core.settings import SEARCH_DEFAULT, TrainConfig

    assert TrainConfig().entry is KD_BY_NAME[SEARCH_DEFAULT]
    assert TrainConfig(kd="feature").entry is KD_BY_NAME["fitnets"]
    dist = dataclasses.replace(TrainConfig(kd="fitnets"), kd="dist")
    assert dist.entry is KD_BY_NAME["dist"] and dist.entry.final_ce_weight == 1.0
    with pytest.raises(KdnasError, match="unknown distillation method 'dkdd'"):
        TrainConfig(kd="dkdd")
