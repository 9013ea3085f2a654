"""The settings every run shares, declared once, checked once.

``prunerzero prune`` (``config.PruneConfig``), ``sweep`` (``sweep.config.SweepConfig``) and ``search``
(``search.job.SearchJob``) are frozen dataclasses composed of these groups:

  ModelSettings       which model, its weights' dtype, the device, the window rule (--bos)   every run
  DeviceMapSettings   + accelerate's device map and memory caps                             prune, search
  OffloadSettings     + a folder for layers that fit on no device                           prune, eval
  CalibSettings       calibration text, how many windows of how many tokens, the seed       every run
  EvalSettings        the perplexity text and its windows                                   prune, sweep
  TargetSettings      the pattern (unstructured, N:M) and the comparison group             prune, sweep
  PruningSettings     forward batch, SparseGPT/OBS damping and block, a gradient file      prune, sweep
  LeverSettings       reconstruction after the mask, OWL layer-wise sparsity                prune, search

Every field is declared here once, with its default and its help (``option``); the command line
offers it from that declaration (``cli.options.add_settings``), and each group checks its own
fields (its ``check_*`` method), so a rule lives in one place. One rule says which value wins,
everywhere: command line > config file > defaults (``resolve``). A config file is read field by
field with the declared types (``read_settings_file``). Saved records (results.json's config,
job.json, sweep_settings.json) keep the key order they always had (``Settings.KEY_ORDER``).

This module is light to import (the command line builds its parser from it): torch, transformers
and the data sources load inside the methods that need them.
"""
from __future__ import annotations

import json
import math
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Sequence, TypeVar

from .errors import UserError, known_keys_only, one_line, path_kind, short
from .windows import BOS_HELP, BOS_MODES  # light: torch loads where windows are cut

if TYPE_CHECKING:
    import torch

    from .calib.stats import GradientStats
    from .masks import SparsityTarget
    from .models import LoadedModel
    from .windows import Windowing

S = TypeVar("S", bound="Settings")

# The "band" comparison group's half-width (masks.banded_layer_mask): scores compared across the layer,
# each row losing between sparsity - ROW_BAND and sparsity + ROW_BAND of its weights. Chosen by
# measurement (docs/BENCHMARKS.md, "row-band"): without a bound single rows lose from about 6% to nearly 100% of
# their weights (SmolLM2, GBLM), and Qwen2.5-Coder's QASPER perplexity rose for every gradient metric on
# every draw; 0.2 kept too little of the fix there, 0.05 gave back WikiText-2.
ROW_BAND = 0.1


def option(default: Any, help: str, *, flag: str | None = None, choices: Sequence[str] | None = None,
           items: type | None = None, empty_ok: bool = False, none: str | None = None) -> Any:
    """A settings field and how the command line offers it.

    ``flag``: the option's name (default ``--<field-name-with-dashes>``); ``choices``: the only values;
    ``items``: a tuple field's element type, written as a comma list (``empty_ok``: an empty list is
    allowed); ``none``: the word that means None (or, for a list, no items), e.g. ``--eval-data none``."""
    meta = {"help": help, "flag": flag, "choices": tuple(choices) if choices else None, "items": items,
            "empty_ok": empty_ok, "none": none}
    return field(default=default, metadata=meta)


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Base of every settings group and run config: typed reading and writing of the flat record."""

    # Field names in the order saved records have always listed them; fields not named follow, in
    # declaration order. (Dataclass inheritance puts the groups' fields first.)
    KEY_ORDER: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def field_names(cls) -> list[str]:
        names = [f.name for f in fields(cls)]
        return [n for n in cls.KEY_ORDER if n in names] + [n for n in names if n not in cls.KEY_ORDER]

    def to_dict(self) -> dict[str, Any]:
        """The flat record (tuples as lists), keys in ``KEY_ORDER``."""
        return {name: _plain(getattr(self, name)) for name in self.field_names()}

    @classmethod
    def from_dict(cls: type[S], data: Any, what: str = "settings") -> S:
        """Read back a record (a config file, job.json): unknown keys and wrongly typed values are
        one UserError each."""
        data = check_types(cls, known_keys_only(data, cls.field_names(), what), what)
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def resolve(cls: type[S], given: Mapping[str, Any], file: Mapping[str, Any] | None = None, **extra: Any) -> S:
    """The one precedence rule: values ``given`` on the command line win over a config ``file``'s,
    which win over ``cls``'s defaults. ``extra``: values the command derives itself."""
    return cls(**{**(file or {}), **given, **extra})


