"""The one way to train a candidate: seeded builds, saved weights, continuation to a longer
rung from those weights, and the teacher cache keyed by the recipe."""

from __future__ import annotations

import dataclasses

import torch

from kdnas.core.settings import TrainConfig
from kdnas.distill.candidate import (
    TrainContext,
    climb,
    continuation,
    init_seed,
    rung_weights,
    save_weights,
    train_candidate,
    train_on,
)
from search_spaces import get_space


def _spec(data):
    space = get_space("resnet")
    return space.smallest(in_channels=data.in_channels, num_classes=data.num_classes,
                          input_size=data.input_size)


def test_the_same_init_seed_gives_the_same_candidate_and_another_does_not(digits):
    ctx, spec = TrainContext(None, digits), _spec(digits)
    recipe = TrainConfig(steps=6, kd="none", device="cpu")
    a = train_candidate(ctx, spec, recipe, init=init_seed(0, 3))
    b = train_candidate(ctx, spec, recipe, init=init_seed(0, 3))
    c = train_candidate(ctx, spec, recipe, init=init_seed(0, 4))
    sa, sb, sc = (o.model.state_dict() for o in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].is_floating_point())
    assert a.val_accuracy == b.val_accuracy and a.total_steps == 6


def test_a_continuation_starts_from_the_saved_weights_and_counts_all_steps(
        teacher_and_data, tmp_path):
    """Rung 2 trains on from rung 1's student and hint connectors (not from a fresh
    initialisation): its first loss is rung 1's last, not a new network's, and its steps add
    up. The connectors are saved beside the student."""
    teacher, data = teacher_and_data
    ctx, spec = TrainContext(teacher, data), _spec(data)
    brief = TrainConfig(steps=30, kd="feature", device="cpu", eval_every=10)
    first = train_candidate(ctx, spec, brief, init=7)
    save_weights(tmp_path / "r1.pt", first)
    saved = torch.load(tmp_path / "r1.pt", weights_only=True)
    assert saved["steps"] == 30 and saved["extra"], "the hint connectors must be kept"
    rung2 = continuation(brief, done=30, to=90)
    assert rung2.steps == 60 and rung2.seed != brief.seed and rung2.eval_every == 12
    losses: dict[str, list[float]] = {"on": [], "fresh": []}
    on = train_candidate(ctx, spec, rung2, init=7, start=tmp_path / "r1.pt",
                         progress=lambda s, n, loss: losses["on"].append(loss))
    fresh = train_candidate(ctx, spec, rung2, init=7,
                            progress=lambda s, n, loss: losses["fresh"].append(loss))
    assert on.total_steps == 90 and fresh.total_steps == 60
    assert losses["on"][0] < losses["fresh"][0]
    assert on.val_accuracy >= first.val_accuracy - 0.05


def test_the_cache_is_keyed_by_the_recipe_and_shared_by_candidates(teacher_and_data, tmp_path):
    teacher, data = teacher_and_data
    ctx = TrainContext(teacher, data, tmp_path / "cache")
    brief = TrainConfig(steps=20, device="cpu")
    assert ctx.cache_for(brief).dir == ctx.cache_for(dataclasses.replace(brief, lr=0.01)).dir
    assert ctx.cache_for(brief).dir != ctx.cache_for(continuation(brief, done=20, to=40)).dir
    assert ctx.cache_for(dataclasses.replace(brief, kd="none")) is None
    assert TrainContext(teacher, data).cache_for(brief) is None
    train_candidate(ctx, _spec(data), brief, init=1)
    assert ctx.cache_for(brief).complete


def test_a_logit_methods_cache_keeps_logits_only_and_trains_the_same_candidate(
        teacher_and_data, tmp_path):
    """A study ranking with a logit method (dkd-ls, for one) caches the teacher's logits
    alone: its own key, no stage features on disk, and a candidate trained from it ends
    exactly where one trained from a full cache does. A feature method never reads it."""
    from kdnas.core.kd_methods import reads_features

    assert not reads_features("dkd-ls") and not reads_features("logit")
    assert reads_features("feature") and reads_features("rkd") and reads_features("auto")
    teacher, data = teacher_and_data
    brief = TrainConfig(steps=12, kd="dkd-ls", device="cpu")
    full = TrainContext(teacher, data, tmp_path / "cache")
    lean = dataclasses.replace(full, cache_features=False)
    assert full.cache_for(brief).dir != lean.cache_for(brief).dir
    assert lean.cache_for(dataclasses.replace(brief, kd="fitnets")) is None
    a = train_candidate(full, _spec(data), brief, init=1)
    b = train_candidate(lean, _spec(data), brief, init=1)
    c = train_candidate(lean, _spec(data), brief, init=1)  # read back from the lean cache
    assert lean.cache_for(brief).complete and full.cache_for(brief).complete

    def size(ctx):
        return sum(f.stat().st_size for f in ctx.cache_for(brief).dir.glob("*.pt"))

    step = torch.load(next(lean.cache_for(brief).dir.glob("*.pt")), weights_only=True)
    assert step["feats"] == [] and step["logits"].shape[1] == data.num_classes
    assert size(lean) < size(full) / 3
    for other in (b, c):
        assert other.result.val_accuracy == a.result.val_accuracy
        assert all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(),
                                                     other.model.state_dict().values(),
                                                     strict=True))


