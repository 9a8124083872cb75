"""The toy Show-o recipe (`gapray toy pretrain --family showo`, gapray/toy/pretrain_showo_run.py):
its vocabulary covers the toy world, the mask-prediction batches follow the adapter's schedule,
bad flags are argparse errors, and a smoke run of a few steps per stage trains both stages,
writes a Show-o checkpoint that `load_model("toy_showo")` loads and runs, and resumes from
state.pt after an interruption. Kept to a few seconds: the suite's time budget is nearly spent."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

import gapray.models.showo.loading as showo_loading
from gapray.models import CheckpointError, load_model
from gapray.models.showo import ShowoAdapter, masked_count
from gapray.toy import pretrain_showo_run
from gapray.toy.pretrain import main as pretrain_main
from gapray.toy.pretrain_lm import by_tag, draw_prompts, gen_batch
from gapray.toy.pretrain_showo import mask_batch, mask_loss, und_batch, und_losses
from gapray.toy.pretrain_showo_run import toy_showo
from gapray.toy.world import colour_caption, make_splits


@pytest.fixture(scope="module")
def adapter():
    torch.set_num_threads(2)
    return toy_showo(seed=0)


def test_vocabulary_covers_every_prompt_caption_and_the_judge_prompt(adapter):
    tok, unk = adapter.tokenizer, adapter.tokenizer.convert_tokens_to_ids("<unk>")
    rng = np.random.default_rng(0)
    splits = make_splits(0)
    texts = [p.text for ps in splits.values() for p in ps] + [colour_caption(rng, 0).text for _ in range(200)]
    judged = [adapter.judge_template.format(question=adapter.question.format(prompt=t)) for t in texts]
    ids = tok(judged, add_special_tokens=False)["input_ids"]
    assert not [t for t, row in zip(judged, ids, strict=True) if unk in row]
    # the text part holds the longest prompt whole: <|t2i|> <bos> words <eos>, no truncation
    longest = max(texts, key=lambda t: len(tok(t, add_special_tokens=False)["input_ids"]))
    part = adapter._text_part(longest)
    assert part[0] == adapter.layout.pad_id and part[-1] == adapter.eos_id, longest


def test_fp32_weights_fit_the_16_mb_a_shipped_toy_model_may_take(adapter):
    state = adapter.model.state_dict()
    assert sum(t.numel() * 4 for t in state.values()) <= 16 * 2**20


def test_mask_batch_draws_ratios_from_the_schedule_and_drops_prompts(adapter):
    rng = np.random.default_rng(3)
    tokens = torch.randint(0, adapter.codebook_size, (64, 16))
    texts = [f"a red circle {i}" for i in range(64)]
    b = mask_batch(adapter, texts, tokens, rng, cfg_dropout=0.5)
    n = b.masked.sum(-1)
    assert n.min() >= 1 and n.max() <= 16 and len(set(n.tolist())) > 4  # ratios vary row to row
    lay = adapter.layout
    assert (b.image_ids[b.masked] == lay.mask_id).all()
    assert (b.image_ids[~b.masked] == tokens[~b.masked] + lay.code_offset).all()
    dropped = [t == "" for t in b.texts]
    assert 10 < sum(dropped) < 54 and all(
        t == s for t, s, d in zip(b.texts, texts, dropped, strict=True) if not d
    )
    # same draws as the schedule: t ~ U(0, 1) first, then the counts
    t = np.random.default_rng(3).random(64)
    ratios = torch.cos(torch.from_numpy(t) * np.pi / 2)
    assert n.tolist() == [masked_count(16, float(r)) for r in ratios]
    assert mask_batch(adapter, texts, tokens, np.random.default_rng(0), 0.0).texts == texts


def test_understanding_batch_is_read_on_the_judges_path(adapter):
    pool = by_tag(make_splits(0)["train"])
    rng = np.random.default_rng(1)
    ub = und_batch(adapter, draw_prompts(pool, rng, 6, {}), rng, 0.3, labels="exact", patch_position=True)
    assert ub.codes.shape == (6, 16) and ub.patch_targets.shape == (6, 16, 4)
    with torch.no_grad():
        _, _, p_yes = und_losses(adapter, ub)
        judged = adapter._yes_no(ub.codes, ub.texts)  # the score `judge` returns
    assert torch.allclose(p_yes, judged, atol=1e-5)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--family", "showo", "--judge-template", "<image_placeholder> {question}"], "Janus flag"),
        (["--mask-steps", "4"], "Show-o flag"),
        (["--family", "showo", "--mask-steps", "0"], "--mask-steps must be >= 1"),
        (["--family", "chameleon"], "invalid choice"),
    ],
)
def test_bad_flags_are_argparse_errors(argv, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        pretrain_main(["--out", str(tmp_path), *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_missing_toy_showo_checkpoint_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(showo_loading, "TOY_CHECKPOINT", tmp_path / "nothing")
    with pytest.raises(CheckpointError, match="gapray toy pretrain --family showo"):
        load_model("toy_showo")


def _fixed_losses(adapter: ShowoAdapter) -> tuple[float, float]:
    """(mask-prediction loss, answer loss) on fixed batches, no CFG dropout."""
    rng = np.random.default_rng(11)
    pool = by_tag(make_splits(0)["train"])
    with torch.no_grad():
        texts, tokens = gen_batch(draw_prompts(pool, rng, 16, {}), rng)
        gen, _ = mask_loss(adapter, mask_batch(adapter, texts, tokens, rng, 0.0))
        ub = und_batch(adapter, draw_prompts(pool, rng, 16, {}), rng, 0.3, labels="exact")
        _, answer, _ = und_losses(adapter, ub)
    return gen.item(), answer.item()


def test_smoke_pretrain_trains_both_stages_saves_loads_and_resumes(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    args = ["--family", "showo", "--out", str(out), "--vq-steps", "6", "--lm-steps", "6", "--batch", "8"]
    args += ["--lr", "1e-2", "--log-every", "3", "--save-every", "0", "--mask-steps", "3", "--threads", "2"]
    monkeypatch.setattr(pretrain_showo_run, "ROUND_TRIP_SCENES", 16)

    # Interrupt the LM stage at its 4th step: state.pt (saved every step) holds step 3.
    calls = {"n": 0}
    real = pretrain_showo_run.mask_loss

    def interrupted(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(pretrain_showo_run, "mask_loss", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pretrain_main(args)
    first = capsys.readouterr().out
    saved = torch.load(out / "state.pt", weights_only=False)
    assert saved["progress"]["stage"] == "lm" and saved["progress"]["step"] == 3
    assert not (out / "checkpoint").exists()

    monkeypatch.setattr(pretrain_showo_run, "mask_loss", real)
    assert pretrain_main(args) == 0
    log = capsys.readouterr().out
    assert "resumed" in log and "stage lm step 3" in log and "[lm 6/6]" in log and "[lfq" not in log
    rec = [float(x) for x in re.findall(r"\[lfq [36]/9\] \d+s rec ([\d.]+)", first)]
    assert len(rec) == 2 and rec[1] < rec[0], first  # the tokenizer's reconstruction falls
    assert "[lfq 9/9]" in first and "(decoder polish)" in first  # then 3 polish steps

    ckpt = out / "checkpoint"
    settings = json.loads((ckpt / "gapray_adapter.json").read_text())
    assert (settings["cfg_scale"], settings["temperature"], settings["steps"]) == (3.0, 1.0, 3)
    monkeypatch.setattr(showo_loading, "TOY_CHECKPOINT", ckpt)
    model = load_model("toy_showo")
    assert isinstance(model, ShowoAdapter) and model.extra_settings["cfg_scale"] == 3.0

    # Both stages changed their parameters; the Show-o stage lowered both of its losses.
    init = toy_showo(seed=0)
    trained = model.model.state_dict()
    for prefix in ("vq_model.", "showo."):
        assert any(
            not torch.equal(v, trained[k]) for k, v in init.model.state_dict().items() if k.startswith(prefix)
        ), prefix
    gen0, ans0 = _fixed_losses(init)
    gen1, ans1 = _fixed_losses(model)
    assert gen1 < gen0 and ans1 < ans0, (gen0, gen1, ans0, ans1)

    tokens = model.generate(["two red circles", "a blue heart"], n=2, cfg_scale=3.0, seed=0)
    assert tokens.shape == (4, 16)
    verdict = model.judge(model.decode(tokens), ["two red circles"] * 2 + ["a blue heart"] * 2)
    assert verdict.p_yes.shape == (4,) and ((verdict.p_yes >= 0) & (verdict.p_yes <= 1)).all()


def test_the_janus_recipe_refuses_a_show_o_state(tmp_path, capsys):
    # Either driver refuses the other family's state.pt instead of failing on its weights.
    (tmp_path / "run").mkdir()
    torch.save({"args": {"family": "showo"}}, tmp_path / "run" / "state.pt")
    with pytest.raises(SystemExit):
        pretrain_main(["--out", str(tmp_path / "run"), "--vq-steps", "1", "--lm-steps", "1"])
    assert "is a showo run; use another --out or --fresh" in capsys.readouterr().err


def test_the_lfq_decoder_loss_weights_the_pixels_an_object_covers():
    """The polish is half the LFQ steps; one object on an empty scene: its pixels weigh
    FOREGROUND_WEIGHT, every other pixel 1, and the object covers part of its own cell only."""
    from gapray.toy.pretrain_lfq import FOREGROUND_WEIGHT, foreground_weights, polish_steps
    from gapray.toy.pretrain_vq import to_pixels
    from gapray.toy.world import Scene, ToyObject

    empty, one = to_pixels([Scene(), Scene((ToyObject("circle", "red", 1, 2),))])
    assert [polish_steps(n) for n in (1500, 6, 1)] == [750, 3, 0]
    w = foreground_weights(torch.stack([empty, one]))
    assert w.shape == (2, 1, 32, 32)
    assert torch.all(w[0] == 1.0)  # the empty scene: nothing covered
    covered = (w[1, 0] == FOREGROUND_WEIGHT).nonzero()
    assert torch.all(w[1, 0][w[1, 0] != FOREGROUND_WEIGHT] == 1.0)
    rows, cols = covered[:, 0], covered[:, 1]
    assert rows.min() >= 8 and rows.max() < 16 and cols.min() >= 16 and cols.max() < 24  # cell (1, 2)
    differs = (one - empty).abs().sum(0) > 1e-3
    assert len(covered) == int(differs.sum()) > 0
