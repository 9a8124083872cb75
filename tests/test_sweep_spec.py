"""gapray/sweep/spec.py: hydra multirun syntax and sweep YAMLs -> axes, shared overrides and
Tune settings; grid points, the points validated before anything starts, each trial's
overrides and run directory name; clear errors naming the key. Pure: no Ray.

    PYTHONPATH=. python -m pytest tests/test_sweep_spec.py -q
"""

from __future__ import annotations

import pytest

from gapray.config import ConfigError
from gapray.sweep.spec import (
    Axis,
    check_points,
    from_dict,
    grid_points,
    load_yaml,
    parse_args,
    parse_axis,
    split_top,
    to_dict,
    trial_overrides,
    trial_slug,
)


def test_multirun_syntax_makes_grid_axes_and_fixed_overrides():
    spec = parse_args(["learner.beta=0.05,0.1,0.2", "run.seed=0,1,2", "model=tiny", "run.trackers=[a,b]"])
    assert spec.axes == [
        Axis("learner.beta", "grid", [0.05, 0.1, 0.2]),
        Axis("run.seed", "grid", [0, 1, 2]),
    ]
    assert spec.overrides == ["model=tiny", "run.trackers=[a,b]"]  # a list value is one value
    points = grid_points(spec)
    assert len(points) == 9 and points[0] == {"learner.beta": 0.05, "run.seed": 0}
    assert points[-1] == {"learner.beta": 0.2, "run.seed": 2}


def test_random_axes_and_ranges():
    assert parse_axis("run.seed", "range(3)") == Axis("run.seed", "grid", [0, 1, 2])
    assert parse_axis("run.seed", "range(1,7,3)") == Axis("run.seed", "grid", [1, 4])
    assert parse_axis("learner", "choice(dpo,dpo_nll)") == Axis("learner", "choice", ["dpo", "dpo_nll"])
    assert parse_axis("learner.beta", "interval(0.05, 0.2)") == Axis("learner.beta", "uniform", [0.05, 0.2])
    assert parse_axis("learner.lr", "tag(log, interval(1e-5, 1e-3))") == Axis(
        "learner.lr", "loguniform", [1e-5, 1e-3]
    )
    assert parse_axis("model", "tiny") is None
    assert split_top("[a,b],c,'x,y'") == ["[a,b]", "c", "'x,y'"]
    with pytest.raises(ConfigError, match=r"learner.lr.*low > 0"):
        parse_axis("learner.lr", "tag(log,interval(0,1))")
    with pytest.raises(ConfigError, match=r"learner.beta.*two numbers"):
        parse_axis("learner.beta", "interval(1)")


def test_check_points_cover_every_grid_point_and_each_random_bound():
    spec = parse_args(["run.seed=0,1", "learner.beta=interval(0.05,0.2)", "learner=choice(dpo,dpo_nll)"])
    pts = check_points(spec)
    # 2 grid points at the low bound / first choice, then the high bound and the second choice
    assert pts == [
        {"run.seed": 0, "learner.beta": 0.05, "learner": "dpo"},
        {"run.seed": 1, "learner.beta": 0.05, "learner": "dpo"},
        {"run.seed": 0, "learner.beta": 0.2, "learner": "dpo"},
        {"run.seed": 0, "learner.beta": 0.05, "learner": "dpo_nll"},
    ]


def test_trial_overrides_slug_and_pairs_follow_n():
    spec = parse_args(["generation.images_per_prompt=4,8", "model=tiny"])
    vals = {"generation.images_per_prompt": 8}
    assert trial_overrides(spec, vals) == [
        "model=tiny",
        "generation.images_per_prompt=8",
        "run.progress=false",
    ]
    follow = parse_args(["generation.images_per_prompt=4,8", "sweep.pairs_follow_n=true"])
    assert trial_overrides(follow, vals)[-2:] == ["pairs.pairs_per_prompt=4", "run.progress=false"]
    assert trial_slug({"learner.beta": 0.1, "run.seed": 0}) == "learner.beta=0.1,run.seed=0"
    assert trial_slug({"curriculum.prompts": "a/b c.txt"}) == "curriculum.prompts=a_b_c.txt"
    assert trial_slug({"x": 1}, "abc_00001") == "x=1-abc_00001"
    long = trial_slug({"k" * 200: 1})
    assert len(long) == 91 and long[:80] == "k" * 80