# ----------------------------------------------------------------------------- typed records


def _allowed(hint: Any) -> tuple[type, ...]:
    """The JSON value types a field's annotation accepts (int is accepted for float; bool never for int)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return tuple(t for arg in typing.get_args(hint) for t in _allowed(arg))
    if hint is type(None):
        return (type(None),)
    if typing.get_origin(hint) is tuple or hint is tuple:
        return (list, tuple)
    return (int, float) if hint is float else (hint,)


def check_types(cls: type, data: dict[str, Any], what: str) -> dict[str, Any]:
    """`data` (e.g. read from JSON) with each value of the type its field declares, or one clear error."""
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        allowed = _allowed(hints[key])
        ok = isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed)
        if ok and isinstance(value, (list, tuple)):
            ok = all(isinstance(v, str) for v in value)
        if ok and isinstance(value, str) and not value.strip():  # "" must not quietly mean "not given"
            raise UserError(f"{what}: {key} is empty")
        if not ok:
            names = sorted({"a list of strings" if t in (list, tuple) else "null" if t is type(None)
                            else {"int": "an integer", "float": "a number", "str": "a string", "bool": "true/false"}
                            .get(t.__name__, t.__name__) for t in allowed})
            raise UserError(f"{what}: {key} must be {' or '.join(names)}, not {short(json.dumps(value), 60)}")
    return data


def read_settings_file(path: str | Path, cls: type[Settings]) -> dict[str, Any]:
    """The values of a settings file (``--config FILE.json``): ``cls``'s fields only, each of its
    declared type; anything unreadable is one UserError naming the file."""
    path = Path(path)
    what = f"config {short(path)}"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"config file not found: {short(path)}") from None
    except IsADirectoryError:
        raise UserError(f"config file {short(path)} is a folder, not a JSON file") from None
    except UnicodeDecodeError as exc:  # random bytes
        raise UserError(f"{what} is not UTF-8 text (byte {exc.start}): not a JSON config file") from None
    except (OSError, ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError; deep nesting recurses
        raise UserError(f"{what} is not readable JSON: {one_line(exc, 200)}") from None
    data = check_types(cls, known_keys_only(data, cls.field_names(), what), what)
    return {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}


# ----------------------------------------------------------------------------- the groups


@dataclass(frozen=True, kw_only=True)
class ModelSettings(Settings):
    """Which model, in which dtype, on which device, and how its text is cut into windows."""

    model: str = option("smollm2-135m", "a local Hugging Face folder, a hub id, a .gguf file, or an embedded model: "
                        "smollm2-135m, gemma3-270m, qwen2.5-coder-0.5b")
    device: str = option("auto", "auto (CUDA when available), cpu, cuda, cuda:N")
    dtype: str = option("float32", "weights as loaded: float32, bfloat16 or float16 (the pruning math stays float32)")
    bos: str = option("auto", BOS_HELP, choices=BOS_MODES)  # saved with every run; cached numbers are keyed by it

    def check_model(self) -> None:
        """The cheap checks of the model's settings (not the model path: ``check_model_path``)."""
        from .models import parse_dtype
        from .windows import check_bos_mode

        parse_dtype(self.dtype)
        check_bos_mode(self.bos)
        self.check_placement()

    def check_placement(self) -> None:
        from .models import resolve_device

        resolve_device(self.device)

    def check_model_path(self, spec: str | None = None) -> None:
        """A missing local model fails here (last: it may convert a GGUF file, once); hub ids when loading."""
        from .models import resolve_model_path

        resolve_model_path(self.model if spec is None else spec)

    def placement(self) -> dict[str, Any]:
        """``load_model``'s placement arguments."""
        from .models import resolve_device

        return {"device": resolve_device(self.device)}

    def open_model(self, spec: str | None = None) -> tuple[LoadedModel, Windowing]:
        """Load ``spec`` (default: ``model``) as placed by these settings, with the window rule ``bos``
        means for its tokenizer (a rule the tokenizer cannot follow is refused before the weights load)."""
        from .models import load_model, parse_dtype
        from .windows import windowing_for

        lm = load_model(self.model if spec is None else spec, dtype=parse_dtype(self.dtype), **self.placement(),
                        check_tokenizer=lambda tok: windowing_for(tok, self.bos))
        return lm, windowing_for(lm.tokenizer, self.bos)


