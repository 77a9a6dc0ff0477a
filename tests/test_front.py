from __future__ import annotations

import numpy as np
import pytest

from kdnas.front import hypervolume, knee_index, pareto_mask


def test_pareto_mask_keeps_only_non_dominated_points():
    acc = np.array([0.90, 0.85, 0.80, 0.70, 0.88, 0.90])
    cost = np.array([10.0, 5.0, 6.0, 1.0, 10.0, 12.0])
    # 0.80@6 is dominated by 0.85@5; 0.88@10 by 0.90@10; 0.90@12 by 0.90@10
    assert pareto_mask(acc, cost).tolist() == [True, True, False, True, False, False]


def test_hypervolume_of_a_staircase():
    acc = np.array([0.5, 0.8])
    cost = np.array([2.0, 6.0])
    # reference cost 10: rectangles (1-0.2)*0.5 + (1-0.6)*(0.8-0.5)
    assert hypervolume(acc, cost, ref_acc=0.0, ref_cost=10.0) == pytest.approx(0.4 + 0.12)


def test_hypervolume_ignores_points_beyond_the_reference_and_dominated_ones():
    hv = hypervolume(np.array([0.5, 0.4, 0.9]), np.array([2.0, 3.0, 11.0]), ref_acc=0.0,
                     ref_cost=10.0)
    assert hv == pytest.approx(0.8 * 0.5)
    assert hypervolume(np.array([]), np.array([]), ref_acc=0, ref_cost=1) == 0.0


def test_knee_is_the_point_of_best_trade_off():
    cost = np.array([1.0, 2.0, 3.0, 10.0])
    acc = np.array([0.50, 0.85, 0.87, 0.90])
    assert knee_index(acc, cost) == 1


def test_knee_with_few_points_is_the_most_accurate():
    assert knee_index(np.array([0.5, 0.7]), np.array([1.0, 2.0])) == 1
    assert knee_index(np.array([]), np.array([])) is None


def test_wilson_interval_and_ties_by_the_formula():
    from kdnas.front import accuracy_se, tied, wilson

    lo, hi = wilson(0.5, 100)
    assert (round(lo, 4), round(hi, 4)) == (0.4038, 0.5962)  # the textbook Wilson values
    lo, hi = wilson(1.0, 288)
    assert hi == 1.0 and 0.98 < lo < 0.99  # all right on 288 images is not certainty
    se = accuracy_se(0.75, 10000)
    assert abs(se - ((0.75 * 10000 + 2) / 10004 * (1 - (0.75 * 10000 + 2) / 10004) / 10004)
               ** 0.5) < 1e-12
    # 1.96 * sqrt(2) * 0.00433 = 1.2 points: 0.75 vs 0.74 is a tie on 10,000 images, vs 0.73 not
    assert tied(0.75, 0.74, 10000) and not tied(0.75, 0.73, 10000)


def _front_df(n):
    import pandas as pd

    from kdnas.front import wilson

    rows = [(0, 1e5, 0.90), (1, 2e5, 0.93), (2, 8e5, 0.99)]
    return pd.DataFrame([{"trial": t, "state": "trained", "within_budget": True, "macs": m,
                          "val_accuracy": a, "val_images": n, "rung": None,
                          **dict(zip(("val_lo", "val_hi"), wilson(a, n), strict=True))}
                         for t, m, a in rows])


def test_the_knee_is_the_cheapest_of_its_ties():
    """The trade-off's knee is trial 1 (93% at 2e5 MACs); on 150 validation images 90% at half
    the MACs is within sampling error of it, so trial 0 is the knee; on 100,000 it is not."""
    from kdnas.report.frames import front_frame

    many = front_frame(_front_df(100_000), ["macs"])
    assert int(many.loc[many.knee.idxmax(), "trial"]) == 1 and many.tied_with_knee.sum() == 1
    few = front_frame(_front_df(150), ["macs"])
    assert int(few.loc[few.knee.idxmax(), "trial"]) == 0
    assert list(few.tied_with_knee) == [True, True, False]
    from kdnas.report.frames import acc_text

    assert acc_text(few.iloc[1]).endswith(" tie") and "(" in acc_text(few.iloc[0])


