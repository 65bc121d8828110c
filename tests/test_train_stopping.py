"""The stopping rule, failed runs and the accuracy-matched checkpoint (SPEC §10) on hand-made
curves, and the bad-input errors of their settings."""

import pytest

from auglens.config import CellConfig, ExperimentConfig, TrainConfig, load_config
from auglens.errors import ConfigError
from auglens.train.matching import (
    checkpoints_needed,
    matched_epoch,
    matching_table,
    performance_table,
)
from auglens.train.stopping import StoppingRule, converged_at_end
from auglens.train.trainer import lr_factor


def run(rule, values):
    for i, v in enumerate(values):
        if rule.update(v):
            return i + 1
    return len(values)


def test_converged_mode_stops_at_the_first_plateau():
    rule = StoppingRule("converged", "val_accuracy", patience=2, min_delta=0.01, max_epochs=10)
    # improvements: 0.5→0.7→0.8, then +0.005 and −0.01: two epochs without a 0.01 gain
    stopped = run(rule, [0.5, 0.7, 0.8, 0.805, 0.795, 0.9])
    assert stopped == 5
    s = rule.summary()
    assert s["converged"] is True and s["epochs_trained"] == 5
    assert s["best_epoch"] == 4  # 0.805 is the best value, though below min_delta


def test_cap_reached_while_improving_is_not_converged():
    rule = StoppingRule("converged", "val_accuracy", patience=2, min_delta=0.01, max_epochs=4)
    assert run(rule, [0.1, 0.2, 0.3, 0.4]) == 4
    s = rule.summary()
    assert s["converged"] is False and "cap of 4 epochs" in s["stop_reason"]


def test_loss_monitor_and_lr_decays():
    rule = StoppingRule("converged", "val_loss", patience=1, min_delta=0.0, max_epochs=20,
                        decays=2, gamma=0.1)
    # a plateau first decays the learning rate (twice), the third plateau stops
    values = [1.0, 0.8, 0.9, 0.7, 0.75, 0.6, 0.65]
    assert run(rule, values) == 7
    assert rule.decay_epochs == [3, 5]
    assert rule.lr_factor == pytest.approx(0.01)
    assert rule.best_epoch == 6 and rule.summary()["converged"] is True


def test_fixed_mode_judges_convergence_on_the_curve():
    rule = StoppingRule("fixed", "val_accuracy", patience=2, min_delta=0.005, max_epochs=5)
    assert run(rule, [0.5, 0.9, 0.95, 0.952, 0.951]) == 5
    assert rule.summary()["converged"] is True
    assert converged_at_end([0.42, 0.44, 0.47], "val_accuracy", 2, 0.005) is False
    assert converged_at_end([0.5, 0.9], "val_accuracy", 2, 0.005) is False  # too short


def test_matched_epoch_on_a_hand_example():
    curve = [0.30, 0.62, 0.80, 0.90, 0.95, 0.95]
    assert matched_epoch(curve, 0.78) == 3
    assert matched_epoch(curve, 0.85) == 3  # |0.80-0.85| = |0.90-0.85|: the earlier epoch
    assert matched_epoch(curve, 0.99) == 5  # 0.95 twice: the earlier


def _rec(best, epochs_acc=None, converged=True, best_epoch=None):
    hist = [{"val_accuracy": a} for a in (epochs_acc or [best])]
    return {"test": {"accuracy": best, "precision": 0, "recall": 0, "f1": 0},
            "best_val_accuracy": best, "best_epoch": best_epoch or len(hist),
            "epochs_trained": len(hist), "converged": converged, "stop_reason": "",
            "history": hist, "train_seconds": 1.0}


def test_matching_and_failed_runs_tables():
    records = {
        ("baseline", 0): _rec(0.99, [0.5, 0.8, 0.9, 0.99], best_epoch=4),
        ("baseline", 1): _rec(0.86, [0.6, 0.86, 0.85], best_epoch=2),
        ("baseline", 2): _rec(0.995, [0.7, 0.995], best_epoch=2),
        ("cutmix", 0): _rec(0.82),
        ("cutmix", 1): _rec(0.99),
    }
    m = matching_table(records, "baseline").set_index(["variant", "seed"])
    assert m.loc[("cutmix", 0), "baseline_epoch"] == 2  # 0.80 is closest to 0.82
    assert not m.loc[("cutmix", 0), "same_as_final"]
    assert m.loc[("cutmix", 1), "baseline_epoch"] == 2 and m.loc[("cutmix", 1), "same_as_final"]
    assert checkpoints_needed(m.reset_index()) == [(0, 2)]
    perf = performance_table(records, failed_margin=0.05).set_index(["variant", "seed"])
    # baseline seed 1 plateaued at 0.86 while the other seeds reached 0.99 / 0.995
    assert perf.loc[("baseline", 1), "failed"] and not perf.loc[("baseline", 0), "failed"]
    # one other seed is its own median: 0.82 < 0.99 - 0.05, so cutmix seed 0 is flagged too,
    # and an unconverged cell never is
    assert perf.loc[("cutmix", 0), "failed"] and not perf.loc[("cutmix", 1), "failed"]
    records[("cutmix", 0)]["converged"] = False
    assert not performance_table(records).set_index(["variant", "seed"]).loc[
        ("cutmix", 0), "failed"]


def test_lr_schedules_for_open_ended_training():
    tc = TrainConfig(stop="converged", warmup_epochs=1, decay_rate=0.5, schedule="exponential")
    assert lr_factor(tc, 0, 1000, 10) == pytest.approx(0.1)  # warm-up
    assert lr_factor(tc, 9, 1000, 10) == pytest.approx(1.0)
    assert lr_factor(tc, 30, 1000, 10) == pytest.approx(0.5 ** 2)  # 2 epochs after warm-up
    plateau = TrainConfig(stop="converged")
    assert plateau.resolved_schedule == "plateau" and TrainConfig().resolved_schedule == "onecycle"
    assert lr_factor(plateau, 500, 1000, 10) == 1.0


@pytest.mark.parametrize("override, field", [
    ("train.patience=0", "train.patience"),
    ("train.max_epochs=0", "train.max_epochs"),
    ("train.min_delta=-1", "train.min_delta"),
    ("train.monitor=val_f1", "train.monitor"),
    ("augment=[{name: cutmix, p: 1.5}]", "p must be in [0, 1]"),
])
def test_bad_stopping_settings_name_the_field(override, field):
    with pytest.raises(ConfigError, match=field.replace("[", r"\[").replace("]", r"\]")):
        load_config(CellConfig, {}, [override])


def test_max_epochs_must_exceed_patience_and_excluded_cells_must_exist():
    with pytest.raises(ConfigError, match="max_epochs"):
        load_config(CellConfig, {}, ["train.stop=converged", "train.max_epochs=3",
                                     "train.patience=3"])
    with pytest.raises(ConfigError, match="unknown cell 'nope/seed0'"):
        load_config(ExperimentConfig, {}, ["analysis.exclude=[nope/seed0]"])
    exp = load_config(ExperimentConfig, {"variants": {"baseline": [], "a": [{"name": "affine"}]},
                                         "seeds": [0, 1]}, ["analysis.exclude=[a/seed1]"])
    assert [(v, s) for v, s, _ in exp.cells()] == [("baseline", 0), ("a", 0), ("baseline", 1)]
