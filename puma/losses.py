"""The paper's losses and schedules, one function per equation (PUMA, arXiv 2025; REFERENCE section 3).

All contrastive terms share :func:`cosine_logits`: cosine similarity between L2-normalised query and
candidate embeddings, computed in fp32 so bf16 training does not lose the small score differences that
low temperatures amplify. Every function takes torch tensors and returns a scalar loss (fp32).

Shapes: ``B`` queries, ``N`` candidates (``N = B`` for in-batch negatives; more when gathered across
processes), ``H`` hidden size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

# M-BEIR modality strings -> small ints, so modality labels can be gathered across processes as tensors.
MODALITY_IDS = {"text": 0, "image": 1, "image,text": 2}


def modality_ids(modalities: Sequence[str] | torch.Tensor, device=None) -> torch.Tensor:
    """M-BEIR modality strings (``"text" | "image" | "image,text"``) -> LongTensor[n]; tensors pass through."""
    if isinstance(modalities, torch.Tensor):
        return modalities.to(device=device, dtype=torch.long)
    try:
        ids = [MODALITY_IDS[m] for m in modalities]
    except KeyError as e:
        raise ValueError(f"unknown modality {e.args[0]!r}; expected one of {sorted(MODALITY_IDS)}") from None
    return torch.tensor(ids, dtype=torch.long, device=device)


def cosine_logits(query_emb: torch.Tensor, cand_emb: torch.Tensor) -> torch.Tensor:
    """Cosine similarity matrix ``sim(q_i, c_j)`` (Eq. 3, 7): ``[B, H] x [N, H] -> [B, N]`` in fp32."""
    q = F.normalize(query_emb.float(), p=2, dim=-1)
    c = F.normalize(cand_emb.float(), p=2, dim=-1)
    return q @ c.T  # [B, N]


def _diagonal_labels(labels: torch.Tensor | None, n_queries: int, device) -> torch.Tensor:
    if labels is None:
        return torch.arange(n_queries, device=device)  # query i's positive is candidate i
    return labels.to(device=device, dtype=torch.long)


def info_nce(
    query_emb: torch.Tensor, cand_emb: torch.Tensor, tau: float, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """InfoNCE, query-to-candidate (Eq. 3): mean over queries of ``-log softmax(sim(q_i, .)/tau)[label_i]``.

    Args:
        query_emb: ``[B, H]`` query embeddings (any norm; normalised here).
        cand_emb: ``[N, H]`` candidate embeddings; the other candidates are the negatives.
        tau: temperature (0.05 in stage 1, 0.03 in stage 2).
        labels: ``[B]`` index of each query's positive in ``cand_emb``; default ``arange(B)``.
    """
    logits = cosine_logits(query_emb, cand_emb) / tau  # [B, N]
    # Eq. 3: L = -1/N sum_i log exp(sim(q_i, c_i)/tau) / sum_n exp(sim(q_i, c_n)/tau)
    return F.cross_entropy(logits, _diagonal_labels(labels, logits.shape[0], logits.device))


def _score_kl(
    student: tuple[torch.Tensor, torch.Tensor], teacher: tuple[torch.Tensor, torch.Tensor], tau: float
) -> torch.Tensor:
    # Paper appendix: KL(teacher || student) between the in-batch contrastive score distributions.
    s_logp = F.log_softmax(cosine_logits(*student) / tau, dim=-1)  # [B, N]
    t_logp = F.log_softmax(cosine_logits(*teacher).detach() / tau, dim=-1)  # [B, N]
    return F.kl_div(s_logp, t_logp, log_target=True, reduction="batchmean")


def distill_loss(
    student: torch.Tensor | tuple[torch.Tensor, ...],
    teacher: torch.Tensor | tuple[torch.Tensor, ...],
    kind: str = "mse",
    tau: float = 0.05,
) -> torch.Tensor:
    """Self-distillation between the student's and the frozen teacher's ``[RET]`` states (Eq. 2).

    ``student``/``teacher`` are one ``[B, H]`` tensor, or a tuple ``(queries [B, H], candidates [N, H])``
    whose terms are summed as in Eq. 2 (``||h_t^q - h_s^q||^2 + ||h_t^c - h_s^c||^2``). The teacher
    never receives gradient.

    kinds:
        ``mse``: mean squared error over elements, on un-normalised vectors (the paper's choice).
        ``cos``: ``1 - cos(h_s, h_t)`` averaged over rows.
        ``kl``: KL between the teacher's and the student's contrastive score distributions
        ``softmax(sim(q, c)/tau)`` (paper appendix); needs the ``(queries, candidates)`` tuple form.
    """
    s_parts = student if isinstance(student, tuple) else (student,)
    t_parts = teacher if isinstance(teacher, tuple) else (teacher,)
    if len(s_parts) != len(t_parts):
        raise ValueError(f"student has {len(s_parts)} parts, teacher {len(t_parts)}")
    if kind == "kl":
        if len(s_parts) != 2:
            raise ValueError("distill_loss(kind='kl') needs (queries, candidates) tuples for student and teacher")
        return _score_kl(s_parts, t_parts, tau)
    total = torch.zeros((), dtype=torch.float32, device=s_parts[0].device)
    for s, t in zip(s_parts, t_parts):
        if s.shape != t.shape:
            raise ValueError(f"student {tuple(s.shape)} and teacher {tuple(t.shape)} shapes differ")
        s, t = s.float(), t.detach().float()
        if kind == "mse":
            # Eq. 2: E ||h_t - h_s||_2^2, as a mean over elements (reference implementation's MSELoss)
            total = total + F.mse_loss(s, t)
        elif kind == "cos":
            total = total + (1 - F.cosine_similarity(s, t, dim=-1)).mean()
        else:
            raise ValueError(f"unknown distill kind {kind!r}; expected mse, cos or kl")
    return total


def mac_temperatures(
    query_target_modality: Sequence[str] | torch.Tensor,
    cand_modality: Sequence[str] | torch.Tensor,
    tau: float,
    tau_hard: float,
    reverse: bool = False,
    device=None,
) -> torch.Tensor:
    """Per-pair temperatures of MAC (Eq. 6, Algorithm 1): ``T[i, j]``, shape ``[B, N]``.

    Eq. 6 splits query i's candidates into the intra-modality group (``modality(c_j)`` equals query i's
    target modality, which includes its own positive on the diagonal) and the inter-modality group.
    The intra group gets ``tau_hard``, the inter group ``tau``; ``reverse`` swaps them (Table 5).
    """
    q_mod = modality_ids(query_target_modality, device)  # [B]
    c_mod = modality_ids(cand_modality, device)  # [N]
    intra = q_mod[:, None] == c_mod[None, :]  # [B, N]
    hard, norm = (tau, tau_hard) if reverse else (tau_hard, tau)
    return torch.where(intra, torch.tensor(hard, device=intra.device), torch.tensor(norm, device=intra.device))


def mac_loss(
    query_emb: torch.Tensor,
    cand_emb: torch.Tensor,
    query_target_modality: Sequence[str] | torch.Tensor,
    cand_modality: Sequence[str] | torch.Tensor,
    tau: float,
    tau_hard: float,
    labels: torch.Tensor | None = None,
    reverse: bool = False,
) -> torch.Tensor:
    """Modality-adaptive contrastive loss (Eq. 7, Algorithm 1).

    ``logits[i, j] = sim(q_i, c_j) / T[i, j]`` with ``T`` from :func:`mac_temperatures`, then
    cross-entropy with ``labels`` (default the diagonal).

    Args:
        query_emb: ``[B, H]``; cand_emb: ``[N, H]``.
        query_target_modality: ``B`` modalities of each query's positive candidate (strings or ids).
        cand_modality: ``N`` modalities of the candidates.
        tau: tau_norm = tau0 (0.03); tau_hard: the decayed temperature from :func:`tau_hard_schedule`.
    """
    temps = mac_temperatures(query_target_modality, cand_modality, tau, tau_hard, reverse, query_emb.device)
    logits = cosine_logits(query_emb, cand_emb) / temps  # [B, N]
    # Eq. 7: -log exp(S_p/tau_p) / (sum_intra exp(S_m/tau_hard) + sum_inter exp(S_n/tau_norm))
    return F.cross_entropy(logits, _diagonal_labels(labels, logits.shape[0], logits.device))


def tau_hard_schedule(tau: float, lam: float, epoch: float, total_epochs: float, form: str = "paper") -> float:
    """The decayed intra-modality temperature (Eq. 8, Algorithm 1).

    ``paper``: ``round(tau * exp(-lam * epoch / total_epochs), 3)``.
    ``reference``: the public code's ``round(tau * exp(-lam * min(0.5, epoch / total_epochs) * 2), 3)``,
    which reaches its final value half-way through training.
    """
    if total_epochs <= 0:
        raise ValueError(f"total_epochs must be > 0, got {total_epochs}")
    progress = epoch / total_epochs
    if form == "paper":
        exponent = lam * progress  # Eq. 8: tau_hard = tau0 * e^{-lambda t}, t as the fraction of training
    elif form == "reference":
        exponent = lam * min(0.5, progress) * 2
    else:
        raise ValueError(f"unknown tau_hard form {form!r}; expected paper or reference")
    return round(tau * math.exp(-exponent), 3)


# (alpha1, alpha2) at the start and the end of training, per Table 4 mode (alpha1 weighs L_contrastive).
ALPHA_MODES = {
    "fixed": ((0.9, 0.1), (0.9, 0.1)),
    "dynamic": ((0.5, 0.5), (0.9, 0.1)),
    "reverse": ((0.5, 0.5), (0.1, 0.9)),
}


def alpha_schedule(step: int, total_steps: int, mode: str = "fixed") -> tuple[float, float]:
    """Stage-1 weights ``(alpha1, alpha2)`` of Eq. 4 at ``step`` of ``total_steps`` (Table 4).

    Eq. 4 is ``L = alpha1 * L_contrastive + alpha2 * L_self-distill``: contrastive is the primary term
    (fixed 0.9/0.1). ``dynamic`` moves linearly from 0.5/0.5 to 0.9/0.1; ``reverse`` from 0.5/0.5 to 0.1/0.9.
    """
    if mode not in ALPHA_MODES:
        raise ValueError(f"unknown alpha mode {mode!r}; expected one of {sorted(ALPHA_MODES)}")
    (a1_start, a2_start), (a1_end, a2_end) = ALPHA_MODES[mode]
    frac = 0.0 if total_steps <= 1 else min(max(step / (total_steps - 1), 0.0), 1.0)
    return a1_start + (a1_end - a1_start) * frac, a2_start + (a2_end - a2_start) * frac


def pretraining_loss(contrastive: torch.Tensor, distill: torch.Tensor, alphas: tuple[float, float]) -> torch.Tensor:
    """Stage-1 objective (Eq. 4): ``alpha1 * L_contrastive + alpha2 * L_self-distill``."""
    alpha1, alpha2 = alphas
    return alpha1 * contrastive + alpha2 * distill
