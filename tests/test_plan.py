"""The study's single Tune run: which trial the plan hands out when (no Ray needed).

The plan decides when each stage's trials may start: a seed's trials once its base
models exist, the confirm stage once the searches end, the earlier stages first.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from ray.tune.search import Searcher

from study.plan import WAIT_STAGE, StudyPlan
from study.waits import wait_for_plan
from study.stages import GridStage


def _ctx(finished: set[str] = frozenset()):
    """What a grid stage asks of the study: its finished trials (MLflow) and the key of a run."""
    import pandas as pd

    tracker = SimpleNamespace(children=lambda stage: pd.DataFrame(
        {"tags.trial_key": [k for k in finished if k.startswith(f"{stage}/")]}))
    return SimpleNamespace(tracker=tracker, key=lambda stage, method, seed, hparams, replicate=None: f"{stage}/{method}/{seed}")


def _run(method: str, seed: int) -> dict:
    return {"method": method, "seed": seed, "hparams": {}}


def _given(config) -> str | None:
    if config is None or config == Searcher.FINISHED:
        return config
    assert set(config) == {"stage", "method", "seed", "hparams"}  # one shape for every trial
    return f"{config['stage']}/{config['method']}/{config['seed']}"


def _plan(ctx, confirm_runs):
    base = GridStage(ctx, "base", [_run(m, s) for s in (0, 1) for m in ("original", "retrain")])
    baseline = GridStage(ctx, "baseline", [_run("scrub", s) for s in (0, 1)], needs=base)
    confirm = GridStage(ctx, "confirm", confirm_runs, after=("baseline",), needs=base)
    return StudyPlan([base, baseline, confirm])


def test_seed_trials_start_once_their_base_models_exist_and_confirm_after_its_stage():
    built = []

    def confirm_runs():
        built.append(True)
        return [_run("gli", 0)]

    plan = _plan(_ctx(), confirm_runs)
    assert _given(plan.suggest("t1")) == "base/original/0"
    assert _given(plan.suggest("t2")) == "base/retrain/0"
    # Two slots (Tune's concurrency limit asks again only when one frees).
    plan.on_trial_complete("t1", {"final": 1.0})
    assert _given(plan.suggest("t4")) == "base/original/1"  # earlier stages first
    plan.on_trial_complete("t2", {"final": 1.0})
    assert _given(plan.suggest("t5")) == "base/retrain/1"
    plan.on_trial_complete("t4", {"final": 1.0})
    assert _given(plan.suggest("t6")) == "baseline/scrub/0"  # seed 0's models exist; seed 1's retrain runs
    assert plan.suggest("t7") is None  # seed 1 waits for its retrained model
    plan.on_trial_complete("t5", {"final": 1.0})
    assert _given(plan.suggest("t8")) == "baseline/scrub/1"
    plan.on_trial_complete("t6", {"final": 1.0})
    assert plan.suggest("t9") is None and not built  # confirm waits for the whole baseline stage
    plan.on_trial_complete("t8", {"final": 1.0})
    assert _given(plan.suggest("t10")) == "confirm/gli/0" and built == [True]
    assert plan.suggest("t11") is None
    plan.on_trial_complete("t10", {"final": 1.0})
    assert plan.suggest("t12") == Searcher.FINISHED


def test_finished_trials_are_skipped_and_an_empty_stage_does_not_block():
    finished = {f"base/{m}/{s}" for s in (0, 1) for m in ("original", "retrain")} | {"baseline/scrub/0",
                                                                                     "baseline/scrub/1"}
    plan = _plan(_ctx(finished), lambda: [])
    assert plan.suggest("t1") == Searcher.FINISHED


def test_errored_trials_end_their_seed_too():
    plan = _plan(_ctx(), lambda: [])
    given = [_given(plan.suggest(f"t{i}")) for i in range(2)]
    assert given == ["base/original/0", "base/retrain/0"]
    plan.on_trial_complete("t0", None, error=True)
    plan.on_trial_complete("t1", {"final": 1.0})
    # Seed 0's base stage is over (one model failed; the trial trains it itself when it is missing).
    assert _given(plan.suggest("t2")) == "base/original/1"
    assert _given(plan.suggest("t3")) == "base/retrain/1"
    assert _given(plan.suggest("t4")) == "baseline/scrub/0"


def test_a_stage_may_only_wait_for_earlier_ones():
    ctx = _ctx()
    with pytest.raises(ValueError, match="wait only for earlier"):
        StudyPlan([GridStage(ctx, "confirm", [], after=("base",)), GridStage(ctx, "base", [])])


def test_a_free_slot_gets_a_wait_trial_that_ends_when_a_trial_does(tmp_path):
    """Answering "nothing yet" would let Tune stop idle workers; a wait trial keeps them."""
    import threading

    marker = tmp_path / "study.plan"
    ctx = _ctx()
    base = GridStage(ctx, "base", [_run("original", 0), _run("retrain", 0)])
    baseline = GridStage(ctx, "baseline", [_run("scrub", 0)], needs=base)
    plan = StudyPlan([base, baseline], marker)
    assert marker.read_text() == "0"
    assert [_given(plan.suggest(t)) for t in ("t1", "t2")] == ["base/original/0", "base/retrain/0"]
    plan.on_trial_complete("t1", {"final": 1.0})
    wait = plan.suggest("w1")  # scrub waits for the retrained model
    assert wait == {"stage": WAIT_STAGE, "method": WAIT_STAGE, "seed": 0, "hparams": {},  # no hyper-parameters
                    "wait": {"version": 1, "marker": str(marker)}}

    # What the wait trial runs, on a thread: it returns once the plan has moved on, never before.
    seen = []
    waiting = threading.Thread(target=lambda: (wait_for_plan(str(marker), wait["wait"]["version"], limit_s=60),
                                               seen.append(marker.read_text())))
    waiting.start()
    plan.on_trial_complete("t2", {"final": 1.0})
    waiting.join()
    assert seen == ["2"]  # it saw the version the trial's end published
    plan.on_trial_complete("w1", None)  # a wait trial changes nothing
    assert marker.read_text() == "2"
    assert _given(plan.suggest("t3")) == "baseline/scrub/0"
    assert plan.suggest("t4") is None  # nothing left to hand out: no wait trial either
    plan.on_trial_complete("t3", {"final": 1.0})
    assert plan.suggest("t5") == Searcher.FINISHED


def test_short_trials_are_handed_out_in_bundles_and_each_item_ends_on_its_own():
    """Trials shorter than half of bundle_seconds run several to a Tune trial, once a stage's typical length
    is known; never more than an even share of what is left across the slots."""
    from trainables.bundle import BUNDLE_STAGE, bundle_items

    ctx = _ctx()
    grid = GridStage(ctx, "baseline", [_run("scrub", s) for s in range(40)])
    plan = StudyPlan([grid], slots=2, bundle_seconds=1.0)
    singles = [_given(plan.suggest(f"t{i}")) for i in range(3)]
    assert singles == ["baseline/scrub/0", "baseline/scrub/1", "baseline/scrub/2"]  # not timed yet: one each
    for i in range(3):
        plan.on_trial_complete(f"t{i}", {"final": 1.0, "time_total_s": 0.1})  # 0.1 s each: 10 fill a second
    bundle = plan.suggest("b1")
    items = bundle_items(bundle)
    assert bundle["stage"] == BUNDLE_STAGE and [item_id for item_id, _ in items] == [f"b1#{i}" for i in range(10)]
    assert [_given(config) for _, config in items] == [f"baseline/scrub/{s}" for s in range(3, 13)]
    assert grid.issued == 13 and len(grid.live) == 10
    # Each item ends as a trial of its own; one without a report (the bundle was cut short) as an error.
    ended = []
    real_ended = grid.ended
    grid.ended = lambda trial_id, result, error, seconds: (ended.append((trial_id, error)),
                                                           real_ended(trial_id, result, error, seconds))[1]
    reports = [{"final": 1.0, "item_seconds": 0.1}] * 9
    plan.on_trial_complete("b1", {"items": reports})
    assert ended == [(f"b1#{i}", False) for i in range(9)] + [("b1#9", True)]
    assert len(bundle_items(plan.suggest("b2"))) == 10
    assert len(bundle_items(plan.suggest("b3"))) == 9  # b2: 27 left, a share of 14 capped at 10; b3: 17 left, 9
    last = plan.suggest("b4")
    assert len(bundle_items(last)) == 4  # 8 left: an even share of 2 slots, so the tail runs side by side


def test_brief_trials_fill_their_bundles_even_past_an_even_share():
    """Trials of a few milliseconds on many slots: a bundle still takes far less than bundle_seconds when it
    holds more than an even share, so it is not split (tiny bundles cost the driver one Tune trial each)."""
    from trainables.bundle import bundle_items

    # 97 left on 48 slots: an even share is 3. 1 ms: 32 (the cap); 20 ms: 5 fill a tenth of a second;
    # 50 ms: 2 would, fewer than the share, so the share (3) stands.
    for seconds, expected in ((0.001, 32), (0.02, 5), (0.05, 3)):
        grid = GridStage(_ctx(), "baseline", [_run("scrub", s) for s in range(100)])
        plan = StudyPlan([grid], slots=48, bundle_seconds=1.0)
        for i in range(3):
            plan.suggest(f"t{i}")
            plan.on_trial_complete(f"t{i}", {"final": 1.0, "time_total_s": seconds})
        assert len(bundle_items(plan.suggest("b1"))) == expected, seconds


def test_no_bundles_when_trials_are_long_or_bundling_is_off():
    for seconds, bundle_seconds in ((0.6, 1.0), (0.01, 0.0)):
        grid = GridStage(_ctx(), "baseline", [_run("scrub", s) for s in range(10)])
        plan = StudyPlan([grid], slots=2, bundle_seconds=bundle_seconds)
        for i in range(3):
            plan.suggest(f"t{i}")
            plan.on_trial_complete(f"t{i}", {"final": 1.0, "time_total_s": seconds})
        assert _given(plan.suggest("t3")) == "baseline/scrub/3"


def test_wait_for_plan_gives_up_after_its_limit(tmp_path):
    """A plan that never moves (its launcher gone) does not hold a worker for ever: the wait returns."""
    wait_for_plan(str(tmp_path / "never-written.plan"), 0, limit_s=0.3)
    assert not (tmp_path / "never-written.plan").exists()


def test_a_torn_journal_line_does_not_stop_the_resume(tmp_path):
    """A kill during a journal write leaves half a line; Optuna alone then fails on the next append."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from trainables.records import repair_journal

    path = tmp_path / "optuna.journal"

    def study():
        return optuna.create_study(study_name="s", storage=JournalStorage(JournalFileBackend(str(path))),
                                   directions=["maximize", "minimize"], load_if_exists=True)

    first = study()
    for _ in range(3):
        t = first.ask()
        first.tell(t, [t.suggest_float("x", 0, 1), 0.5])
    whole = path.read_bytes()
    assert repair_journal(path) == 0 and path.read_bytes() == whole  # an intact journal is left alone
    torn = b'{"op_code": 5, "worker_id": "ab'
    path.write_bytes(whole + torn)
    assert repair_journal(path) == len(torn) and path.read_bytes() == whole
    resumed = study()
    t = resumed.ask()
    resumed.tell(t, [t.suggest_float("x", 0, 1), 0.1])
    assert [s.state.name for s in study().trials] == ["COMPLETE"] * 4  # appended after the cut, replayable
    path.write_bytes(b'{"op_code"')  # a journal that is nothing but a torn line
    assert repair_journal(path) == 10 and path.read_bytes() == b""


