"""Each loss against a slow, obviously-correct reference written with Python loops."""

from __future__ import annotations

import math

import pytest
import torch

from puma.losses import (
    alpha_schedule,
    cosine_logits,
    distill_loss,
    info_nce,
    mac_loss,
    mac_temperatures,
    pretraining_loss,
    tau_hard_schedule,
)

MODS = ["text", "image", "image,text"]


def _cos(a, b):
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def _ref_contrastive(q, c, temp, labels):
    """-1/B sum_i log exp(s_ii/T_ii) / sum_n exp(s_in/T_in), with python floats."""
    total = 0.0
    for i in range(len(q)):
        scores = [_cos(q[i], c[n]) / temp(i, n) for n in range(len(c))]
        total += -(scores[labels[i]] - math.log(sum(math.exp(s) for s in scores)))
    return total / len(q)


@pytest.fixture
def emb():
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 8, generator=g, dtype=torch.float64), torch.randn(9, 8, generator=g, dtype=torch.float64)


def test_cosine_logits_matches_loops(emb):
    q, c = emb
    got = cosine_logits(q, c)
    assert got.shape == (6, 9) and got.dtype == torch.float32
    for i in range(6):
        for j in range(9):
            assert got[i, j].item() == pytest.approx(_cos(q[i].tolist(), c[j].tolist()), abs=1e-6)


def test_info_nce_diagonal_and_explicit_labels(emb):
    q, c = emb
    ref = _ref_contrastive(q.tolist(), c[:6].tolist(), lambda i, n: 0.05, list(range(6)))
    assert info_nce(q, c[:6], 0.05).item() == pytest.approx(ref, rel=1e-5)
    labels = torch.tensor([3, 0, 8, 1, 1, 5])
    ref = _ref_contrastive(q.tolist(), c.tolist(), lambda i, n: 0.07, labels.tolist())
    assert info_nce(q, c, 0.07, labels).item() == pytest.approx(ref, rel=1e-5)


def test_info_nce_is_scale_invariant_and_learns_direction(emb):
    q, c = emb
    assert info_nce(q * 3, c[:6] * 0.5, 0.05).item() == pytest.approx(info_nce(q, c[:6], 0.05).item(), rel=1e-5)
    assert info_nce(c[:6], c[:6], 0.05).item() < info_nce(q, c[:6], 0.05).item()  # perfect match is lower


def test_distill_mse_and_cos_against_loops(emb):
    q, c = emb
    s, t = q, c[:6]
    ref = sum((a - b) ** 2 for ra, rb in zip(s.tolist(), t.tolist()) for a, b in zip(ra, rb)) / s.numel()
    assert distill_loss(s, t, "mse").item() == pytest.approx(ref, rel=1e-5)
    # Eq. 2 sums the query term and the candidate term.
    pair = distill_loss((s, c[6:9]), (t, c[:3]), "mse")
    assert pair.item() == pytest.approx(ref + distill_loss(c[6:9], c[:3]).item(), rel=1e-5)
    ref_cos = sum(1 - _cos(a, b) for a, b in zip(s.tolist(), t.tolist())) / len(s)
    assert distill_loss(s, t, "cos").item() == pytest.approx(ref_cos, rel=1e-5)


def test_distill_kl_against_loops(emb):
    q, c = emb
    sq, sc, tq, tc = q[:4], c[:4], q[2:6], c[5:9]
    tau = 0.1

    def probs(a, b):
        rows = []
        for i in range(len(a)):
            e = [math.exp(_cos(a[i], b[n]) / tau) for n in range(len(b))]
            rows.append([x / sum(e) for x in e])
        return rows

    ps, pt = probs(sq.tolist(), sc.tolist()), probs(tq.tolist(), tc.tolist())
    ref = sum(pt[i][n] * math.log(pt[i][n] / ps[i][n]) for i in range(4) for n in range(4)) / 4
    assert distill_loss((sq, sc), (tq, tc), "kl", tau=tau).item() == pytest.approx(ref, rel=1e-4)
    with pytest.raises(ValueError, match="tuples"):
        distill_loss(sq, tq, "kl")