@dataclass(frozen=True, kw_only=True)
class DeviceMapSettings(ModelSettings):
    """One model spread over several GPUs by accelerate."""

    device_map: str = option("none", "none (one --device), or auto / balanced / sequential: accelerate spreads the "
                             "decoder layers over the GPUs")
    max_memory: str | None = option(None, 'with --device-map: memory per device, e.g. "0=70GiB,1=70GiB,cpu=200GiB"')

    def check_placement(self) -> None:
        from .models import check_placement

        check_placement(self.device, self.device_map, self.max_memory)

    def placement(self) -> dict[str, Any]:
        if self.device_map == "none":
            return super().placement()
        return {"device": "cpu", "device_map": self.device_map, "max_memory": self.max_memory}


@dataclass(frozen=True, kw_only=True)
class OffloadSettings(DeviceMapSettings):
    """A device map that may also put layers on disk (each is loaded for its turn and written back)."""

    offload_folder: str | None = option(None, "with --device-map: where layers that fit on no device wait on disk",
                                        none="none")

    def placement(self) -> dict[str, Any]:
        placed = super().placement()
        return {**placed, "offload_folder": self.offload_folder} if self.device_map != "none" else placed


@dataclass(frozen=True, kw_only=True)
class CalibSettings(Settings):
    """The calibration text and its windows."""

    calib_data: str = option("general", "general (default: a mix of fiction, Wikipedia, news and stories, science), "
                             "lambada (fiction), squad (Wikipedia paragraphs), c4, wikitext2 (train), or a text file")
    nsamples: int = option(32, "calibration windows")
    seqlen: int = option(512, "tokens per window (calibration; also evaluation unless --eval-seqlen)")
    seed: int = option(0, "which windows are drawn")

    def check_calibration(self, reads_text: bool = True) -> None:
        """Window counts, and (when the run reads calibration text) the text source."""
        from .data import check_source

        if self.nsamples < 1 or self.seqlen < 2:
            raise UserError("--nsamples must be >= 1 and --seqlen >= 2")
        if reads_text:
            check_source(self.calib_data, "--calib-data")

    def check_calib_fits(self, lm: LoadedModel) -> None:
        """Windows longer than the model's context fail here, after loading, before any work."""
        check_seqlen(lm, self.seqlen)

    def calibration_tokens(self, lm: LoadedModel, windowing: Windowing) -> torch.Tensor:
        """The calibration text as (1, N) tokens, to draw windows from (``calibration_windows``)."""
        from .data import calib_split, load_text
        from .windows import tokenize

        return tokenize(lm.tokenizer, load_text(self.calib_data, calib_split(self.calib_data)), windowing)

    def calibration_windows(self, tokens: torch.Tensor, windowing: Windowing, seed: int | None = None) -> torch.Tensor:
        """(nsamples, seqlen) windows of ``tokens`` drawn with ``seed`` (default: the run's)."""
        from .windows import calibration_windows

        return calibration_windows(tokens, self.nsamples, self.seqlen, self.seed if seed is None else seed, windowing)

    def dense_gradients(self, lm: LoadedModel, calib_ids: torch.Tensor, *, seed: int | None = None,
                        file: str | None = None, chunk_layers: int | None = None,
                        progress: bool = True) -> tuple[GradientStats, dict]:
        """G of the dense model over ``calib_ids`` (drawn with ``seed``, default the run's): read from
        ``file`` when one is given, else from the gradient cache, computed once per model, text and
        seed and shared by prune, sweep and search. Returns (G, what it came from)."""
        from .calib import gradients

        if file:
            return gradients.load_gradient_file(Path(file), lm.model), {"file": file}
        return gradients.load_or_compute_gradients(lm.model, calib_ids, model_id=lm.path, data_id=self.calib_data,
                                                   seed=self.seed if seed is None else seed, progress=progress,
                                                   chunk_layers=chunk_layers)


