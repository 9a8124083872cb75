"""Tests for gapray/algos/curriculum.py with hand-made observations: epochs, the replay pool
(fills with all-fail prompts, replay steps draw them oldest first, they leave when they pass),
pass-rate band sampling, resumption from a JSON state, and validation.

    PYTHONPATH=. python -m pytest tests/test_curriculum.py -q
"""

from __future__ import annotations

import json
from collections import Counter

import pytest

from gapray.algos.curriculum import (
    Curriculum,
    PassRateBandCurriculum,
    ReplayCurriculum,
    UniformCurriculum,
    make_curriculum,
)
from gapray.types import Prompt


def make_prompts(n: int) -> list[Prompt]:
    return [Prompt(id=f"p{i:02d}", text=f"prompt {i}") for i in range(n)]


def ids(batch: list[Prompt]) -> list[str]:
    return [p.id for p in batch]


def fake_results(step: int, batch: list[Prompt]) -> dict[str, tuple[int, int]]:
    """A deterministic judge: prompt number i passes k of 4 images, k depending on i and the step."""
    return {p.id: ((int(p.id[1:]) * 7 + step) % 5 % 4 if int(p.id[1:]) % 3 else 0, 4) for p in batch}


def test_uniform_epochs_cover_every_prompt():
    cur = UniformCurriculum(make_prompts(12), batch_size=4, seed=0)
    first_epoch = [pid for s in range(3) for pid in ids(cur.next_batch(s))]
    assert sorted(first_epoch) == [f"p{i:02d}" for i in range(12)]
    second_epoch = [pid for s in range(3, 6) for pid in ids(cur.next_batch(s))]
    assert sorted(second_epoch) == sorted(first_epoch) and second_epoch != first_epoch
    assert cur.stats()["epoch"] == 1.0


def test_next_batch_is_idempotent_per_step():
    for kind in ("uniform", "replay", "band"):
        cur = make_curriculum(kind, make_prompts(10), batch_size=3, seed=1)
        a = ids(cur.next_batch(0))
        assert ids(cur.next_batch(0)) == a
        assert ids(cur.next_batch(1)) != a or kind == "band"


def test_batches_have_no_repeats_and_wrap_when_bigger_than_the_set():
    cur = UniformCurriculum(make_prompts(5), batch_size=3, seed=3)
    for s in range(20):
        b = ids(cur.next_batch(s))
        assert len(set(b)) == 3
    big = UniformCurriculum(make_prompts(3), batch_size=7, seed=3)
    assert len(big.next_batch(0)) == 7


def test_replay_pool_fills_replays_oldest_first_and_empties_on_pass():
    prompts = make_prompts(8)
    cur = ReplayCurriculum(prompts, batch_size=4, seed=0, replay_every=3, replay_fraction=0.5)
    # step 0: every prompt fails except the first of the batch
    b0 = ids(cur.next_batch(0))
    cur.observe(0, {pid: (1 if k == 0 else 0, 4) for k, pid in enumerate(b0)})
    assert cur.discard_pool == b0[1:]
    # step 1: all of them fail too -> appended after the step-0 ones
    b1 = ids(cur.next_batch(1))
    assert not set(b1) & set(b0[1:])  # pooled prompts wait for a replay step
    cur.observe(1, {pid: (0, 4) for pid in b1})
    assert cur.discard_pool == b0[1:] + b1
    assert cur.stats()["discard_pool_size"] == 7.0
    # step 2 is not a replay step; with 7 of 8 prompts pooled, the walk falls back to all prompts
    assert not cur.is_replay_step(2) and cur.is_replay_step(3)
    cur.next_batch(2)
    # step 3: half the batch (2 prompts) comes from the front of the pool
    b3 = ids(cur.next_batch(3))
    assert b3[:2] == b0[1:3] and cur.stats()["replayed"] == 2.0
    assert len(set(b3)) == 4  # the walk (falling back to pooled prompts) does not repeat the replayed ones
    # replayed prompt b0[1] now passes -> leaves; b0[2] fails again -> to the back
    cur.observe(3, {b0[1]: (2, 4), b0[2]: (0, 4)})
    assert b0[1] not in cur.discard_pool
    assert cur.discard_pool[-1] == b0[2] and cur.discard_pool[0] == b0[3]
    assert cur.stats()["recovered_total"] == 1.0