def test_mcnemar_p_is_the_exact_two_sided_sign_test():
    """Against scipy's exact binomial test, and by hand where the tail is one term."""
    from scipy.stats import binomtest

    from kdnas.front import mcnemar_p

    assert mcnemar_p(0, 0) == 1.0 and mcnemar_p(7, 7) == 1.0
    assert mcnemar_p(5, 0) == pytest.approx(2 / 2 ** 5)  # both all-one-way tails
    for a, b in ((3, 9), (40, 10), (120, 95), (0, 1), (600, 540)):
        assert mcnemar_p(a, b) == pytest.approx(binomtest(a, a + b, 0.5).pvalue, rel=1e-9)
        assert mcnemar_p(a, b) == mcnemar_p(b, a)


def test_candidates_trained_at_once_from_the_trials_start_and_end():
    """The most trials training at one instant, and the mean while any trained; a trial that
    ends as another starts does not overlap it; untrained trials do not count."""
    from kdnas.core.records import StudyRecord, TrialRecord
    from kdnas.report.frames import at_once, at_once_text

    def rec(*spans, state="trained"):
        return StudyRecord("s", tuple(TrialRecord(i, state, started=a, completed=b)
                                      for i, (a, b) in enumerate(spans)))
    a = at_once(rec((0, 10), (5, 15), (20, 30)))
    assert a["max"] == 2 and a["mean"] == pytest.approx(30 / 25)  # busy 25 s, 30 trial-s
    assert at_once(rec((0, 10), (10, 20)))["max"] == 1  # back to back: one at a time
    four = at_once(rec((0, 8), (0, 8), (1, 9), (2, 10), (12, 14)))
    assert four["max"] == 4
    assert at_once(rec((0, 10))) is None and at_once(rec((0, 5), (1, 6), state="failed")) is None
    assert at_once_text(a) == "up to 2 at once, 1.2 on average while any trained"
    one = StudyRecord("s", tuple(TrialRecord(i, "trained", started=a, completed=b,
                                             recipe={"threads": 1})
                                 for i, (a, b) in enumerate([(0, 10), (5, 15)])))
    assert at_once_text(at_once(one)).endswith("trained, 1 CPU thread each")


def test_collapsed_is_near_chance_or_a_loss_that_does_not_fall():
    from kdnas.front import collapsed

    assert "near chance" in collapsed(0.0902, 10)  # the demo's MobileNetV2: 9.02%
    assert collapsed(0.185, 10) and collapsed(0.195, 10) is None  # 19% with 10 classes
    assert collapsed(0.28, 10) is None  # a weak brief student, not a failed one
    assert "did not fall" in collapsed(0.6, 10, [2.3] * 5 + [2.4] * 15)
    assert collapsed(0.6, 10, [2.3] * 10 + [1.0] * 10) is None
    assert collapsed(0.6, 10, [9.0, 1.0]) is None  # too few read-backs to judge the loss


def test_the_verdict_against_hand_design_follows_the_noise_rule():
    """Beats or loses only beyond the validation set's sampling error; a reference that did
    not train, or is over budget, is no starting line."""
    from kdnas.core.attrs import Outcome
    from kdnas.core.records import StudyRecord, TrialRecord
    from kdnas.front import reference_verdict

    def record(searched, refs, n=2000):
        trials = tuple(TrialRecord(i, Outcome.TRAINED, cost={"macs": 5e5}, budget_excess=-1.0,
                                   val_accuracy=a) for i, a in enumerate(searched))
        return StudyRecord("s", trials, references=refs, val_images=n)

    ref = {"within_budget": True, "val_accuracy": 0.80, "cost": {"macs": 7e5}}
    beats = reference_verdict(record([0.70, 0.86], {"r8": ref}))
    assert beats["verdict"] == "beats" and beats["trial"] == 1 and beats["reference"] == "r8"
    assert "0.50M MACs" in beats["sentence"] and "r8, reaches 80.00%" in beats["sentence"]
    assert reference_verdict(record([0.81], {"r8": ref}))["verdict"] == "tie"
    assert reference_verdict(record([0.74], {"r8": ref}))["verdict"] == "loses"
    assert reference_verdict(record([0.86], {"r8": ref}, n=100))["verdict"] == "tie"
    failed = {**ref, "val_accuracy": 0.95, "did_not_train": "did not train: 9.0%"}
    over = {**ref, "val_accuracy": 0.99, "within_budget": False}
    got = reference_verdict(record([0.86], {"r8": ref, "bad": failed, "big": over}))
    assert got["reference"] == "r8" and got["verdict"] == "beats"
    assert reference_verdict(record([0.86], {"bad": failed})) is None
