"""--time-budget: the learning-rate schedule laid over wall-clock time, ending at 0 when the budget does."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import psutil
import pytest

from conftest import OFFLINE_ENV, REPO, WIKITEXT_DIR
from mlm.runs.metrics import read_metrics
from mlm.config import PRESETS, config_from_args
from mlm.errors import UserError
from mlm.train.clock import on_monotonic
from mlm.train.schedule import TimeBudgetSchedule, linear_schedule, schedule_for
from mlm.train.trainer import Trainer


class FakeClock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_schedule_warms_up_and_decays_to_zero_over_the_time_left():
    schedule = TimeBudgetSchedule(1.0, warmup_ratio=0.1, reserve_s=lambda: 0.0, started=0.0)
    clock = FakeClock(schedule.deadline - 50)  # set-up took the first 10 s of the minute: 50 s are left
    schedule.clock = clock
    assert schedule.multiplier(0) == 0.0 and not schedule.done(0)
    for seconds in (2.5, 5, 10, 30, 49.8):  # against the step schedule: 500 steps of 0.1 s
        clock.now = schedule.begin + seconds
        step = round(seconds * 10)
        assert schedule.multiplier(step) == pytest.approx(linear_schedule(step, 500, 50), abs=1e-9)
    clock.now = schedule.begin + 50
    assert schedule.multiplier(7) == 0.0 and schedule.logged_multiplier(7) == 0.0 and schedule.done(7)
    assert schedule.total(7) == 7


def test_the_run_ends_at_the_last_step_that_fits():
    schedule = TimeBudgetSchedule(1.0, warmup_ratio=0.0, reserve_s=lambda: 0.0, started=0.0)
    start = schedule.deadline - 50
    schedule.clock = FakeClock(start)
    for step in range(1, 24):  # 2 s a step: step 25 would end at 48 + 2 = 50 s, no earlier than the end
        schedule.clock.now = start + 2 * step
        assert not schedule.done(step) and schedule.multiplier(step) > 0
    schedule.clock.now = start + 48
    assert schedule.done(24) and schedule.logged_multiplier(24) == 0.0 and schedule.total(24) == 24


def test_one_step_gets_one_answer_however_late_it_is_asked():
    schedule = TimeBudgetSchedule(1.0, warmup_ratio=0.0, reserve_s=lambda: 0.0, started=0.0)
    schedule.clock = FakeClock(schedule.deadline - 10)
    assert not schedule.done(3)
    schedule.clock.now = schedule.deadline + 5  # the budget ran out during this step's evaluation
    assert not schedule.done(3) and schedule.multiplier(3) > 0  # one more step, then the end, evaluated
    assert schedule.done(4) and schedule.total(4) == 4


def test_the_schedule_leaves_time_for_the_last_evaluation_and_projects_the_steps():
    schedule = TimeBudgetSchedule(1.0, warmup_ratio=0.0, reserve_s=lambda: 20.0, started=0.0)
    schedule.clock = FakeClock(schedule.deadline - 60)
    schedule.progress()
    assert schedule.end == pytest.approx(schedule.deadline - 20)
    schedule.clock.now = schedule.begin + 10  # a quarter of the 40 s: 100 steps done, 400 expected
    assert schedule.progress(100) == pytest.approx(0.25) and schedule.total(100) == 400


def test_budget_preset_and_flag_checks(tmp_path):
    config, _ = config_from_args(["--preset", "budget", "--output-dir", str(tmp_path / "b")])
    assert config.time_budget == PRESETS["budget"]["time_budget"] == 5.0
    assert config_from_args(["--preset", "budget", "--time-budget", "10"])[0].time_budget == 10.0
    with pytest.raises(UserError, match="--time-budget must be positive"):
        config_from_args(["--time-budget", "0"])
    with pytest.raises(UserError, match="--snapshots must be 0 or more"):
        config_from_args(["--snapshots", "-1"])


def test_a_budget_run_ends_on_time_with_the_learning_rate_at_zero(tmp_path):
    run, minutes = tmp_path / "budget", 2.5
    command = [sys.executable, "-m", "mlm.train", "--preset", "budget", "--time-budget", str(minutes),
               "--data-dir", str(WIKITEXT_DIR), "--output-dir", str(run), "--max-train-blocks", "160",
               "--max-eval-blocks", "16", "--batch-size", "8", "--log-every", "2"]
    started = time.monotonic()
    subprocess.run(command, cwd=REPO, env=OFFLINE_ENV, check=True, capture_output=True)
    elapsed = time.monotonic() - started
    assert abs(elapsed - 60 * minutes) <= 0.1 * 60 * minutes, f"{elapsed:.1f} s for a {60 * minutes:.0f} s budget"
    train = [r for r in read_metrics(run) if r["split"] == "train"]
    assert train[-1]["lr"] == 0.0 and train[-1]["step"] == train[-1]["total_steps"]  # decayed and finished
    peak = max(range(len(train)), key=lambda i: train[i]["lr"])
    assert all(a["lr"] >= b["lr"] for a, b in zip(train[peak:], train[peak + 1:]))  # decays after the warm-up
    state = json.loads((run / "training_state" / "state.json").read_text())
    assert state["finished"] and state["step"] == train[-1]["step"]
    valid = [r for r in read_metrics(run) if r["split"] == "valid"]
    assert valid[-1]["step"] == train[-1]["step"]  # the last validation is at the end of the budget


def test_the_minutes_cap_the_time_budget_and_the_app_count_from_one_process_start(tmp_path):
    """One clock (mlm/train/clock.py): the process's start as the system recorded it, read when the Trainer is made."""
    config, _ = config_from_args(["--preset", "budget", "--max-minutes", "3", "--output-dir", str(tmp_path / "run")])
    trainer = Trainer(config)
    started_at = psutil.Process().create_time()
    assert trainer.stopper.started_at == trainer.progress.state["started_at"] == started_at  # the cap; progress.json
    budget = schedule_for(config.time_budget, 0.1, 100, 10, 1, trainer.stopper.started_at, lambda: 0.0, None)
    assert budget.deadline - 60 * config.time_budget == pytest.approx(on_monotonic(started_at), abs=0.05)