@dataclass(frozen=True, kw_only=True)
class EvalSettings(Settings):
    """The perplexity text and its windows (needs ``seqlen``: composed with CalibSettings)."""

    eval_data: str | None = option("wikitext2", "wikitext2, c4, ptb, lambada, squad (their search splits), a text "
                                   "file, or none (skip perplexity)", none="none")
    eval_seqlen: int | None = option(None, "evaluation window (default: --seqlen, as in the papers' code)")
    eval_tokens: int | None = option(None, "evaluate only the first N test tokens (default: the whole test set)")

    @property
    def effective_eval_seqlen(self) -> int:
        return self.eval_seqlen or self.seqlen  # type: ignore[attr-defined]

    def check_eval(self) -> None:
        from .data import check_source

        if self.eval_tokens is not None and self.eval_tokens < self.effective_eval_seqlen:
            raise UserError(f"--eval-tokens {self.eval_tokens} is less than one window of {self.effective_eval_seqlen}")
        check_source(self.eval_data, "--eval-data")  # an empty file must fail before the model loads

    def check_eval_fits(self, lm: LoadedModel) -> None:
        check_seqlen(lm, self.effective_eval_seqlen)

    def test_tokens(self, lm: LoadedModel, windowing: Windowing) -> tuple[torch.Tensor, dict]:
        """The evaluation text as (1, N) tokens and what it is; too little text for one window fails."""
        from .data import describe_source, evaluation_split, load_text
        from .windows import tokenize

        split = evaluation_split(self.eval_data)
        tokens = tokenize(lm.tokenizer, load_text(self.eval_data, split), windowing)
        check_test_tokens(tokens, self.effective_eval_seqlen, self.eval_data)
        return tokens, describe_source(self.eval_data, split)


@dataclass(frozen=True, kw_only=True)
class TargetSettings(Settings):
    """The shape of the sparsity (its amount is the run's own: one sparsity, a grid, settings)."""

    pattern: str = option("unstructured", "unstructured, or N:M such as 2:4 or 4:8 (then --sparsity is N/M)")
    group: str = option("row", "comparison group for unstructured sparsity: row (each output row loses the same "
                        "share), layer (a metric's scores compared across the whole layer; SparseGPT: across the "
                        "rows of each column block, as its reference code) or band (across the layer, each row "
                        f"losing within {ROW_BAND:g} of the target share; metrics only)")

    def target(self, sparsity: float) -> SparsityTarget:
        from .masks import parse_target

        return parse_target(sparsity, self.pattern, self.group)


@dataclass(frozen=True, kw_only=True)
class PruningSettings(Settings):
    """How the pruning computes: calibration batches, the OBS solver, precomputed gradients."""

    batch_size: int = option(8, "calibration windows per forward pass")
    percdamp: float = option(0.01, "SparseGPT / OBS damping, relative to the mean of diag(H)")
    blocksize: int = option(128, "SparseGPT / OBS column block")
    gradients: str | None = option(None, "a precomputed gradient file (else G is computed and cached when a method "
                                   "uses it)")

    def check_pruning(self) -> None:
        """Settings that would fail deep inside the pruning (a zero block size, a NaN damping, a
        gradient file that is not there)."""
        check_numbers(self.batch_size, self.blocksize, self.percdamp)
        if self.gradients is not None and path_kind(self.gradients) != "file":
            raise UserError(f"gradient file not found: {short(self.gradients)}")