def test_distill_teacher_gets_no_gradient(emb):
    q, c = emb
    s, t = q.clone().requires_grad_(), c[:6].clone().requires_grad_()
    distill_loss(s, t).backward()
    assert s.grad is not None and t.grad is None


@pytest.mark.parametrize("reverse", [False, True])
def test_mac_against_loops(emb, reverse):
    q, c = emb
    g = torch.Generator().manual_seed(1)
    q_mod = [MODS[i] for i in torch.randint(0, 3, (6,), generator=g).tolist()]
    c_mod = q_mod + [MODS[i] for i in torch.randint(0, 3, (3,), generator=g).tolist()]
    tau, tau_hard = 0.03, 0.025

    def temp(i, n):
        intra = c_mod[n] == q_mod[i]
        return (tau_hard if intra != reverse else tau)

    labels = list(range(6))
    ref = _ref_contrastive(q.tolist(), c.tolist(), temp, labels)
    got = mac_loss(q, c, q_mod, c_mod, tau, tau_hard, reverse=reverse)
    assert got.item() == pytest.approx(ref, rel=1e-5)
    # The diagonal (own positive, same modality by construction) gets tau_hard (Algorithm 1).
    temps = mac_temperatures(q_mod, c_mod, tau, tau_hard, reverse)
    assert torch.allclose(temps.diagonal(), torch.full((6,), tau if reverse else tau_hard))


def test_mac_equals_info_nce_when_temperatures_agree(emb):
    q, c = emb
    mods = ["text", "image", "image,text", "text", "image", "text"]
    assert mac_loss(q, c[:6], mods, mods, 0.03, 0.03).item() == pytest.approx(info_nce(q, c[:6], 0.03).item())


def test_mac_rejects_unknown_modality(emb):
    q, c = emb
    with pytest.raises(ValueError, match="unknown modality 'video'"):
        mac_loss(q[:2], c[:2], ["text", "video"], ["text", "text"], 0.03, 0.02)


def test_losses_run_in_bf16(emb):
    q, c = (t.to(torch.bfloat16).requires_grad_() for t in emb)
    mods = ["text"] * 6
    for loss in (info_nce(q, c[:6], 0.05), mac_loss(q, c[:6], mods, mods, 0.03, 0.02), distill_loss(q, c[:6])):
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
        loss.backward()
    assert q.grad.dtype == torch.bfloat16


def test_tau_hard_schedule_forms():
    assert tau_hard_schedule(0.03, 0.2, 0, 2) == 0.03
    assert tau_hard_schedule(0.03, 0.2, 1, 2) == round(0.03 * math.exp(-0.1), 3)
    assert tau_hard_schedule(0.05, 0.7, 2, 2) == round(0.05 * math.exp(-0.7), 3)
    # reference form saturates at half of training
    assert tau_hard_schedule(0.05, 0.7, 1, 4, "reference") == round(0.05 * math.exp(-0.35), 3)
    assert tau_hard_schedule(0.05, 0.7, 3, 4, "reference") == tau_hard_schedule(0.05, 0.7, 2, 4, "reference")
    with pytest.raises(ValueError, match="form"):
        tau_hard_schedule(0.05, 0.2, 0, 2, "other")


def test_alpha_schedules_table4():
    assert alpha_schedule(0, 100, "fixed") == pytest.approx((0.9, 0.1))
    assert alpha_schedule(99, 100, "fixed") == pytest.approx((0.9, 0.1))
    assert alpha_schedule(0, 101, "dynamic") == pytest.approx((0.5, 0.5))
    assert alpha_schedule(50, 101, "dynamic") == pytest.approx((0.7, 0.3))
    assert alpha_schedule(100, 101, "dynamic") == pytest.approx((0.9, 0.1))
    assert alpha_schedule(100, 101, "reverse") == pytest.approx((0.1, 0.9))
    for step in range(0, 101, 10):
        assert sum(alpha_schedule(step, 101, "dynamic")) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        alpha_schedule(0, 10, "cosine")


def test_pretraining_loss_weights_contrastive_first():
    # Eq. 4: alpha1 multiplies L_contrastive (the primary term), alpha2 L_self-distill.
    assert pretraining_loss(torch.tensor(2.0), torch.tensor(10.0), (0.9, 0.1)).item() == pytest.approx(2.8)
