"""Tests for gapray/algos/dpo.py: each loss against values worked out by hand, label smoothing,
the NLL term, reward metrics, gradients at the start of training, and input validation.

    PYTHONPATH=. python -m pytest tests/test_dpo.py -q
"""

from __future__ import annotations

import math

import pytest
import torch

from gapray.algos.dpo import dpo_objective, preference_loss, sft_loss


def t(*xs: float, grad: bool = False) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64, requires_grad=grad)


# One pair with h = 1.5: chosen log-ratio (-10) - (-11) = 1, rejected log-ratio (-20) - (-19.5) = -0.5,
# h = 1 - (-0.5) = 1.5.
PC, PR, RC, RR = t(-10.0), t(-20.0), t(-11.0), t(-19.5)


def test_sigmoid_by_hand():
    # beta h = 0.1 * 1.5 = 0.15; -log sigmoid(0.15) = log(1 + e^-0.15) = log(1 + 0.8607080) = log(1.8607080)
    #        = 0.6209570...
    losses, rc, rr = preference_loss(PC, PR, RC, RR, beta=0.1)
    assert losses.item() == pytest.approx(0.6209570478, abs=1e-9)
    assert losses.item() == pytest.approx(math.log(1 + math.exp(-0.15)), abs=1e-12)
    # rewards: beta * log-ratio = 0.1 * 1 and 0.1 * (-0.5)
    assert rc.item() == pytest.approx(0.1) and rr.item() == pytest.approx(-0.05)


def test_sigmoid_label_smoothing_by_hand():
    # log sigmoid(-z) = log sigmoid(z) - z, so
    # -(1 - eps) log s(z) - eps log s(-z) = -log s(z) + eps z = 0.6209570 + 0.1 * 0.15 = 0.6359570
    losses, _, _ = preference_loss(PC, PR, RC, RR, beta=0.1, label_smoothing=0.1)
    assert losses.item() == pytest.approx(0.6359570478, abs=1e-9)


def test_ipo_by_hand():
    # (h - 1/(2 beta))^2 = (1.5 - 1/0.2)^2 = (1.5 - 5)^2 = 12.25
    losses, _, _ = preference_loss(PC, PR, RC, RR, beta=0.1, loss_type="ipo")
    assert losses.item() == pytest.approx(12.25)


def test_hinge_by_hand():
    # relu(1 - beta h) = relu(1 - 0.15) = 0.85; with beta = 1: relu(1 - 1.5) = 0
    losses, _, _ = preference_loss(PC, PR, RC, RR, beta=0.1, loss_type="hinge")
    assert losses.item() == pytest.approx(0.85)
    losses, _, _ = preference_loss(PC, PR, RC, RR, beta=1.0, loss_type="hinge")
    assert losses.item() == 0.0


def test_per_pair_shape_and_sign():
    # Pair 0: h = +2, pair 1: h = -2 (rejected got likelier); beta 0.5 -> beta h = +1 / -1.
    # -log s(1) = log(1 + e^-1) = 0.3132617, -log s(-1) = log(1 + e) = 1.3132617
    pc, pr = t(0.0, 0.0), t(0.0, 0.0)
    rc, rr = t(-2.0, 2.0), t(0.0, 0.0)
    losses, _, _ = preference_loss(pc, pr, rc, rr, beta=0.5)
    assert losses.shape == (2,)
    assert losses.tolist() == pytest.approx([0.3132616875, 1.3132616875], abs=1e-9)


def test_start_of_training_log2_and_gradient():
    # policy == reference -> h = 0 -> loss = -log(1/2) = log 2.
    # d/d pc [-log s(beta h)] = -beta (1 - s(0)) = -beta/2; d/d pr = +beta/2.
    beta = 0.1
    pc, pr = t(-5.0, -7.0, grad=True), t(-6.0, -3.0, grad=True)
    losses, _, _ = preference_loss(pc, pr, pc.detach(), pr.detach(), beta=beta)
    assert losses.tolist() == pytest.approx([math.log(2)] * 2)
    losses.sum().backward()
    assert pc.grad.tolist() == pytest.approx([-beta / 2] * 2)
    assert pr.grad.tolist() == pytest.approx([beta / 2] * 2)


def test_ipo_gradient_nonzero_at_zero():
    # d/dh (h - 1/(2 beta))^2 = 2 (h - 5) = -10 at h = 0, beta = 0.1: the pull exists from the first step.
    pc, pr = t(-5.0, grad=True), t(-6.0, grad=True)
    losses, _, _ = preference_loss(pc, pr, pc.detach(), pr.detach(), beta=0.1, loss_type="ipo")
    assert losses.item() == pytest.approx(25.0)
    losses.sum().backward()
    assert pc.grad.item() == pytest.approx(-10.0) and pr.grad.item() == pytest.approx(10.0)


