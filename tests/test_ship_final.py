from __future__ import annotations

import dataclasses

import pytest
import torch

from kdnas.core.settings import SearchConfig
from kdnas.ship.final import distill_trial
from kdnas.report import pick_trial, write_report
from kdnas.search.loop import run_search
from kdnas.search.storage import load_record


@pytest.fixture(scope="module")
def study_with_a_student(tmp_path_factory, digits_teacher):
    from kdnas.search.prepare import prepare

    tmp = tmp_path_factory.mktemp("final")
    cfg = SearchConfig(study="f", teacher=str(digits_teacher), budget="1MFLOPs", trials=1,
                       epochs=1, workdir=str(tmp / "runs"), reports=str(tmp / "reports"),
                       latency=False)
    cfg, teacher, data, _ = prepare(cfg)
    out = run_search(cfg, teacher, data)
    return load_record(out.study), cfg, teacher, data, tmp


def test_interrupted_distillation_resumes_to_the_same_student(study_with_a_student):
    study, cfg, teacher, data, tmp = study_with_a_student
    trial = pick_trial(study, "best")
    steps_per_epoch = -(-len(data.train_y) // cfg.batch_size)

    def interrupt_in_epoch_two(step, total, loss):
        if step == steps_per_epoch + 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill_trial(study, cfg, trial, teacher, data, epochs=3, out_dir=tmp / "a",
                      formats=("pt2",), progress=interrupt_in_epoch_two)
    ckpt = cfg.study_dir / "distill" / f"trial-{trial}" / "checkpoint.pt"
    assert torch.load(ckpt, weights_only=True)["epoch"] == 1
    resumed = distill_trial(study, cfg, trial, teacher, data, epochs=3, out_dir=tmp / "a",
                            formats=("pt2",))
    other = dataclasses.replace(cfg, workdir=str(tmp / "runs-b"))
    straight = distill_trial(study, other, trial, teacher, data, epochs=3, out_dir=tmp / "b",
                             formats=("pt2",))
    assert resumed["test_accuracy"] == straight["test_accuracy"]
    a = torch.load(tmp / "a" / "student_state_dict.pt", weights_only=True)
    b = torch.load(tmp / "b" / "student_state_dict.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [c["epoch"] for c in resumed["curve"]] == [1, 2, 3]
    # the report shows the distilled student with its test accuracy
    write_report(study, cfg)
    page = (cfg.report_dir / "report.html").read_text()
    assert "Fully distilled" in page and f"{100 * resumed['test_accuracy']:.2f}%" in page
    card = (tmp / "a" / "MODEL_CARD.md").read_text()
    assert "test accuracy" in card and "after full distillation, 3 epochs" in card
