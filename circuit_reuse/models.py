"""Model caching and loading.

A model spec from the config (a Hub id, a local directory, a seeded random stand-in, or an organism trained
on the tasks by `circuit_reuse.training`) is resolved once
into a local Hugging Face directory with a manifest: where it came from, the sha256 of every file, the
model config and the package versions. Every later job loads from that directory alone, so cluster nodes
without internet never touch the Hub, and a file that changed after caching is caught before it is used.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch

from circuit_reuse.families import UnsupportedModelError, architecture, family_named, stand_in_config
from circuit_reuse.integrity import sha256
from circuit_reuse.io import read_json, versions, write_json

MANIFEST_NAME = "manifest.json"
# Written into every cache directory this module builds: the one mark that it may replace the directory.
# The manifest is not enough, since Snakemake deletes a job's outputs, the manifest among them, first.
OWNER_MARKER = ".circuit-reuse-cache"
# Hub downloads: seconds without data before a download fails (the config's `hub_timeout`), and attempts
# in all when a server error or a dropped connection interrupts one.
HUB_TIMEOUT = 60.0
HUB_ATTEMPTS = 3
# Temporary build directories are named .{dest}.partial-XXXX, beside their destination.
PARTIAL_SUFFIX = ".partial-"
TOKENIZER_ENV = "CIRCUIT_REUSE_TOKENIZER"


# What a GPT-2 checkpoint needs; the Hub repos also hold TF, Flax, ONNX and TFLite copies we never load.
HUB_FILES = [
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model-*.safetensors",
    "model.safetensors.index.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.json",
    "merges.txt",
]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt")
WEIGHT_SUFFIXES = (".safetensors", ".bin")
CHECKPOINT_KEYS = ("of", "step")


class ModelCacheError(RuntimeError):
    """A model could not be cached, or a cached model is missing or no longer matches its manifest."""


@dataclass(frozen=True)
class ModelSpec:
    """Where a model comes from. Built from one entry of the config's `models` section."""

    name: str
    source: Literal["hub", "local", "random", "trained", "checkpoint"]
    hub_id: str | None = None
    revision: str = "main"
    path: str | None = None
    architecture: str = "gpt2"
    overrides: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    training: dict[str, Any] = field(default_factory=dict)
    of: str | None = None  # a checkpoint's organism (source: checkpoint)
    step: int | None = None  # the training step a checkpoint keeps

    @classmethod
    def from_config(cls, name: str, entry: dict[str, Any]) -> ModelSpec:
        known = {f for f in cls.__dataclass_fields__ if f != "name"}
        return cls(name=name, **{k: v for k, v in entry.items() if k in known})


def resolve_tokenizer_dir(configured: str | os.PathLike | None = None) -> Path | None:
    """The tokenizer directory for offline machines: the config's setting, else $CIRCUIT_REUSE_TOKENIZER."""
    value = configured or os.environ.get(TOKENIZER_ENV)
    if not value:
        return None
    path = Path(value).expanduser()
    if not (path / "vocab.json").is_file() and not (path / "tokenizer.json").is_file():
        raise ModelCacheError(f"tokenizer directory {path} holds no GPT-2 tokenizer files (vocab.json, tokenizer.json)")
    return path


def random_gpt2_config(architecture: str = "gpt2", **overrides: Any):
    """A GPT2Config with a released GPT-2 size's shape, optionally changed (small shapes for tests)."""
    if architecture_family(architecture) != "gpt2":
        raise ModelCacheError(f"architecture {architecture!r} is not a GPT-2 size")
    return stand_in_config(architecture, **overrides)


def architecture_family(name: str) -> str:
    """The family of a released model a stand-in can copy; ModelCacheError listing them for an unknown name."""
    try:
        return architecture(name)["family"]
    except UnsupportedModelError as error:
        raise ModelCacheError(str(error)) from None


