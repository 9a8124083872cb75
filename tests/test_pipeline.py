"""The sync / async rollout pipeline (gapray/pipeline.py): bounded staleness, k = 0 equals sync,
streaming leaves the images unchanged, and an async run killed mid-step resumes with no step
logged twice.

The pure schedule is checked by hand; the rest drives `Controller.step` on one set of tiny-model
roles on a local Ray (two generation workers, calls of 4 rows, so every step streams several
generation calls into the reward worker).
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from conftest import TINY_RUN

from gapray.algos.pairs import PairStats
from gapray.config import load_config
from gapray.pipeline import GroupPairs, chunks, launch_steps, merge_pair_stats, staleness, staleness_bound

ROLES = [
    *TINY_RUN,
    "generation.num_workers=2",
    "generation.cpus_per_worker=0.5",
    "generation.batch_size=4",
    "run.threads_per_actor=1",  # four actors on a small machine: async stages share its cores
]


# ------------------------------------------------------------------------------ pure schedule
def test_staleness_bound_is_zero_for_sync_and_k_for_async():
    assert staleness_bound("sync", 3) == 0
    assert staleness_bound("async", 0) == 0
    assert staleness_bound("async", 2) == 2
    with pytest.raises(ValueError, match=r"run\.pipeline"):
        staleness_bound("overlap", 1)
    with pytest.raises(ValueError, match=r"run\.max_staleness"):
        staleness_bound("async", -1)


def test_launch_steps_run_k_ahead_but_not_past_the_last_step():
    assert list(launch_steps(1, 0, 5)) == [1]
    assert list(launch_steps(1, 1, 5)) == [1, 2]
    assert list(launch_steps(4, 2, 5)) == [4, 5]
    assert list(launch_steps(5, 2, 5)) == [5]


def test_staleness_is_the_version_gap_and_refuses_more_than_k():
    gap = staleness(5, np.array([4, 5, 3]), k=2)
    assert gap.tolist() == [1, 0, 2]
    with pytest.raises(RuntimeError, match="max_staleness=1"):
        staleness(5, np.array([4, 3]), k=1)
    with pytest.raises(RuntimeError, match="out of bounds"):
        staleness(2, np.array([3]), k=1)  # a sample newer than the learner: a bookkeeping bug


def test_chunks_cut_each_workers_share_in_row_order():
    # 10 rows over 2 workers = rows 0..4 and 5..9, in calls of at most 2 rows
    got = [(i, s.start, s.stop) for i, s in chunks(10, 2, 2)]
    assert got == [(0, 0, 2), (0, 2, 4), (0, 4, 5), (1, 5, 7), (1, 7, 9), (1, 9, 10)]
    assert chunks(3, 4, 8) == [(0, slice(0, 1)), (1, slice(1, 2)), (2, slice(2, 3))]


def test_group_pairs_in_any_completion_order_equal_one_build_pairs_call():
    from functools import partial

    from gapray.algos.pairs import build_pairs

    rng = np.random.default_rng(0)
    # prompt "b" is drawn twice in the step: one group of 6 rows, as build_pairs sees it
    ids = [g for g in ("a", "b", "c", "b", "d") for _ in range(3)]
    p_yes = rng.random(len(ids)).astype(np.float32)
    accepted = p_yes >= 0.5
    for rule, per_prompt in (("paper", 1), ("best_worst", 2)):
        fn = partial(build_pairs, rule=rule, min_margin=0.05, pairs_per_prompt=per_prompt)
        whole = fn(ids, p_yes, accepted)
        for _ in range(3):
            calls = chunks(len(ids), 3, 2)  # calls of 2 rows, completing in a shuffled order
            groups = GroupPairs(ids, fn)
            completed = []
            for c in rng.permutation(len(calls)):
                s = calls[c][1]
                completed += groups.add(s, p_yes[s], accepted[s])
            assert sorted(completed) == ["a", "b", "c", "d"]
            pairs, stats = groups.result()
            assert pairs == whole[0]
            assert stats.as_dict() == pytest.approx(whole[1].as_dict())
    with pytest.raises(RuntimeError, match="not fully scored"):
        GroupPairs(ids, fn).result()


def test_merged_pair_stats_are_one_calls_stats():
    a = PairStats(prompts=2, pairs=2, all_pass=0, all_fail=0, below_margin=0, mean_margin=0.4)
    b = PairStats(prompts=3, pairs=1, all_pass=1, all_fail=1, below_margin=0, mean_margin=0.1)
    m = merge_pair_stats([a, b])
    assert (m.prompts, m.pairs, m.all_pass, m.all_fail) == (5, 3, 1, 1)
    assert m.mean_margin == pytest.approx((2 * 0.4 + 0.1) / 3)  # weighted by pairs
    assert merge_pair_stats([]).mean_margin == 0.0


def test_bad_pipeline_config_names_the_field():
    from gapray.config import ConfigError

    with pytest.raises(ConfigError, match=r"run\.pipeline"):
        load_config(["run.pipeline=overlap"])
    with pytest.raises(ConfigError, match=r"run\.max_staleness"):
        load_config(["run.pipeline=async", "run.max_staleness=-1"])


# ------------------------------------------------------------------------------ on Ray
@pytest.fixture(scope="module")
def roles():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=4, include_dashboard=False, configure_logging=False)
    from gapray.run import build_roles

    built = build_roles(load_config(ROLES))
    yield built
    built.shutdown()
    ray.shutdown()


def _controller(roles, out, *overrides):
    from gapray.controller import Controller
    from gapray.storage import RunDir

    cfg = load_config([*ROLES, "run.eval_every=100", f"run.out_dir={out}", *overrides])
    return Controller(cfg, RunDir(out), roles)


def _weights(ctl, step: int) -> dict[str, torch.Tensor]:
    """The learner's trainable tensors, through a checkpoint (its save_pretrained part)."""
    from gapray.storage.checkpoints import load_trainer_state

    ctl.checkpoint(step)
    return load_trainer_state(ctl.run.latest_checkpoint())["trainable"]


