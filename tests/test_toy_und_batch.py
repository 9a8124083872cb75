"""The toy recipe's batch options: VQ round-trip pixels and position-aware patch targets for
understanding, colour captions mixed into generation, and the recipe flags that choose them
(gapray/toy/pretrain_lm.py, pretrain.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gapray.toy.pretrain import MODEL_CONFIG
from gapray.toy.pretrain import main as pretrain_main
from gapray.toy.pretrain_lm import (
    by_tag,
    draw_prompts,
    gen_prompts,
    patch_words,
    question_scene,
    und_batch,
    und_losses,
)
from gapray.toy.pretrain_vq import cell_codes, to_pixels, vq_round_trip
from gapray.toy.world import Scene, ToyObject, make_splits


@pytest.fixture(scope="module")
def adapter():
    from gapray.models.tiny import tiny_janus

    return tiny_janus(seed=0, **MODEL_CONFIG)


def test_patch_words_name_row_and_column_when_asked(adapter):
    vocab = adapter.tokenizer.get_vocab()
    scene = Scene((ToyObject("heart", "blue", 1, 2),))
    plain = patch_words(adapter, [scene])
    assert plain.shape == (1, 16, 2)
    pos = patch_words(adapter, [scene], position=True)
    assert pos.shape == (1, 16, 4)
    assert pos[0, 6].tolist() == [vocab["blue"], vocab["heart"], vocab["two"], vocab["three"]]
    assert pos[0, 0].tolist() == [vocab["no"], vocab["no"], vocab["one"], vocab["one"]]
    assert pos[0, 15].tolist() == [vocab["no"], vocab["no"], vocab["four"], vocab["four"]]
    assert pos[0, 11].tolist()[2:] == [vocab["three"], vocab["four"]]  # row 2, column 3
    assert torch.equal(pos[..., :2], plain)


def test_round_trip_pixels_are_what_the_judge_sees_on_decoded_tokens(adapter):
    scenes = [
        Scene((ToyObject("circle", "red", 0, 0), ToyObject("moon", "green", 3, 1))),
        Scene(()),
    ]
    pix = vq_round_trip(adapter, scenes)  # (2, 3, 32, 32)
    images = adapter.decode(cell_codes(scenes))  # the run's path: tokens -> PIL images
    seen = adapter.processor(text=["<image_placeholder>"] * 2, images=images, return_tensors="pt")
    torch.testing.assert_close(pix, seen["pixel_values"].float(), atol=1e-6, rtol=0)
    assert not torch.allclose(pix, to_pixels(scenes))  # an untrained decoder is not the renderer


def test_und_batch_round_trip_share(adapter):
    prompts = make_splits(0)["train"][:12]

    def batch(share, seed=3):
        rng = np.random.default_rng(seed)
        return und_batch(adapter, prompts, rng, 0.3, labels="exact", round_trip=share), rng

    rendered, rng0 = batch(0.0)
    # round_trip=0 draws nothing beyond the scenes: the data stream of the recipes before it.
    ref = np.random.default_rng(3)
    scenes = [question_scene(p, ref, 0.3, labels="exact")[0] for p in prompts]
    assert rng0.bit_generator.state == ref.bit_generator.state
    torch.testing.assert_close(rendered.pixel_values, to_pixels(scenes))
    decoded, _ = batch(1.0)
    torch.testing.assert_close(decoded.pixel_values, vq_round_trip(adapter, scenes))
    assert torch.equal(decoded.labels, rendered.labels)
    assert torch.equal(decoded.patch_targets, rendered.patch_targets)
    half, _ = batch(0.5)
    same = [torch.equal(half.pixel_values[i], rendered.pixel_values[i]) for i in range(len(prompts))]
    assert 0 < sum(same) < len(prompts)  # some rows rendered, some decoded
    with pytest.raises(ValueError, match="round_trip must lie in"):
        batch(1.5)


def test_und_batch_position_targets_add_their_own_mean(adapter):
    prompts = make_splits(0)["train"][:4]
    b = und_batch(adapter, prompts, np.random.default_rng(0), 0.3, labels="exact", patch_position=True)
    assert b.patch_targets.shape == (4, 16, 4)
    plain = und_batch(adapter, prompts, np.random.default_rng(0), 0.3, labels="exact")
    assert torch.equal(plain.patch_targets, b.patch_targets[..., :2])
    with torch.no_grad():
        p4, a4, y4 = und_losses(adapter, b)
        p2, a2, y2 = und_losses(adapter, plain)
        # The position words' own mean NLL, from the logits directly.
        out = adapter.model(
            input_ids=b.input_ids,
            attention_mask=b.attention_mask,
            position_ids=adapter._positions(b.attention_mask),
            pixel_values=b.pixel_values,
        )
        logp = torch.log_softmax(out.logits.float(), -1)[b.input_ids == adapter.model.config.image_token_id]
        pos = -logp.view(4, 16, -1).gather(-1, b.patch_targets[..., 2:]).mean()
    # Colour/shape naming keeps its weight: the position term is added, not averaged in.
    torch.testing.assert_close(p4, p2 + pos)
    torch.testing.assert_close(a4, a2)
    torch.testing.assert_close(y4, y2)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--round-trip", "1.5"], "--round-trip must lie in"),
        (["--gen-captions", "-0.1"], "--gen-captions must lie in"),
        (["--judge-template", "<|User|>: {question}"], "must contain <image_placeholder>"),
        (["--judge-template", "<image_placeholder> asks"], "must contain {question}"),
    ],
)
def test_recipe_flags_refused_before_training(tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit):
        pretrain_main(["--out", str(tmp_path / "run"), *flags])
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_gen_prompts_mix_captions_in_and_leave_the_old_stream_alone():
    pool = by_tag(make_splits(0)["train"])
    train_texts = {p.text for ps in pool.values() for p in ps}
    # Share 0: exactly draw_prompts' draws, and the generator left where draw_prompts leaves it.
    a, b = np.random.default_rng(4), np.random.default_rng(4)
    assert gen_prompts(pool, a, 32, 0.0) == draw_prompts(pool, b, 32, {})
    assert a.random() == b.random()
    # Share 1: captions only; share 0.5: both kinds, about half each over many rows.
    only = gen_prompts(pool, np.random.default_rng(5), 16, 1.0)
    assert all(p.id == "caption" and p.text not in train_texts for p in only)
    mixed = [p for seed in range(20) for p in gen_prompts(pool, np.random.default_rng(seed), 32, 0.5)]
    n_cap = sum(p.id == "caption" for p in mixed)
    assert len(mixed) == 640 and 0.4 < n_cap / 640 < 0.6
    assert all(p.text in train_texts for p in mixed if p.id != "caption")
    with pytest.raises(ValueError, match="caption_share must lie in"):
        gen_prompts(pool, np.random.default_rng(0), 4, 1.5)