def test_objective_nll_term_and_metrics():
    # Two pairs, beta 0.5:
    #   pair 0: chosen log-ratio 1, rejected -1 -> h = 2, beta h = 1, loss log(1 + e^-1) = 0.3132617
    #   pair 1: chosen log-ratio -1, rejected 1 -> h = -2, beta h = -1, loss log(1 + e) = 1.3132617
    # pref_loss = mean = 0.8132617; nll = mean(2.0, 4.0) = 3.0; loss = 0.8132617 + 0.1 * 3 = 1.1132617
    pc, pr = t(0.0, 0.0), t(0.0, 0.0)
    rc, rr = t(-1.0, 1.0), t(1.0, -1.0)
    nll = t(2.0, 4.0)
    loss, m = dpo_objective(pc, pr, rc, rr, beta=0.5, loss_type="sigmoid", nll_weight=0.1, chosen_nll=nll)
    assert loss.dim() == 0
    assert m["pref_loss"] == pytest.approx(0.8132616875)
    assert m["nll"] == pytest.approx(3.0)
    assert m["loss"] == pytest.approx(1.1132616875) == loss.item()
    # rewards: chosen 0.5 * (1, -1) -> mean 0; rejected 0.5 * (-1, 1) -> mean 0; margins (1, -1) -> mean 0
    assert m["reward_chosen"] == pytest.approx(0.0) and m["reward_rejected"] == pytest.approx(0.0)
    assert m["reward_margin"] == pytest.approx(0.0)
    assert m["reward_accuracy"] == pytest.approx(0.5)
    assert set(m) == {
        "loss",
        "pref_loss",
        "nll",
        "reward_chosen",
        "reward_rejected",
        "reward_margin",
        "reward_accuracy",
    }
    assert all(isinstance(v, float) for v in m.values())


def test_objective_nll_gradient_flows():
    pc = t(-3.0, grad=True)
    nll = -pc / 2  # pretend 2 image tokens, so the per-token NLL is -pc / 2
    loss, _ = dpo_objective(
        pc, t(-3.0), pc.detach(), t(-3.0), beta=0.1, loss_type="sigmoid", nll_weight=1.0, chosen_nll=nll
    )
    loss.backward()
    # -beta/2 from the DPO term, -1/2 from the NLL term
    assert pc.grad.item() == pytest.approx(-0.05 - 0.5)


def test_objective_without_nll():
    _, m = dpo_objective(PC, PR, RC, RR, beta=0.1, loss_type="sigmoid")
    assert m["nll"] == 0.0 and m["loss"] == pytest.approx(m["pref_loss"])
    assert m["reward_accuracy"] == 1.0 and m["reward_margin"] == pytest.approx(0.15)


def test_sft_loss():
    # -mean(-1, -2, -3, -6) = 3
    logps = torch.tensor([[-1.0, -2.0], [-3.0, -6.0]])
    assert sft_loss(logps).item() == pytest.approx(3.0)
    # masked: only -1 and -3 count -> 2
    assert sft_loss(logps, torch.tensor([[1, 0], [1, 0]])).item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="per_token_logps"):
        sft_loss(torch.zeros(3))


def test_validation():
    with pytest.raises(ValueError, match="loss_type"):
        preference_loss(PC, PR, RC, RR, beta=0.1, loss_type="kto")
    for beta in (0.0, -1.0):
        with pytest.raises(ValueError, match="beta"):
            preference_loss(PC, PR, RC, RR, beta=beta)
    with pytest.raises(ValueError, match="label_smoothing"):
        preference_loss(PC, PR, RC, RR, beta=0.1, label_smoothing=0.5)
    with pytest.raises(ValueError, match="label_smoothing"):
        preference_loss(PC, PR, RC, RR, beta=0.1, loss_type="ipo", label_smoothing=0.1)
    with pytest.raises(ValueError, match="shape"):
        preference_loss(t(1.0, 2.0), PR, RC, RR, beta=0.1)
    with pytest.raises(ValueError, match="chosen_nll"):
        dpo_objective(PC, PR, RC, RR, beta=0.1, loss_type="sigmoid", nll_weight=0.5)
    with pytest.raises(ValueError, match="nll_weight"):
        dpo_objective(PC, PR, RC, RR, beta=0.1, loss_type="sigmoid", nll_weight=-1.0)