def test_replay_walk_skips_pooled_prompts():
    prompts = make_prompts(20)
    cur = ReplayCurriculum(prompts, batch_size=4, seed=5, replay_every=100)
    b0 = ids(cur.next_batch(0))
    cur.observe(0, {pid: (0, 4) for pid in b0})
    later = {pid for s in range(1, 30) for pid in ids(cur.next_batch(s))}
    assert not later & set(b0)  # never drawn outside replay steps while pooled
    assert len(later) == 16


def test_band_prefers_in_band_prompts():
    prompts = make_prompts(20)
    cur = PassRateBandCurriculum(prompts, batch_size=4, seed=0, band=(0.2, 0.8), explore=0.1)
    # p00..p04: half pass (in band); p05..p19: all pass or all fail (out of band)
    cur.observe(0, {p.id: ((2, 4) if i < 5 else (4, 4) if i % 2 else (0, 4)) for i, p in enumerate(prompts)})
    assert cur.stats()["in_band_share"] == pytest.approx(5 / 20)
    counts = Counter(pid for s in range(1, 501) for pid in ids(cur.next_batch(s)))
    in_band = sum(counts[f"p{i:02d}"] for i in range(5))
    # expected in-band share per slot: 0.9 + 0.1 * 5/20 = 0.925, but 4 draws without replacement
    # from 5 in-band prompts push a few slots out; well above the 25 % of uniform sampling anyway
    assert in_band / sum(counts.values()) > 0.75
    assert all(counts[f"p{i:02d}"] > 0 for i in range(5, 20))  # explore reaches every prompt


def test_band_ema_unseen_and_fallback():
    prompts = make_prompts(4)
    cur = PassRateBandCurriculum(prompts, batch_size=2, seed=0, ema=0.5, explore=0.0)
    assert cur.stats()["in_band_share"] == 1.0  # unseen prompts count as in band
    cur.observe(0, {"p00": (4, 4)})
    assert cur.pass_rate("p00") == 1.0 and cur.pass_rate("p01") is None
    cur.observe(1, {"p00": (0, 4)})  # 0.5 * 1 + 0.5 * 0 = 0.5
    assert cur.pass_rate("p00") == 0.5
    assert cur.stats()["mean_pass_rate"] == 0.5 and cur.stats()["seen_share"] == 0.25
    # everything out of band -> falls back to all prompts instead of failing
    cur.observe(2, {p.id: (0, 4) for p in prompts})
    cur.observe(3, {p.id: (0, 4) for p in prompts})
    assert cur.stats()["in_band_share"] == 0.0
    assert len(cur.next_batch(4)) == 2
    # one prompt in band and explore 0: batch of 2 holds it; the second slot must come from elsewhere
    cur.observe(5, {"p03": (8, 8)})  # 0.5 * 0 + 0.5 * 1 = 0.5 -> in band
    for s in range(6, 16):
        b = ids(cur.next_batch(s))
        assert b.count("p03") >= 1 and len(b) == 2


@pytest.mark.parametrize(
    "kind,kwargs",
    [
        ("uniform", {}),
        ("replay", {"replay_every": 3, "replay_fraction": 0.5}),
        ("band", {"band": (0.2, 0.8), "explore": 0.2}),
    ],
)
def test_state_dict_round_trip_resumes_exactly(kind, kwargs):
    prompts = make_prompts(11)

    def run(cur: Curriculum, steps: range) -> list[list[str]]:
        out = []
        for s in steps:
            batch = cur.next_batch(s)
            cur.observe(s, fake_results(s, batch))
            out.append(ids(batch))
        return out

    a = make_curriculum(kind, prompts, batch_size=4, seed=7, **kwargs)
    batches_a = run(a, range(10))

    b = make_curriculum(kind, prompts, batch_size=4, seed=7, **kwargs)
    batches_b = run(b, range(5))
    saved = json.dumps(b.state_dict())
    c = make_curriculum(kind, prompts, batch_size=4, seed=12345, **kwargs)  # another seed: the state wins
    c.load_state_dict(json.loads(saved))
    batches_b += run(c, range(5, 10))

    assert batches_b == batches_a
    assert c.stats() == a.stats()
    if kind == "replay":
        assert a.discard_pool and c.discard_pool == a.discard_pool  # the pool was exercised


