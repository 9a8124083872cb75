"""Preference and SFT losses over image-token log-probabilities (pure torch).

Where it sits: the LearnerWorker computes, for every preference pair built by
`gapray.algos.pairs.build_pairs`, the summed log-probability of the chosen and the rejected image
tokens under the policy and under the frozen reference, then calls `dpo_objective` (online DPO)
or, for the self-filtered SFT variant, `sft_loss` on the accepted images' per-token log-probs.

    loss, metrics = dpo_objective(pc, pr, rc, rr, beta=0.1, loss_type="sigmoid",
                                  nll_weight=0.2, chosen_nll=nll_chosen)
    loss.backward()

All inputs are per pair, shape (P,). log pi(x|y) is the SUM over the image tokens of x (576 for
Janus-Pro at 384 px, 16 for the toy model), so by default the implicit reward
beta * (log pi - log pi_ref) is per image, not per token, and the same beta weighs a 576-token
image 36 times as hard as a 16-token one (while the NLL term is a per-token mean). With
`num_tokens=T` (learner.beta_per_token) the log-ratios are divided by T first: the preference
term is then per image token, and a beta tuned at one image size means the same at any other.
Nothing here knows about models, Ray or devices.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

LOSS_TYPES = ("sigmoid", "ipo", "hinge")


def _check_pairs(**tensors: Tensor) -> None:
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    first = next(iter(shapes.values()))
    if len(first) != 1:
        raise ValueError(f"log-probs must have shape (P,), got {shapes}")
    if any(s != first for s in shapes.values()):
        raise ValueError(f"log-prob tensors must share one shape (P,), got {shapes}")


def preference_loss(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    label_smoothing: float = 0.0,
    num_tokens: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-pair preference loss.

    With h = (log pi(x+) - log ref(x+)) - (log pi(x-) - log ref(x-)), divided by num_tokens T
    when given (each log-ratio becomes a mean per image token):
      - "sigmoid" (DPO): -log sigmoid(beta h); with label smoothing eps (conservative DPO, which
        assumes a share eps of the labels is flipped): -(1-eps) log sigmoid(beta h) - eps log sigmoid(-beta h)
      - "ipo": (h - 1/(2 beta))^2, which pulls h towards a finite target instead of to infinity
      - "hinge" (SLiC): relu(1 - beta h)

    Returns (losses (P,), chosen rewards (P,), rejected rewards (P,)); the rewards
    beta * (log pi - log ref) (per token when num_tokens is given) are detached, for metrics only.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta!r}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing!r}")
    if label_smoothing and loss_type != "sigmoid":
        raise ValueError(f"label_smoothing applies to loss_type 'sigmoid' only, got loss_type {loss_type!r}")
    if num_tokens is not None and not (isinstance(num_tokens, int) and num_tokens >= 1):
        raise ValueError(f"num_tokens must be a positive int (image tokens per image), got {num_tokens!r}")
    _check_pairs(
        policy_chosen=policy_chosen,
        policy_rejected=policy_rejected,
        ref_chosen=ref_chosen,
        ref_rejected=ref_rejected,
    )

    scale = 1.0 / num_tokens if num_tokens else 1.0  # per image token, or per image (the sum)
    chosen_logratio = (policy_chosen - ref_chosen) * scale  # (P,)
    rejected_logratio = (policy_rejected - ref_rejected) * scale  # (P,)
    h = chosen_logratio - rejected_logratio  # (P,)

    if loss_type == "sigmoid":
        # logsigmoid is the numerically stable form of log(1 / (1 + exp(-z))) for large |z|.
        losses = -(1.0 - label_smoothing) * F.logsigmoid(beta * h)
        if label_smoothing:
            losses = losses - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1.0 / (2.0 * beta)) ** 2
    else:  # hinge
        losses = torch.relu(1.0 - beta * h)

    chosen_rewards = beta * chosen_logratio.detach()
    rejected_rewards = beta * rejected_logratio.detach()
    return losses, chosen_rewards, rejected_rewards


def dpo_objective(
    policy_chosen: Tensor,
    policy_rejected: Tensor,
    ref_chosen: Tensor,
    ref_rejected: Tensor,
    *,
    beta: float,
    loss_type: str = "sigmoid",
    nll_weight: float = 0.0,
    chosen_nll: Tensor | None = None,
    label_smoothing: float = 0.0,
    num_tokens: int | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """The paper's DPO objective: mean over pairs of preference loss + nll_weight * NLL(x+|y).

    chosen_nll: (P,) mean negative log-likelihood per image token of each chosen image (so the
    NLL term has the same scale whatever the image size); required when nll_weight > 0. The NLL
    term keeps the chosen images likely: plain DPO may push both log-probs down as long as the
    rejected one falls faster. num_tokens: see `preference_loss` (None: the summed log-ratio).

    Returns (scalar loss, metrics) with metrics loss, pref_loss, nll, reward_chosen,
    reward_rejected, reward_margin, reward_accuracy (share of pairs whose chosen reward is
    strictly higher), all Python floats.
    """
    if nll_weight < 0:
        raise ValueError(f"nll_weight must be >= 0, got {nll_weight!r}")
    losses, chosen_rewards, rejected_rewards = preference_loss(
        policy_chosen,
        policy_rejected,
        ref_chosen,
        ref_rejected,
        beta=beta,
        loss_type=loss_type,
        label_smoothing=label_smoothing,
        num_tokens=num_tokens,
    )
    pref_loss = losses.mean()
    loss = pref_loss
    nll_value = 0.0
    if chosen_nll is not None:
        if tuple(chosen_nll.shape) != tuple(policy_chosen.shape):
            raise ValueError(
                f"chosen_nll must have shape {tuple(policy_chosen.shape)} (one value per pair), "
                f"got {tuple(chosen_nll.shape)}"
            )
        nll = chosen_nll.mean()
        nll_value = float(nll.detach())
        if nll_weight:
            loss = loss + nll_weight * nll
    elif nll_weight:
        raise ValueError("chosen_nll is required when nll_weight > 0")

    margin = chosen_rewards - rejected_rewards  # (P,)
    metrics = {
        "loss": float(loss.detach()),
        "pref_loss": float(pref_loss.detach()),
        "nll": nll_value,
        "reward_chosen": float(chosen_rewards.mean()),
        "reward_rejected": float(rejected_rewards.mean()),
        "reward_margin": float(margin.mean()),
        "reward_accuracy": float((margin > 0).float().mean()),
    }
    return loss, metrics


def sft_loss(per_token_logps: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean negative log-likelihood per image token: the paper's self-filtered SFT loss.

    per_token_logps: (N, T) log-probs of the N accepted images' T image tokens under the policy.
    mask: optional (N, T) 0/1 of the tokens to count (all image tokens when None; Janus images
    have a fixed token count, so the mask is only for padded batches).
    """
    if per_token_logps.dim() != 2:
        raise ValueError(f"per_token_logps must have shape (N, T), got {tuple(per_token_logps.shape)}")
    if mask is None:
        return -per_token_logps.mean()
    if mask.shape != per_token_logps.shape:
        raise ValueError(
            f"mask must have the shape of per_token_logps {tuple(per_token_logps.shape)}, "
            f"got {tuple(mask.shape)}"
        )
    mask = mask.to(per_token_logps.dtype)
    count = mask.sum()
    if count == 0:
        raise ValueError("mask selects no token")
    return -(per_token_logps * mask).sum() / count