def cache_model(
    spec: ModelSpec,
    dest: str | os.PathLike,
    tokenizer_dir: str | os.PathLike | None = None,
    hub_timeout: float = HUB_TIMEOUT,
) -> dict:
    """Resolve `spec` into a Hugging Face directory at `dest` with a manifest, and return the manifest.

    The directory is built beside `dest` and renamed into place at the end, so an interrupted run leaves
    no half-written cache behind (and what an earlier, killed run left there is removed first). An existing
    cache whose manifest still matches is kept as it is; a stale one is rebuilt. A non-empty directory at
    `dest` that this function did not create (it carries neither a manifest nor OWNER_MARKER) is refused,
    never deleted.
    """
    dest = Path(dest)
    _refuse_foreign_destination(dest)
    if (dest / MANIFEST_NAME).is_file():
        try:
            manifest = verify_cache(dest)
        except ModelCacheError:
            pass  # a stale or damaged cache is rebuilt below
        else:
            if manifest["spec"] == _spec_record(spec):
                return manifest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tokenizer_path = resolve_tokenizer_dir(tokenizer_dir)
    with building_beside(dest) as tmp:
        work = tmp / "model"
        work.mkdir()
        origin = None
        if spec.source == "hub":
            origin = _fetch_from_hub(spec, work, hub_timeout)
        elif spec.source == "local":
            _copy_local(spec, work)
        elif spec.source == "random":
            _build_random(spec, work, tokenizer_path)
        elif spec.source in ("trained", "checkpoint"):
            from circuit_reuse.training import build_organism

            build_organism(spec, work, tokenizer_path)
        else:
            raise ModelCacheError(
                f"model {spec.name!r}: unknown source {spec.source!r}; allowed: hub, local, random, trained, checkpoint"
            )
        if not any((work / f).is_file() for f in ("vocab.json", "tokenizer.json")):
            if tokenizer_path is None:
                raise ModelCacheError(
                    f"model {spec.name!r} comes without a tokenizer: set `tokenizer:` in the config, or "
                    f"${TOKENIZER_ENV}, to a directory holding the GPT-2 tokenizer files"
                )
            for name in TOKENIZER_FILES:
                if (tokenizer_path / name).is_file():
                    shutil.copy2(tokenizer_path / name, work / name)
        _check_architecture(spec, work)
        manifest = _write_manifest(spec, work, origin)
        (work / OWNER_MARKER).write_text("built by circuit_reuse.models.cache_model, which may replace it\n")
        if dest.exists():
            shutil.rmtree(dest)
        work.rename(dest)
    return manifest