def test_load_state_checks_kind_and_prompt_set():
    state = UniformCurriculum(make_prompts(5), 2, 0).state_dict()
    with pytest.raises(ValueError, match="replay"):
        ReplayCurriculum(make_prompts(5), 2, 0).load_state_dict(state)
    with pytest.raises(ValueError, match="prompt set"):
        UniformCurriculum(make_prompts(6), 2, 0).load_state_dict(state)


def test_validation():
    prompts = make_prompts(3)
    with pytest.raises(ValueError, match="unknown curriculum kind 'nope'"):
        make_curriculum("nope", prompts, 2, 0)
    with pytest.raises(ValueError, match="batch_size"):
        make_curriculum("uniform", prompts, 0, 0)
    with pytest.raises(ValueError, match="prompts"):
        make_curriculum("replay", [], 2, 0)
    with pytest.raises(ValueError, match="unique"):
        make_curriculum("uniform", prompts + prompts[:1], 2, 0)
    for band in ((0.5, 0.5), (-0.1, 0.5), (0.2, 1.1), (0.8, 0.2)):
        with pytest.raises(ValueError, match="band"):
            make_curriculum("band", prompts, 2, 0, band=band)
    with pytest.raises(ValueError, match="replay_every"):
        make_curriculum("replay", prompts, 2, 0, replay_every=0)
    with pytest.raises(ValueError, match="replay_fraction"):
        make_curriculum("replay", prompts, 2, 0, replay_fraction=1.5)
    cur = make_curriculum("uniform", prompts, 2, 0)
    with pytest.raises(ValueError, match="unknown prompt id 'zz'"):
        cur.observe(0, {"zz": (1, 2)})
    with pytest.raises(ValueError, match="n_accepted"):
        cur.observe(0, {"p00": (3, 2)})


def test_band_ema_is_the_weight_of_the_newest_observation():
    # CurriculumConfig.ema: "weight of the newest observation", so est <- (1 - ema) * est + ema * rate.
    # Every value below is a dyadic fraction: exact in binary floating point, compared with ==.
    cur = PassRateBandCurriculum(make_prompts(2), batch_size=1, seed=0, ema=0.25)
    cur.observe(0, {"p00": (4, 4)})  # the first observation sets the estimate: 1.0
    assert cur.pass_rate("p00") == 1.0
    cur.observe(1, {"p00": (0, 4)})  # 0.75 * 1.0 + 0.25 * 0.0 = 0.75
    assert cur.pass_rate("p00") == 0.75
    cur.observe(2, {"p00": (2, 4)})  # 0.75 * 0.75 + 0.25 * 0.5 = 0.5625 + 0.125 = 0.6875
    assert cur.pass_rate("p00") == 0.6875
    cur.observe(3, {"p00": (0, 0)})  # no images: no evidence, the estimate stays
    assert cur.pass_rate("p00") == 0.6875 and cur.pass_rate("p01") is None


def test_band_ema_one_keeps_only_the_newest_observation_and_resumes():
    # ema = 1: the estimate is the latest step's pass rate; next_batch / observe / state_dict work.
    prompts = make_prompts(6)

    def run(cur: Curriculum, steps: range) -> list[list[str]]:
        out = []
        for s in steps:
            batch = cur.next_batch(s)
            results = fake_results(s, batch)
            cur.observe(s, results)
            for pid, (n_acc, n_total) in results.items():
                assert cur.pass_rate(pid) == n_acc / n_total  # only the newest counts
            out.append(ids(batch))
        return out

    kwargs = {"band": (0.2, 0.8), "ema": 1.0, "explore": 0.2}
    a = make_curriculum("band", prompts, batch_size=3, seed=3, **kwargs)
    batches_a = run(a, range(8))
    b = make_curriculum("band", prompts, batch_size=3, seed=3, **kwargs)
    batches_b = run(b, range(4))
    c = make_curriculum("band", prompts, batch_size=3, seed=99, **kwargs)
    c.load_state_dict(json.loads(json.dumps(b.state_dict())))
    batches_b += run(c, range(4, 8))
    assert batches_b == batches_a and c.stats() == a.stats()
    # a prompt seen at 1.0 then at 0.0 is at 0.0, not in between
    a.observe(8, {"p01": (4, 4)})
    a.observe(9, {"p01": (0, 4)})
    assert a.pass_rate("p01") == 0.0


