"""Safe model loading: safetensors only, never pickle, never a model's own code, never a weight initialised
at random; one entry point for every format."""

from __future__ import annotations

import re
import threading
from pathlib import Path

from services.common.models import custom_code, pickles, safetensors_header
from services.common.models.bounded_json import JsonTooDeep, JsonTooLarge, loads_bounded, read_capped
from services.common.models.model_errors import IncompleteCheckpoint, UnsafeModelError, UnsupportedModelError
from services.common.contract.model_kinds import kind_of

# transformers builds models under process-wide patches (weight init disabled, parameters
# created on meta), so two threads building at once corrupt each other's models (seen:
# a tied head left uninitialised, meta tensors in a cast). Every build in a worker holds this.
CONSTRUCTION_LOCK = threading.RLock()

# How many missing tensor names an IncompleteCheckpoint lists (then the count says the rest).
MISSING_NAMES_SHOWN = 10


def preload_transformers() -> None:
    """Resolves transformers' lazy attributes once, up front: its lazy module is not
    thread-safe, and stages import it from worker threads (seen: ImportError for
    AutoConfig when two stages started together)."""
    import transformers

    for name in ("AutoConfig", "AutoModel", "AutoModelForCausalLM", "AutoTokenizer"):
        getattr(transformers, name)


def check_safe(folder: Path) -> None:
    pickled = pickles.pickled_files(folder)
    if pickled:
        raise UnsafeModelError(
            f"refusing pickled weights {', '.join(pickled)}: modelpress loads safetensors only "
            "(convert with `safetensors.torch.save_file` in a trusted environment)"
        )


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.exists():
        raise UnsupportedModelError(f"{folder.name}: no config.json (an HF-style model folder is expected)")
    try:
        with open(path, "rb") as stream:
            config = loads_bounded(read_capped(stream, "config.json"), "config.json")
    except (JsonTooDeep, JsonTooLarge):
        raise
    except (ValueError, UnicodeDecodeError) as exc:
        raise UnsupportedModelError(f"config.json: not JSON ({exc})") from None
    if not isinstance(config, dict):
        raise UnsupportedModelError("config.json: not a JSON object")
    return config


def check_weight_headers(folder: Path) -> None:
    """Every *.safetensors header read and checked against its file (BadSafetensors / JsonTooDeep), so a
    truncated or hostile file is named before the weights loader meets it."""
    for path in sorted(Path(folder).glob("*.safetensors")):
        safetensors_header.read_file_header(path)


def check_loadable(folder: Path, config: dict) -> None:
    """What loading `folder` (whose config.json holds `config`) needs beyond its kind: no custom code,
    weight headers that describe their files."""
    custom_code.check_no_custom_code(config)
    check_weight_headers(folder)


def from_pretrained(auto, folder: Path, **kwargs):
    """`auto.from_pretrained` of a safetensors folder for an engine that builds its own model (the
    optimizer's float export): the checks of load_model, then a complete load."""
    check_loadable(Path(folder), read_config(Path(folder)))
    return _complete_load(auto, folder, **kwargs)


def _complete_load(auto, folder: Path, **kwargs):
    """`auto.from_pretrained` that never initialises a missing weight at random: IncompleteCheckpoint
    naming the parameters the checkpoint lacks or gives another shape. Tied weights (a head tied to the
    embedding) and buffers transformers rebuilds itself are not reported missing by transformers."""
    model, info = auto.from_pretrained(folder, use_safetensors=True, trust_remote_code=False,
                                       output_loading_info=True, ignore_mismatched_sizes=True, **kwargs)
    check_complete(info, Path(folder).name)
    return model


def check_complete(info: dict, what: str) -> None:
    missing = sorted(info.get("missing_keys") or ())
    mismatched = sorted(info.get("mismatched_keys") or ())
    if missing:
        raise IncompleteCheckpoint(
            f"{what}: the checkpoint lacks {len(missing)} of the model's tensors "
            f"({_listed(missing)}); transformers would initialise them at random")
    if mismatched:
        shapes = [f"{name} {tuple(stored)} != {tuple(wanted)}" for name, stored, wanted in mismatched]
        raise IncompleteCheckpoint(
            f"{what}: {len(mismatched)} checkpoint tensors have another shape than config.json gives "
            f"({_listed(shapes)}); transformers would initialise them at random")


def check_covers(model, stored: set[str], what: str, prefix: str = "") -> None:
    """IncompleteCheckpoint unless `stored` (a checkpoint's tensor names, each `prefix` + the model's
    name) holds every tensor of `model`'s state dict, for a loader that builds the model itself (on
    meta, then tensor by tensor). Names sharing one tensor (a head tied to the embedding) need one
    of them stored; non-persistent buffers are not in a state dict; what the architecture declares
    optional (_keys_to_ignore_on_load_missing) may be absent."""
    sharing: dict[int, list[str]] = {}
    for name, tensor in model.state_dict(keep_vars=True).items():
        sharing.setdefault(id(tensor), []).append(name)
    optional = [re.compile(p) for p in getattr(model, "_keys_to_ignore_on_load_missing", None) or ()]
    missing = sorted(names[0] for names in sharing.values()
                     if not any(prefix + n in stored for n in names)
                     and not any(p.search(n) for p in optional for n in names))
    check_complete({"missing_keys": missing}, what)


def _listed(names: list[str]) -> str:
    shown_names = ", ".join(names[:MISSING_NAMES_SHOWN])
    return shown_names + (f" and {len(names) - MISSING_NAMES_SHOWN} more" if len(names) > MISSING_NAMES_SHOWN else "")


def model_kind(config: dict) -> str:
    """"causal-lm" for what AutoModelForCausalLM maps, "encoder" for masked-LM families AutoModel loads
    bare (model_kinds.kind_of: transformers' auto-mappings)."""
    kind = kind_of(config)
    if kind is None:
        raise UnsupportedModelError(
            f"unsupported architecture {config.get('architectures') or config.get('model_type')!r} "
            f"(model_type {config.get('model_type')!r}): modelpress handles causal LMs (what "
            "AutoModelForCausalLM maps) and masked-LM encoders (BERT, DeBERTa, ModernBERT ...)"
        )
    return kind


def load_model(folder: Path, *, dtype=None):
    """Loads a float or packed model folder for inference on CPU, in eval mode.

    Float weights keep the dtype they were saved in unless `dtype` says otherwise, so an
    FP16 artifact is measured as FP16, not silently widened.
    """
    from transformers import AutoModel, AutoModelForCausalLM

    folder = Path(folder)
    check_safe(folder)
    config = read_config(folder)
    check_loadable(folder, config)  # before the kind: a folder's own code is refused as such, whatever it names
    kind = model_kind(config)
    from services.common.models import packed  # torch: not for processes that only read configs

    if packed.is_packed(folder):
        with CONSTRUCTION_LOCK:
            return packed.load_packed(folder, kind)
    if not any(folder.glob("*.safetensors")):
        raise UnsupportedModelError(f"{folder.name}: no *.safetensors weights")
    auto = AutoModelForCausalLM if kind == "causal-lm" else AutoModel
    with CONSTRUCTION_LOCK:
        model = _complete_load(auto, folder, dtype=dtype or "auto")
    return model.eval()


def load_tokenizer(folder: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