@pytest.mark.ray
@pytest.mark.parametrize("k", [0, 1, 2])
def test_async_staleness_never_exceeds_k_and_matches_the_recorded_versions(roles, tmp_path, k):
    ctl = _controller(roles, tmp_path / "run", "run.pipeline=async", f"run.max_staleness={k}", "run.steps=3")
    ctl.push()  # these roles are shared: every worker and the controller start at one version
    start = ctl.sync.version
    rows = []
    for step in range(1, 4):
        learner_version = ctl.sync.version
        row = ctl.step(step)
        assert row["optimizer_steps"] >= 1  # every step learns and syncs: versions advance
        rollouts = ctl.run.read_rollouts(step).to_pydict()
        gap = learner_version - np.array(rollouts["version"])
        # The logged per-sample staleness is the version gap, and the row's min/mean/max are its.
        assert rollouts["staleness"] == gap.tolist()
        assert rollouts["step"] == [step] * len(gap)
        assert (row["staleness_min"], row["staleness_max"]) == (gap.min(), gap.max())
        assert row["staleness_mean"] == pytest.approx(gap.mean())
        rows.append(row)
    # Generation launched k steps ahead uses the weights of k syncs ago: exactly min(k, step-1)
    # behind (never more), and k = 0 is sync.
    assert [r["staleness_max"] for r in rows] == [min(k, s - 1) for s in range(1, 4)]
    assert rows[-1]["version"] == start + 3
    assert not ctl.rollouts.launched  # nothing launched past run.steps


@pytest.mark.ray
def test_streamed_rollouts_equal_one_call_per_share(roles, tmp_path):
    # Calls of 4 rows, scored as they come back, give the images and verdicts of map_shares.
    from gapray.controller import row_seeds
    from gapray.workers.generation import generate_rollouts
    from gapray.workers.reward import score_rollouts

    ctl = _controller(roles, tmp_path / "run", "run.steps=1")
    ctl.rollouts.fill(1)
    prompts, streamed, scored, pairs, spans = ctl.rollouts.take(1, ctl.pair_fn())
    assert len(streamed) == 16 and spans.launched <= spans.first_scored_at <= spans.generated <= spans.scored
    seeds = row_seeds(ctl.cfg.run.seed, 1, 16)
    whole = generate_rollouts(roles.generation, [p.id for p in prompts], [p.text for p in prompts], seeds, 4)
    again = score_rollouts(roles.reward, whole)
    np.testing.assert_array_equal(streamed.tokens, whole.tokens)
    np.testing.assert_array_equal(streamed.seeds, whole.seeds)
    assert streamed.prompt_ids == whole.prompt_ids
    np.testing.assert_allclose(scored.p_yes, again.p_yes, rtol=0, atol=1e-6)
    # The pairs built prompt by prompt as verdicts came back are those of the whole step.
    assert pairs == ctl.pair_fn()(streamed.prompt_ids, scored.p_yes, scored.accepted)


