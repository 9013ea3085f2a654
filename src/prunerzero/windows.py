"""Token windows: the one rule that cuts calibration, gradient, fitness and evaluation windows.

Every path (prune, eval, sweep, search fitness, leaderboard, gradients, OWL) tokenises its text
once with `tokenize` and cuts windows with `calibration_windows` (seeded random offsets) or
`eval_windows` (consecutive), under one `Windowing` resolved from the tokenizer and `--bos`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .errors import UserError

if TYPE_CHECKING:  # torch is imported where windows are cut, so the CLI can name BOS_MODES without it
    import torch

BOS_MODES = ("auto", "window", "stream", "none")
BOS_HELP = ("auto: every window starts with the tokenizer's BOS token when the tokenizer adds one by default "
            "(Llama-2/3, Gemma), none otherwise (GPT-2, Qwen2, SmolLM2); window: always BOS + seqlen-1 text tokens; "
            "stream: one BOS at the start of the whole text, the papers' LLaMA code; none: never")


@dataclass(frozen=True)
class Windowing:
    """How every token window (calibration, gradients, fitness, perplexity) is cut from a text.

    bos "window": each window is BOS + (seqlen - 1) text tokens, as the model sees text in use
    and as lm-eval scores it (Gemma uses BOS as an attention sink: without it activations are
    out of distribution). "stream": one BOS before the whole token stream, windows cut from it
    (Wanda / SparseGPT / Pruner-Zero code for LLaMA: their tables). "none": text tokens only.
    """

    bos: str = "none"  # resolved: window, stream or none (never auto)
    bos_id: int | None = None

    def __post_init__(self) -> None:
        if self.bos not in ("window", "stream", "none"):
            raise ValueError(f"Windowing.bos must be window, stream or none, not {self.bos!r}")
        if (self.bos == "none") != (self.bos_id is None):
            raise ValueError("Windowing needs a bos_id exactly when bos is window or stream")

    @property
    def body(self) -> int:
        """Text tokens per window besides the BOS: 1 for window mode, 0 otherwise."""
        return 1 if self.bos == "window" else 0

    def to_dict(self) -> dict[str, Any]:
        return {"bos": self.bos, "bos_token_id": self.bos_id}

    def cache_part(self) -> list | None:
        """What cache keys add for this rule; None for "none", so keys made before BOS handling
        (all of which used no BOS) stay valid and every other rule gets keys of its own."""
        return None if self.bos == "none" else [self.bos, self.bos_id]


NO_BOS = Windowing()


def check_bos_mode(mode: str) -> None:
    if mode not in BOS_MODES:
        raise UserError(f"--bos must be one of {', '.join(BOS_MODES)}, not {mode!r}")


def tokenizer_adds_bos(tokenizer) -> bool:
    """Whether the tokenizer puts its BOS token first when called with its defaults."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return False
    with_special = tokenizer("a", add_special_tokens=True).input_ids
    plain = tokenizer("a", add_special_tokens=False).input_ids
    return bool(with_special) and with_special[0] == bos and plain[:1] != [bos]


def windowing_for(tokenizer, mode: str = "auto") -> Windowing:
    """The rule `mode` means for this tokenizer (UserError when it asks for a BOS the tokenizer lacks)."""
    check_bos_mode(mode)
    if mode == "auto":
        mode = "window" if tokenizer_adds_bos(tokenizer) else "none"
    if mode == "none":
        return NO_BOS
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        raise UserError(f"--bos {mode}: the tokenizer has no BOS token; use --bos none (or auto)")
    return Windowing(mode, int(bos))


def tokenize(tokenizer, text: str, windowing: Windowing = NO_BOS) -> torch.Tensor:
    """The whole text as one (1, N) LongTensor, tokenised once (the papers' way); with the
    "stream" rule one BOS token comes first."""
    import torch

    ids = tokenizer(text, return_tensors="pt", add_special_tokens=False, verbose=False).input_ids.long()
    if windowing.bos == "stream":
        ids = torch.cat([torch.tensor([[windowing.bos_id]], dtype=torch.long), ids], dim=1)
    return ids


def _with_bos(body: torch.Tensor, windowing: Windowing) -> torch.Tensor:
    """(n, seqlen - 1) text tokens -> (n, seqlen) with the BOS token in front (window rule only)."""
    import torch

    if windowing.bos != "window":
        return body
    bos = torch.full((body.shape[0], 1), windowing.bos_id, dtype=body.dtype)
    return torch.cat([bos, body], dim=1)


def calibration_windows(tokens: torch.Tensor, nsamples: int, seqlen: int, seed: int,
                        windowing: Windowing = NO_BOS) -> torch.Tensor:
    """`nsamples` windows of `seqlen` tokens at seeded random offsets: (nsamples, seqlen).

    Same tokens, seed and sizes give the same windows on every machine (torch's CPU generator).
    Under the "window" rule each is BOS + seqlen - 1 text tokens from the same kind of offset.
    """
    import torch

    total, body = tokens.shape[-1], seqlen - windowing.body
    if total <= body:
        raise UserError(f"calibration text has {total} tokens, fewer than one window of {seqlen}")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, total - body, (nsamples,), generator=generator)
    flat = tokens.reshape(-1)
    return _with_bos(torch.stack([flat[s : s + body] for s in starts.tolist()]), windowing)


def eval_windows(tokens: torch.Tensor, seqlen: int, max_tokens: int | None = None,
                 windowing: Windowing = NO_BOS) -> torch.Tensor:
    """(1, N) token ids -> (n, seqlen) consecutive non-overlapping windows (a trailing partial one is
    dropped). ``max_tokens`` caps the windows at max_tokens // seqlen; under the "window" rule each
    window holds BOS + the next seqlen - 1 text tokens."""
    flat, body = tokens.reshape(-1), seqlen - windowing.body
    n = flat.numel() // body
    if max_tokens is not None:
        n = min(n, max_tokens // seqlen)
    if n == 0:
        have = flat.numel() if max_tokens is None else min(flat.numel(), max_tokens)
        raise UserError(f"need at least {seqlen} tokens for one window of evaluation text, have {have}")
    return _with_bos(flat[: n * body].view(n, body), windowing)