def test_train_on_is_the_continuation_from_the_saved_steps(digits, tmp_path):
    """train_on reads the steps the weights have had and trains exactly what
    train_candidate does with the continuation of the brief recipe from them."""
    ctx, spec = TrainContext(None, digits), _spec(digits)
    brief = TrainConfig(steps=8, kd="none", device="cpu", eval_every=4)
    save_weights(tmp_path / "r1.pt", train_candidate(ctx, spec, brief, init=5))
    a = train_on(ctx, spec, brief, init=5, start=tmp_path / "r1.pt", to=24)
    b = train_candidate(ctx, spec, continuation(brief, done=8, to=24), init=5,
                        start=tmp_path / "r1.pt")
    assert a.total_steps == b.total_steps == 24 and a.result.steps == 16
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_climb_keeps_each_rung_and_resumes_from_the_last_one_kept(digits, tmp_path):
    ctx, spec = TrainContext(None, digits), _spec(digits)
    brief = TrainConfig(steps=6, kd="none", device="cpu", eval_every=3)
    seen: dict[int, tuple[int, float]] = {}

    def on_rung(factor, out, seconds):
        seen[factor] = (out.total_steps, out.val_accuracy)

    last = climb(ctx, spec, brief, init=2, factors=(1, 2, 4), folder=tmp_path, on_rung=on_rung)
    assert {f: s for f, (s, _) in seen.items()} == {1: 6, 2: 12, 4: 24}
    assert last.total_steps == 24 and last.val_accuracy == seen[4][1]
    assert all(rung_weights(tmp_path, f).exists() for f in (1, 2, 4))
    full = dict(seen)
    seen.clear()  # the caller has rungs 1x and 2x: only 4x is trained, from 2x's weights
    again = climb(ctx, spec, brief, init=2, factors=(1, 2, 4), folder=tmp_path,
                  have=lambda f: f in (1, 2), on_rung=on_rung)
    assert list(seen) == [4] and seen[4] == full[4]
    sa, sb = last.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    seen.clear()
    assert climb(ctx, spec, brief, init=2, factors=(1, 2), folder=tmp_path,
                 have=lambda f: True) is None and not seen
    rung_weights(tmp_path, 2).unlink()  # 2x's weights gone: every rung trained again
    climb(ctx, spec, brief, init=2, factors=(1, 2, 4), folder=tmp_path,
          have=lambda f: f in (1, 2), on_rung=on_rung)
    assert list(seen) == [1, 2, 4] and seen == full


def test_a_candidate_scored_at_its_initialisation_trains_exactly_as_one_that_is_not(
        teacher_and_data, tmp_path):
    """The training-free signals run on the new candidate before it trains; its training
    (weights, accuracy, curve) is bit for bit the same as without them, and a continuation
    is not scored (it does not start from an initialisation)."""
    from kdnas.core.attrs import SIGNAL_NAMES

    teacher, data = teacher_and_data
    ctx, spec = TrainContext(teacher, data), _spec(data)
    recipe = TrainConfig(steps=12, kd="dkd-ls", device="cpu", eval_every=3)
    plain = train_candidate(ctx, spec, recipe, init=5)
    scored = train_candidate(ctx, spec, recipe, init=5, signals=True)
    sa, sb = plain.model.state_dict(), scored.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert plain.val_accuracy == scored.val_accuracy and plain.signals == {}
    assert tuple(scored.signals) == SIGNAL_NAMES  # what trials.csv names
    assert all(v["seconds"] >= 0 for v in scored.signals.values())
    save_weights(tmp_path / "w.pt", scored)
    assert train_on(ctx, spec, recipe, init=5, start=tmp_path / "w.pt", to=15,
                    ).signals == {}


def test_the_search_trains_each_family_at_its_measured_rate_and_distill_at_the_recipes(
        digits, monkeypatch):
    """MobileNetV2 at a fifth of the peak rate in the search's brief runs
    (reports/mobilenet_collapse.md); a ResNet, and every family in kdnas distill's context,
    at the recipe's own."""
    from kdnas.distill import candidate

    seen = []
    real_fit = candidate.fit

    def spy(model, data, recipe, **kw):
        seen.append(recipe.lr)
        return real_fit(model, data, recipe, **kw)

    monkeypatch.setattr(candidate, "fit", spy)
    shape = dict(in_channels=digits.in_channels, num_classes=digits.num_classes,
                 input_size=digits.input_size)
    mbv2 = get_space("mobilenet").smallest(**shape)
    recipe = TrainConfig(steps=2, kd="none", device="cpu", lr=0.1)
    search, distill = TrainContext(None, digits, family_lr=True), TrainContext(None, digits)
    for ctx, spec in ((search, mbv2), (search, _spec(digits)), (distill, mbv2)):
        train_candidate(ctx, spec, recipe, init=0)
    assert seen == [0.1 * 0.2, 0.1, 0.1]