@pytest.mark.ray
def test_async_with_k_zero_gives_the_samples_and_weights_of_sync(roles, tmp_path):
    # Both runs start from one checkpoint of the shared learner (weights, optimizer, RNG).
    sync = _controller(roles, tmp_path / "sync", "run.steps=2")
    sync.push()
    sync.checkpoint(0)
    start = sync.run.latest_checkpoint()
    for step in (1, 2):
        sync.step(step)
    sync_weights = _weights(sync, 2)

    asyn = _controller(roles, tmp_path / "async", "run.pipeline=async", "run.max_staleness=0", "run.steps=2")
    shutil.copytree(start, asyn.run.root / start.relative_to(sync.run.root))
    asyn.resume()
    for step in (1, 2):
        asyn.step(step)
    for step in (1, 2):
        a, b = sync.run.read_rollouts(step).to_pydict(), asyn.run.read_rollouts(step).to_pydict()
        for col in ("prompt_id", "seed", "version", "tokens", "staleness"):
            assert a[col] == b[col], col
    async_weights = _weights(asyn, 2)
    assert sync_weights.keys() == async_weights.keys()
    assert all(torch.equal(sync_weights[n], async_weights[n]) for n in sync_weights)
    from gapray.storage.checkpoints import load_trainer_state

    initial = load_trainer_state(start)["trainable"]
    assert not all(torch.equal(sync_weights[n], initial[n]) for n in sync_weights)  # it learned


class Killed(Exception):
    """What the driver's death looks like to this test (nothing after it runs)."""


@pytest.mark.ray
def test_async_run_killed_mid_step_resumes_without_duplicate_steps(roles, tmp_path, monkeypatch):
    out = tmp_path / "run"
    overrides = ("run.pipeline=async", "run.max_staleness=1", "run.steps=4", "run.checkpoint_every=2")
    ctl = _controller(roles, out, *overrides)
    ctl.push()
    update, calls = roles.learner.update, []

    def dies_in_step_4(batch):
        calls.append(1)
        if len(calls) == 4:  # mid-step 4: steps 1..3 logged, only step 2 checkpointed
            raise Killed("driver killed mid-step")
        return update(batch)

    monkeypatch.setattr(roles.learner, "update", dies_in_step_4)
    with pytest.raises(Killed):
        ctl.run_loop()
    monkeypatch.setattr(roles.learner, "update", update)
    first = {s: ctl.run.read_rollouts(s).to_pydict() for s in (1, 2, 3)}
    assert [m["step"] for m in ctl.run.read_metrics().to_pylist()] == [0, 1, 2, 3]
    assert [c.name for c in ctl.run.list_checkpoints()] == ["step_0000002"]

    again = _controller(roles, out, *overrides, f"run.resume={out}")
    again.resume()
    assert again.start_step == 3 and sorted(again.rollouts.restored) == [3]  # step 3 was launched
    again.run_loop()
    metrics = again.run.read_metrics().to_pylist()
    assert [m["step"] for m in metrics] == [0, 1, 2, 3, 4]  # none twice
    redone = again.run.read_rollouts(3).to_pydict()
    # The redone step draws the prompts and seeds the killed run had launched for it ...
    assert redone["prompt_id"] == first[3]["prompt_id"] and redone["seed"] == first[3]["seed"]
    # ... from the checkpoint's weights (its generation restarts there), so within the bound.
    assert set(redone["version"]) == {metrics[2]["version"]} and max(redone["staleness"]) <= 1
    # Steps 1 and 2 (in the checkpoint) stay as trained; no update is counted twice.
    for s in (1, 2):
        assert again.run.read_rollouts(s).to_pydict()["tokens"] == first[s]["tokens"]
    assert metrics[4]["optimizer_updates"] == sum(m["optimizer_steps"] for m in metrics[1:])
    rows = again.run.read_rollouts().to_pylist()
    keys = [(r["step"], r["prompt_id"], r["sample_index"]) for r in rows]
    assert len(keys) == len(set(keys)) == 4 * 16