# ---- beta per image token (learner.beta_per_token) ----------------------------------------------


def test_per_token_by_hand():
    # The pair above, h = 1.5 summed over T = 3 tokens -> per token h / 3 = 0.5; beta 0.2:
    # beta h / T = 0.1, -log sigmoid(0.1) = log(1 + e^-0.1) = log(1.9048374) = 0.6443967
    losses, rc, rr = preference_loss(PC, PR, RC, RR, beta=0.2, num_tokens=3)
    assert losses.item() == pytest.approx(0.6443966600, abs=1e-9)
    # rewards per token: 0.2 * 1/3 and 0.2 * (-0.5)/3
    assert rc.item() == pytest.approx(0.2 / 3) and rr.item() == pytest.approx(-0.1 / 3)
    # ipo per token: (0.5 - 1/(2 * 0.2))^2 = (0.5 - 2.5)^2 = 4; hinge: relu(1 - 0.2 * 0.5) = 0.9
    assert preference_loss(PC, PR, RC, RR, beta=0.2, loss_type="ipo", num_tokens=3)[
        0
    ].item() == pytest.approx(4.0)
    hinge = preference_loss(PC, PR, RC, RR, beta=0.2, loss_type="hinge", num_tokens=3)[0]
    assert hinge.item() == pytest.approx(0.9)
    # num_tokens=1 is the summed form
    assert preference_loss(PC, PR, RC, RR, beta=0.1, num_tokens=1)[0].item() == pytest.approx(0.6209570478)
    with pytest.raises(ValueError, match="num_tokens"):
        preference_loss(PC, PR, RC, RR, beta=0.1, num_tokens=0)


def _image_tokens() -> dict[str, int]:
    """Image tokens per image of the toy model (its shipped config) and of janus_pro_shape."""
    import json

    from gapray.models import TOY_CHECKPOINT
    from gapray.models.shapes import NUM_IMAGE_TOKENS

    toy = json.loads((TOY_CHECKPOINT / "config.json").read_text())["vision_config"]["num_image_tokens"]
    return {"toy": int(toy), "janus_pro_shape": int(NUM_IMAGE_TOKENS)}


def test_tuned_toy_beta_means_the_same_on_janus_pro_shape_per_token():
    """Pairs with the same per-token log-ratio (chosen +0.02, rejected -0.03 nats per token
    against the reference) on the toy model's 16 tokens and janus_pro_shape's 576: with
    beta_per_token the toy run's tuned beta (configs/learner/dpo.yaml) gives one loss; summed,
    the larger image's loss is far smaller (its beta is effectively 36 times larger)."""
    from gapray.config import load_config

    beta = load_config([]).learner.beta  # the toy-tuned beta, 0.1
    sizes = _image_tokens()
    assert sizes == {"toy": 16, "janus_pro_shape": 576}
    per_token = {}
    summed = {}
    for name, T in sizes.items():
        ref_c = torch.full((2,), -5.0 * T, dtype=torch.float64)  # summed reference log-probs
        ref_r = torch.full((2,), -6.0 * T, dtype=torch.float64)
        pol_c, pol_r = ref_c + 0.02 * T, ref_r - 0.03 * T  # the same per-token log-ratios
        per_token[name] = dpo_objective(pol_c, pol_r, ref_c, ref_r, beta=beta, num_tokens=T)[1]
        summed[name] = dpo_objective(pol_c, pol_r, ref_c, ref_r, beta=beta)[1]
    # beta * (0.02 + 0.03) = 0.005 -> -log sigmoid(0.005) = log(1 + e^-0.005) = 0.6906497
    want = math.log(1 + math.exp(-beta * 0.05))
    assert per_token["toy"]["loss"] == pytest.approx(want, abs=1e-12)
    assert per_token["janus_pro_shape"]["loss"] == pytest.approx(want, abs=1e-12)
    assert per_token["toy"]["reward_margin"] == pytest.approx(per_token["janus_pro_shape"]["reward_margin"])
    # summed: beta h = 0.1 * 0.05 * 16 = 0.08 vs 0.1 * 0.05 * 576 = 2.88
    assert summed["toy"]["loss"] == pytest.approx(math.log(1 + math.exp(-0.08)), abs=1e-12)
    assert summed["janus_pro_shape"]["loss"] == pytest.approx(math.log(1 + math.exp(-2.88)), abs=1e-12)
    assert summed["janus_pro_shape"]["loss"] < 0.1 < summed["toy"]["loss"]