def test_a_bundle_item_that_raises_fails_alone():
    """The worker's side of a bundle: each item's report in order, a raising item a failed report of its own."""
    from trainables.bundle import bundle_config, bundle_items, run_bundle

    def run_one(config):
        if config["seed"] == 1:
            raise ValueError("bad setting")
        return {"final": 1.0, "seed": config["seed"]}

    items = bundle_items(bundle_config([(f"b#{s}", _run("scrub", s) | {"stage": "baseline"}) for s in range(3)]))
    reports = run_bundle(items, run_one)["items"]
    assert [r["final"] for r in reports] == [1.0, 0.0, 1.0]
    assert reports[1]["error"] == "ValueError: bad setting" and all(r["item_seconds"] >= 0 for r in reports)


def test_progress_lines_keep_one_study_clock_name_the_best_and_estimate_what_is_left(capsys):
    """Every stage counts from the study's start (not its own), names whose score is best and on which split,
    and estimates the time left once three of its trials have ended."""
    import pandas as pd

    from study.callback import ItemTrial

    ctx = SimpleNamespace(**vars(_ctx()), started=1000.0)
    stage = GridStage(ctx, "confirm", [_run("gli", s) for s in range(5)] + [_run("scrub", 0)])
    stage.activate()
    stage.started = 1100.0  # activated 100 s into the study
    stage.printed = -1e18
    for i, (method, score) in enumerate([("gli", 0.91), ("scrub", 0.95), ("gli", 0.93)]):
        config = stage.take(f"t{i}")
        assert config["method"] in ("gli", "scrub")
        stage.methods[f"t{i}"] = method
        stage.ended(f"t{i}", {}, False)
        stage.recorded(ItemTrial(f"t{i}", {"sel_final_score": score}), ok=True)
        stage.printed = -1e18
    stage.ended_at.clear()
    stage.ended_at.extend([1100.0, 1115.0, 1130.0])  # its trials' recent pace: one every 15 s
    line = stage.progress(now=1130.0)
    assert "confirm: 3/6 done" in line and "best final score on the selection split 0.9500 (scrub)" in line
    assert line.endswith("[2m10s]")  # the study's clock: 130 s since it started, not 30 s since the stage did
    assert "about 45s left" in line  # 3 to go at one every 15 s
    assert "left" not in GridStage(ctx, "base", []).progress(now=1130.0)
    audit = GridStage(ctx, "audit", [])  # an audit's selection scores are not a goal: no best in its lines
    audit._better(0.9, "gli")
    assert "audit: 0/0 done" in audit.progress(now=1130.0) and "best" not in audit.progress(now=1130.0)

    # A resumed stage's best includes the trials an earlier run finished.
    finished = pd.DataFrame({"tags.trial_key": ["confirm/gli/0"], "tags.method": ["gli"], "sel_final_score": [0.99]})
    ctx = SimpleNamespace(tracker=SimpleNamespace(children=lambda stage: finished), started=1000.0,
                          key=lambda stage, method, seed, hparams, replicate=None: f"{stage}/{method}/{seed}")
    resumed = GridStage(ctx, "confirm", [_run("gli", 0), _run("gli", 1)])
    resumed.activate()
    assert resumed.planned == 1 and "best final score on the selection split 0.9900 (gli)" in resumed.progress(1001.0)