def test_options_yaml_and_round_trip(tmp_path):
    f = tmp_path / "s.yaml"
    f.write_text(
        "name: beta-seeds\noverrides: [model=tiny]\naxes:\n  learner.beta: [0.05, 0.1]\n  run.seed: '0,1'\n"
        "max_failures: 2\n"
    )
    spec = parse_args([f"sweep={f}", "sweep.max_concurrent=3", "run.steps=2"])
    assert spec.name == "beta-seeds" and spec.max_failures == 2 and spec.max_concurrent == 3
    assert spec.overrides == ["model=tiny", "run.steps=2"]
    assert [a.key for a in spec.axes] == ["learner.beta", "run.seed"] and spec.axes[1].values == [0, 1]
    assert from_dict(to_dict(spec)) == spec
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("argv", "key"),
    [
        (["run.seed=0,1", "run.out_dir=x"], "run.out_dir"),
        (["run.seed=0,1", "resume=x,y"], "resume"),
        (["model=tiny"], "axes"),
        (["run.seed=0,0"], "run.seed"),
        (["run.seed=0,1", "sweep.num_samples=3"], "sweep.num_samples"),
        (["run.seed=0,1", "sweep.max_failure=1"], "sweep.max_failure"),
        (["run.seed=0,1", "sweep.max_failures=x"], "sweep.max_failures"),
        (
            ["generation.images_per_prompt=4,8", "pairs.pairs_per_prompt=2", "sweep.pairs_follow_n=true"],
            "pairs.pairs_per_prompt",
        ),
        (["run.seed=0,1", "sweep.pairs_follow_n=true"], "sweep.pairs_follow_n"),
        (["run.seed"], "run.seed"),
    ],
)
def test_bad_sweeps_name_the_key(argv, key):
    with pytest.raises(ConfigError) as err:
        parse_args(argv)
    assert key in err.value.keys and key in str(err.value)


def test_every_trial_config_is_validated_before_anything_starts():
    from gapray.sweep.runner import check_trials

    spec = parse_args(["model=tiny", "learner.beta=0.1,-1"])
    with pytest.raises(ConfigError) as err:
        check_trials(spec)
    assert "learner.beta=-1" in str(err.value) and "learner.beta" in err.value.keys


def test_a_trial_reserves_its_roles_and_places_them_on_its_own_bundles():
    """The trial's PlacementGroupFactory is an empty head bundle (the trial's driver) plus one
    bundle per actor; inside the trial each actor gets its bundle of the trial's group, in the
    same order, and no group of its own."""
    from gapray.config import load_config
    from gapray.placement import place_roles, role_bundles
    from gapray.sweep.spec import to_dict as spec_dict
    from gapray.sweep.trial import trial_resources

    spec = parse_args(["model=tiny", "run.seed=0,1", "generation.num_workers=2", "learner.gpus_per_rank=1"])
    pgf = trial_resources({"values": {"run.seed": 0}, "spec": spec_dict(spec), "sweep_dir": "/x"})
    assert pgf.head_bundle_is_empty and pgf.strategy == "PACK"
    gen, rew, lrn = {"CPU": 1.0}, {"CPU": 0.5}, {"CPU": 0.5, "GPU": 1.0}
    assert pgf.bundles == [gen, gen, rew, lrn]
    cfg = load_config(["model=tiny", "generation.num_workers=2", "learner.gpus_per_rank=1"])
    assert [b for _, b in role_bundles(cfg)] == pgf.bundles
    trial_group = object()  # stands for the trial's placement group: nothing is created
    placed = place_roles(cfg, within=(trial_group, 0))
    assert placed == {
        "generation": [(trial_group, 0), (trial_group, 1)],
        "reward": [(trial_group, 2)],
        "learner": [(trial_group, 3)],
    }