@dataclass(frozen=True, kw_only=True)
class LeverSettings(Settings):
    """What is done beyond the mask, the same for every method, formula and candidate."""

    reconstruct: str = option("none", "after the mask, update the surviving weights: obs (SparseGPT's OBS update) "
                              "or admm (the weights with the least layer output error for exactly that mask)",
                              choices=("none", "obs", "admm"))
    reconstruct_mode: str = option("fixed", "fixed: the metric's whole mask first; block (obs): the mask chosen per "
                                   "column block as the update runs; gradual (admm): the mask chosen again from the "
                                   "updated weights as the sparsity grows to the target",
                                   choices=("fixed", "block", "gradual"))
    mask_only: bool = option(False, "keep the mask the weight update chose (reconstruct-mode block or gradual, or "
                             "--method sparsegpt) on the dense weights, the update discarded")
    allocation: str = option("uniform", "layer-wise sparsity: uniform, or owl (outlier-weighted, unstructured only)",
                             choices=("uniform", "owl"))
    owl_m: float = option(5.0, "OWL's outlier threshold M (scores above M x mean)")
    owl_lambda: float = option(0.08, "OWL's spread: layer sparsities within the target +- lambda")

    def reconstruct_options(self) -> dict[str, Any]:
        """Options of the reconstruction besides kind and mode (a run config may add some)."""
        return {}

    def check_levers(self, targets: Sequence[SparsityTarget], lambdas: Sequence[float] = (),
                     method_reconstructs: bool = False) -> None:
        """The levers against the run's targets; ``lambdas``: OWL lambdas besides ``owl_lambda``
        (the search may evolve it); ``method_reconstructs``: the method updates weights by itself
        (sparsegpt), so --mask-only has an update to discard without --reconstruct."""
        from .allocation import check_allocation, check_owl
        from .methods.reconstruct import check_mask_only, check_reconstruct

        check_reconstruct(self.reconstruct, self.reconstruct_mode, **self.reconstruct_options())
        check_mask_only(self.reconstruct, self.reconstruct_mode, self.mask_only, method_reconstructs)
        check_allocation(self.allocation)
        if self.allocation != "owl":
            return
        if all(t.structured for t in targets):
            raise UserError("--allocation owl needs unstructured sparsity (N:M fixes every layer's ratio)")
        for t in targets:
            if not t.structured:
                for lam in (self.owl_lambda, *lambdas):
                    check_owl(t.sparsity, self.owl_m, lam, False)


# ----------------------------------------------------------------------------- checks shared by the groups


def check_numbers(batch_size: int, blocksize: int, percdamp: float) -> None:
    """Settings that would fail deep inside the pruning (a zero block size, a NaN damping)."""
    if batch_size < 1 or blocksize < 1:
        raise UserError(f"--batch-size and --blocksize must be >= 1, not {batch_size} and {blocksize}")
    if not (math.isfinite(percdamp) and percdamp >= 0):
        raise UserError(f"--percdamp must be a finite number >= 0, not {percdamp}")


def check_seqlen(lm: LoadedModel, seqlen: int) -> None:
    from .models import max_context

    context = max_context(lm.model)
    if context is not None and seqlen > context:
        raise UserError(f"seqlen {seqlen} is longer than the model's context of {context} tokens")


def check_test_tokens(tokens: torch.Tensor, seqlen: int, source: str) -> None:
    """Too little evaluation text for one window fails here, before any pruning."""
    if tokens.numel() < seqlen + 1:
        raise UserError(f"evaluation data {short(source)} has {tokens.numel()} tokens, fewer than one window of "
                        f"{seqlen} (+1): pass a longer text or a smaller --eval-seqlen / --seqlen")


def check_zero_shot(tasks: Sequence[str], limit: int | None = None) -> None:
    if limit is not None and limit < 1:
        raise UserError(f"--zero-shot-limit must be >= 1, not {limit}")
    if tasks:
        from .eval.zeroshot import TASKS

        bad = [t for t in tasks if t not in TASKS]
        if bad:
            raise UserError(f"unknown zero-shot task {bad[0]!r} (choose from {', '.join(TASKS)})")