@pytest.mark.parametrize("ema", [0.0, -0.25, 1.5, float("nan"), float("inf")])
def test_band_ema_out_of_range_is_refused(ema):
    # ema = 0 would never move an estimate past its first observation; the code takes (0, 1].
    with pytest.raises(ValueError, match=r"ema must be in \(0, 1\]"):
        PassRateBandCurriculum(make_prompts(3), batch_size=2, seed=0, ema=ema)


def test_band_ema_one_from_the_config_builds_the_controllers_curriculum(tmp_path):
    # End to end without Ray: curriculum.ema=1 validates, and the Controller (before any role is
    # used) builds its band curriculum from it and runs it.
    from types import SimpleNamespace

    from gapray.config import load_config
    from gapray.controller import Controller
    from gapray.storage import RunDir

    cfg = load_config(["curriculum=band", "curriculum.ema=1", "curriculum.prompts_per_step=2"])
    roles = SimpleNamespace(generation=None, reward=None, learner=None)
    ctl = Controller(cfg, RunDir(tmp_path), roles, prompts=make_prompts(4))
    cur = ctl.curriculum
    assert isinstance(cur, PassRateBandCurriculum) and cur.ema == 1.0
    batch = cur.next_batch(1)
    cur.observe(1, {p.id: (1, 4) for p in batch})
    cur.observe(2, {p.id: (3, 4) for p in batch})
    assert [cur.pass_rate(p.id) for p in batch] == [0.75, 0.75]


BAND_GRID = [
    # (band_low, band_high, ema, explore): edges and just past them
    (0.2, 0.8, 1.0, 0.1),
    (0.2, 0.8, 0.0, 0.1),
    (0.2, 0.8, 1e-9, 0.1),
    (0.2, 0.8, 1.0 + 1e-9, 0.1),
    (0.2, 0.8, -0.5, 0.1),
    (0.2, 0.8, float("nan"), 0.1),
    (0.0, 1.0, 0.5, 0.0),
    (0.0, 1.0, 0.5, 1.0),
    (0.2, 0.8, 0.5, 1.5),
    (0.2, 0.8, 0.5, -0.1),
    (0.5, 0.5, 0.5, 0.1),
    (0.8, 0.2, 0.5, 0.1),
    (-0.1, 0.5, 0.5, 0.1),
    (0.2, 1.1, 0.5, 0.1),
]


@pytest.fixture(scope="module")
def band_base() -> dict:
    from gapray.config import load_config, to_dict

    return to_dict(load_config(["curriculum=band"]))


@pytest.mark.parametrize(("lo", "hi", "ema", "explore"), BAND_GRID)
def test_config_validation_accepts_exactly_what_the_band_curriculum_takes(band_base, lo, hi, ema, explore):
    """Config validation and the constructor agree on every value: nothing that validates can
    raise after the actors started, and nothing the code can run is refused. A refusal names the key."""
    from gapray.config import ConfigError, from_dict
    from gapray.controller import _curriculum_kwargs

    data = {k: dict(v) for k, v in band_base.items()}
    data["curriculum"].update(band_low=lo, band_high=hi, ema=ema, explore=explore)
    try:
        PassRateBandCurriculum(make_prompts(3), 2, 0, band=(lo, hi), ema=ema, explore=explore)
        code_error = None
    except ValueError as e:
        code_error = str(e)
    try:
        cfg = from_dict(data)
        config_error = None
    except ConfigError as e:
        config_error = e
    assert (code_error is None) == (config_error is None), (code_error, config_error)
    if config_error is None:
        kwargs = _curriculum_kwargs(cfg.curriculum)  # what the controller passes
        assert kwargs == {"band": (lo, hi), "ema": ema, "explore": explore}
    else:
        # the constructor's message names its argument; the config error names the dotted key
        arg = code_error.split()[0]
        keys = {"band": {"curriculum.band_low", "curriculum.band_high"}}.get(arg, {f"curriculum.{arg}"})
        assert set(config_error.keys) <= keys and config_error.keys, (config_error.keys, code_error)
        assert config_error.keys[0] in str(config_error)
