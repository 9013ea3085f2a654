"""What a fitness rung measures, as pure tensor math (the fitness module orchestrates).

Rungs of the fidelity ladder, cheapest first by default (docs/BENCHMARKS.md, "fitness", measures
how well each ranks metrics against the full pipeline on held-out text, and its seconds):

  ``<N>tok`` / ``ppl:<N>``  perplexity of the pruned model on the first N tokens of the search split
  ``kl:<N>``               mean KL divergence of the pruned model's next-token distribution from the
                           dense model's on the same N tokens (paired with the dense model, so the
                           text's own difficulty cancels)
  ``seq:<N>``              the full sequential pipeline (each layer's statistics from the already
                           pruned layers below it, as ``prunerzero prune`` does) on the first
                           ``seq_nsamples`` calibration windows, then perplexity on N tokens: the
                           all-at-once rungs misrank the best metrics at N:M, this one does not
                           (docs/BENCHMARKS.md, "fitness"), at several times their cost
  ``err``                  no forward pass: the mean over linears of the relative layer output error
                           tr(dW H dW^T) / tr(W H W^T), dW = pruned - dense weight, H = X^T X of the
                           dense model's calibration inputs
KL uses the dense model's top-k next tokens plus one bucket for the rest of the vocabulary (the KL
between those k + 1 outcomes, a lower bound of the full KL that is exact as k grows), so the
dense reference is (tokens, k) numbers, not (tokens, vocabulary).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..errors import UserError

KL_TOP_K = 128


@dataclass(frozen=True)
class Rung:
    kind: str  # ppl, kl, seq or err
    tokens: int = 0  # 0 for err

    @property
    def name(self) -> str:
        """The fidelity's name in logs and checkpoints (perplexity keeps the earlier "<N>tok")."""
        return {"ppl": f"{self.tokens}tok", "kl": f"kl{self.tokens}tok", "seq": f"seq{self.tokens}tok",
                "err": "err"}[self.kind]

    @property
    def needs_forward(self) -> bool:
        return self.kind != "err"


def parse_rung(text: str) -> Rung:
    """'1024', '1024tok', 'ppl:1024', 'kl:4096', 'kl4096tok', 'seq:4096' or 'err' -> a Rung."""
    t = text.strip().lower()
    if t == "err":
        return Rung("err")
    m = re.fullmatch(r"(?:(ppl|kl|seq):?)?(\d+)(?:tok)?", t)
    if not m:
        raise UserError(f"unknown fidelity {text!r}: use err, ppl:N, kl:N or seq:N (N tokens), e.g. kl:1024,seq:4096")
    tokens = int(m[2])
    if tokens < 1:
        raise UserError(f"fidelity {text!r} needs a positive number of tokens")
    return Rung(m[1] or "ppl", tokens)


@torch.no_grad()
def dense_top_k(logits: torch.Tensor, k: int = KL_TOP_K) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense logits (n, V) -> (top-k token ids (n, k) int64, their log-probs (n, k) float32)."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # (n, V)
    values, ids = logp.topk(min(k, logp.shape[-1]), dim=-1)
    return ids, values


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x <= 0, accurate at both ends."""
    x = x.clamp(max=-1e-7)
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


@torch.no_grad()
def kl_top_k(logits: torch.Tensor, ref_ids: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """KL(dense || pruned) per position over the dense top-k tokens plus one bucket for the rest.

    logits (n, V) of the pruned model; ref_ids / ref_logp (n, k) from :func:`dense_top_k`.
    Returns (n,) float32, >= 0.
    """
    logq = torch.log_softmax(logits.float(), dim=-1).gather(-1, ref_ids)  # (n, k) pruned log-probs
    p = ref_logp.exp()
    head = (p * (ref_logp - logq)).sum(-1)  # (n,)
    log_p_rest = _log1mexp(torch.logsumexp(ref_logp, -1))  # (n,) dense mass outside the top k
    log_q_rest = _log1mexp(torch.logsumexp(logq, -1))
    tail = log_p_rest.exp() * (log_p_rest - log_q_rest)
    return (head + tail).clamp_min(0.0)


@torch.no_grad()
def relative_output_error(dense: torch.Tensor, pruned: torch.Tensor, hessian: torch.Tensor) -> float:
    """tr(dW H dW^T) / tr(W H W^T): the share of the layer's output energy on the calibration inputs
    that pruning changes. dense, pruned (out, in); hessian (in, in) = X^T X / tokens."""
    delta = pruned - dense  # (out, in)
    err = ((delta @ hessian) * delta).sum()
    base = ((dense @ hessian) * dense).sum()
    return float(err / base.clamp_min(1e-30))