@contextlib.contextmanager
def building_beside(dest: Path) -> Iterator[Path]:
    """A temporary directory beside `dest` to build it in, removed on exit. Those that a killed earlier
    build of `dest` left behind are removed first (a build of one destination runs once at a time: the
    workflow's lock sees to that)."""
    for leftover in dest.parent.glob(f".{dest.name}{PARTIAL_SUFFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=f".{dest.name}{PARTIAL_SUFFIX}") as tmp:
        yield Path(tmp)


def _refuse_foreign_destination(dest: Path) -> None:
    if not dest.is_dir() or not any(dest.iterdir()):
        return
    if (dest / MANIFEST_NAME).is_file() or (dest / OWNER_MARKER).is_file():
        return
    raise ModelCacheError(
        f"{dest} exists and was not created by the model cache (it holds no {MANIFEST_NAME} or {OWNER_MARKER}); "
        "it is left untouched. Move it away, or point `model_cache:` in the config elsewhere; to use the "
        f"model inside it, set `source: local` and `path: {dest}` for the model"
    )


def verify_cache(model_dir: str | os.PathLike) -> dict:
    """Check every file against the manifest; return the manifest or raise ModelCacheError naming the file."""
    model_dir = Path(model_dir)
    manifest_path = model_dir / MANIFEST_NAME
    if not manifest_path.is_file():
        raise ModelCacheError(
            f"{model_dir} is not a cached model: {MANIFEST_NAME} is missing (run the cache_model rule)"
        )
    manifest = read_json(manifest_path)
    for name, expected in manifest["files"].items():
        path = model_dir / name
        if not path.is_file():
            raise ModelCacheError(f"cached model {model_dir}: {name} is listed in the manifest but missing")
        if path.stat().st_size != expected["bytes"] or sha256(path) != expected["sha256"]:
            raise ModelCacheError(
                f"cached model {model_dir}: {name} no longer matches its manifest (sha256 differs); "
                "delete the directory and cache the model again"
            )
    unlisted = [p.name for p in model_dir.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.name not in manifest["files"]]
    if unlisted:
        raise ModelCacheError(f"cached model {model_dir}: weight files not in the manifest: {', '.join(unlisted)}")
    return manifest


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' is CUDA when this process sees a GPU and the CPU otherwise; 'cuda' without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelCacheError(f"device {device!r} was asked for but this machine has no CUDA GPU; use 'auto' or 'cpu'")
    return torch.device(device)


def model_device(model: Any) -> torch.device:
    """The device a loaded model's weights are on (the CPU for a model without parameters)."""
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def load_tokenizer(model_dir: str | os.PathLike):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


def load_model(model_dir: str | os.PathLike, device: str = "auto", dtype: torch.dtype = torch.float32):
    """Load a cached model as a TransformerLens TransformerBridge, ready for analysis.

    The weights are the raw Hugging Face ones (no folded layer norm or centred weights): path patching
    works on head outputs and q/k/v vectors, which those rewrites leave unchanged, and the logits agree.
    Gradients are off and the model is in eval mode, so repeated runs give identical numbers. Prompts
    carry no BOS token, as in the paper: `model.to_tokens(text)` encodes text as `load_tokenizer` does.
    (`model.tokenizer` itself is the bridge's copy, which prepends BOS when called directly.)
    """
    from transformer_lens.model_bridge import TransformerBridge

    model_dir = Path(model_dir)
    verify_cache(model_dir)
    target = resolve_device(device)
    model = TransformerBridge.boot_transformers(
        str(model_dir), device=target, dtype=dtype, tokenizer=load_tokenizer(model_dir)
    )
    model.cfg.default_prepend_bos = False
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def _fetch_from_hub(spec: ModelSpec, work: Path, timeout: float = HUB_TIMEOUT) -> dict[str, str]:
    if not spec.hub_id:
        raise ModelCacheError(f"model {spec.name!r}: source 'hub' needs `hub_id` (e.g. gpt2-medium)")
    fix = _OFFLINE_HINT.format(name=spec.name)
    return download_from_hub(spec.hub_id, spec.revision, work, HUB_FILES, timeout, f"model {spec.name!r}", fix)


def download_from_hub(
    repo_id: str,
    revision: str,
    work: Path,
    allow_patterns: list[str],
    timeout: float = HUB_TIMEOUT,
    label: str = "files",
    fix: str = "",
) -> dict[str, str]:
    """Download the files of a Hub repository matching `allow_patterns` into `work`; return where they came
    from: the endpoint and the commit that `revision` resolved to.

    The revision is resolved to a commit first and the files are downloaded at that commit, so every file
    comes from the same one. A call that receives nothing for `timeout` seconds fails (the Hub client's own
    timeouts and retries do not bound a stalled connection); a server error or a dropped connection is
    retried, HUB_ATTEMPTS attempts in all; a missing repository, revision or file fails at once. Errors are
    ModelCacheError naming `label`, the repository and the endpoint, followed by `fix`.
    """
    from huggingface_hub import HfApi, constants, snapshot_download

    # Read at call time, so that a process which imported the client before setting HF_ENDPOINT still obeys it.
    endpoint = (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    what = f"{label}: {repo_id!r} (revision {revision!r}) from the Hugging Face Hub at {endpoint}"
    # The client's own per-request timeout outlasts ours, so that a stall is always reported as one.
    request_timeout = timeout + 5
    for attempt in range(1, HUB_ATTEMPTS + 1):
        try:
            info = partial(HfApi(endpoint=endpoint).model_info, repo_id, revision=revision)
            commit = _unless_stalled(partial(info, timeout=request_timeout), work, timeout).sha
            download = partial(snapshot_download, repo_id, revision=commit, local_dir=work, endpoint=endpoint)
            download = partial(download, allow_patterns=allow_patterns, etag_timeout=request_timeout)
            _unless_stalled(download, work, timeout)
            break
        except _Stalled:
            raise ModelCacheError(
                f"{what}: no data for {timeout:g} s, so the download was stopped. Check the connection and "
                "HF_ENDPOINT; on a slow link raise `hub_timeout` in the config." + fix
            ) from None
        except Exception as error:  # the client raises many types for 'offline', 'no such repo', 'no such file'
            if attempt < HUB_ATTEMPTS and _transient(error) and not constants.HF_HUB_OFFLINE:
                time.sleep(attempt)
                continue
            tries = f" ({attempt} attempts)" if attempt > 1 else ""
            raise ModelCacheError(f"could not download {what}{tries}: {error}" + fix) from error
    shutil.rmtree(work / ".cache", ignore_errors=True)  # the hub client's bookkeeping, not model files
    return {"endpoint": endpoint, "commit": commit}


_OFFLINE_HINT = (
    "\nOn a machine without internet, download the model elsewhere and set `source: local` and "
    "`path: /dir/with/config.json/and/model.safetensors` for {name!r} in config.yaml, or cache it where "
    "there is internet (snakemake --until cache_model) and copy results/models/ over."
)


class _Stalled(Exception):
    """A Hub call received nothing for the whole timeout."""


def _unless_stalled(call: Callable[[], Any], work: Path, timeout: float) -> Any:
    """Run `call` in a daemon thread and return its result, or raise _Stalled once no byte has arrived in
    `work` for `timeout` seconds. A stalled socket read cannot be interrupted from outside; the abandoned
    thread ends with the connection, or with the process (a cache_model job exits with this error)."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = call()
        except BaseException as error:  # handed to the waiting thread, which raises it
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True, name="hub-download")
    thread.start()
    seen, last_change = -1, time.monotonic()
    while thread.is_alive():
        thread.join(timeout=0.2)
        received = sum(p.stat().st_size for p in work.rglob("*") if p.is_file())
        if received != seen:
            seen, last_change = received, time.monotonic()
        elif time.monotonic() - last_change > timeout:
            raise _Stalled()
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("result")


def _transient(error: Exception) -> bool:
    """A server error, a rate limit, or a connection that failed or dropped: worth another attempt."""
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    if isinstance(error, OfflineModeIsEnabled):
        return False
    if isinstance(error, HfHubHTTPError):
        status = getattr(error.response, "status_code", None)
        return status is None or status >= 500 or status == 429
    return isinstance(error, (OSError, ConnectionError, TimeoutError))


def _copy_local(spec: ModelSpec, work: Path) -> None:
    if not spec.path:
        raise ModelCacheError(f"model {spec.name!r}: source 'local' needs `path`, a Hugging Face model directory")
    source = Path(spec.path).expanduser()
    if not (source / "config.json").is_file():
        raise ModelCacheError(f"model {spec.name!r}: {source} is not a Hugging Face model directory (no config.json)")
    weights = [p for p in source.iterdir() if p.suffix in WEIGHT_SUFFIXES]
    if not weights:
        raise ModelCacheError(f"model {spec.name!r}: {source} holds no weight files (*.safetensors or *.bin)")
    for path in source.iterdir():
        if path.is_file() and (
            path.suffix in WEIGHT_SUFFIXES or path.name.endswith(".json") or path.name == "merges.txt"
        ):
            if path.name != MANIFEST_NAME:
                shutil.copy2(path, work / path.name)


def _build_random(spec: ModelSpec, work: Path, tokenizer_path: Path | None) -> None:
    import transformers

    from circuit_reuse.families import FAMILIES

    family = FAMILIES[architecture_family(spec.architecture)]
    overrides = dict(spec.overrides)
    if family.name != "gpt2":
        # A stand-in reads the prompts of the tokenizer it is cached with, so its vocabulary and special tokens
        # are that tokenizer's (the released model's own tokenizer is another, whose prompts it cannot read).
        overrides = {**_tokenizer_fields(spec, tokenizer_path), **overrides}
    try:
        config = stand_in_config(spec.architecture, **overrides)
    except UnsupportedModelError as error:
        raise ModelCacheError(f"model {spec.name!r}: {error}") from None
    torch.manual_seed(spec.seed)
    model = getattr(transformers, family.model_class)(config).eval()
    model.save_pretrained(work, safe_serialization=True)


def _tokenizer_fields(spec: ModelSpec, tokenizer_path: Path | None) -> dict[str, int]:
    from transformers import AutoTokenizer

    if tokenizer_path is None:
        raise ModelCacheError(
            f"model {spec.name!r}: a random {spec.architecture} stand-in takes its vocabulary from its tokenizer; "
            f"set `tokenizer:` in the config, or ${TOKENIZER_ENV}"
        )
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path))
    end = tokenizer.eos_token_id
    return {"vocab_size": len(tokenizer), "bos_token_id": end, "eos_token_id": end, "pad_token_id": end}


def _check_architecture(spec: ModelSpec, work: Path) -> None:
    """The model is of a family circuit-reuse knows (settings its fast engines lack leave the references)."""
    try:
        family_named(read_json(work / "config.json").get("model_type"))
    except UnsupportedModelError as error:
        raise ModelCacheError(f"model {spec.name!r}: {error}") from None


def _spec_record(spec: ModelSpec) -> dict[str, Any]:
    record = asdict(spec)
    record.pop("name")
    # A checkpoint's keys appear on checkpoints only: the caches of other models, built before checkpoints
    # existed, keep matching their manifests.
    for key in CHECKPOINT_KEYS:
        if record[key] is None:
            del record[key]
    return record


def _write_manifest(spec: ModelSpec, work: Path, origin: dict[str, str] | None = None) -> dict:
    files = {
        p.name: {"sha256": sha256(p), "bytes": p.stat().st_size}
        for p in sorted(work.iterdir())
        if p.is_file() and p.name != MANIFEST_NAME
    }
    manifest = {
        "name": spec.name,
        "spec": _spec_record(spec),
        **({"origin": origin} if origin else {}),
        "files": files,
        "config": read_json(work / "config.json"),
        "versions": versions(),
    }
    write_json(work / MANIFEST_NAME, manifest)
    return manifest
