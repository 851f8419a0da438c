"""Load published or our own MindSpore checkpoints into a ViT: fetch, rename (``name_map``), check, load.

Entries the network does not own are ignored; a head of another class count is re-initialised (warning);
any other missing or mis-shaped parameter is a CheckpointError listing names and shapes."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from vit_exp.credentials import mask, reveal, split_credentials
from vit_exp.errors import CheckpointError, ConfigError, error_line, first_line

log = logging.getLogger(__name__)

NAME_MAPS = ("auto", "none", "timm")
HEAD_NAMES = ("dense.weight", "dense.bias")
_MAX_LISTED = 8

# timm / mindcv style -> our (reference) names. Applied in order to each checkpoint key.
_TIMM_RULES: list[tuple[str, str]] = [
    (r"^backbone\.", ""),
    (r"^cls_token$", "cls"),
    (r"^pos_embed$", "pos_embedding"),
    (r"^patch_embed\.proj\.", "patch_embedding.conv."),
    (r"^blocks\.(\d+)\.norm1\.", r"transformer.layers.\1.0.cell.0."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"transformer.layers.\1.0.cell.1.qkv."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"transformer.layers.\1.0.cell.1.out."),
    (r"^blocks\.(\d+)\.norm2\.", r"transformer.layers.\1.1.cell.0."),
    (r"^blocks\.(\d+)\.mlp\.fc1\.", r"transformer.layers.\1.1.cell.1.dense1."),
    (r"^blocks\.(\d+)\.mlp\.fc2\.", r"transformer.layers.\1.1.cell.1.dense2."),
    (r"^head\.classifier\.", "dense."),
    (r"^head\.", "dense."),
    (r"^fc_norm\.", "norm."),
]
_NORM_PARAM = re.compile(r"^(transformer\.layers\.\d+\.[01]\.cell\.0|norm)\.(weight|bias)$")


@dataclass
class LoadReport:
    """What ``load_pretrained`` did: loaded names, ignored checkpoint entries, re-initialised head."""

    path: Path
    loaded: list[str]
    ignored: list[str]
    reinitialised: list[str]


def fetch_checkpoint(source: str | Path, cache_dir: str | Path) -> Path:
    """Return a local path for ``source``: a file path as is, a URL downloaded once into ``cache_dir``."""
    source = str(source)
    url = urlparse(source)
    if url.scheme not in ("http", "https", "ftp"):
        path = Path(source).expanduser()
        if not path.is_file():
            raise CheckpointError(f"model.pretrained: checkpoint file not found: {path}")
        return path
    name = Path(url.path).name or "checkpoint.ckpt"
    target = Path(cache_dir).expanduser() / name
    if target.is_file() and target.stat().st_size > 0:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(target.suffix + ".part")
    log.info("downloading %s to %s", mask(source), target)
    try:
        _download(reveal(source), partial)
    except Exception as exc:
        partial.unlink(missing_ok=True)
        cause = error_line(exc, last=True).removeprefix("Error: ")  # the download library's, last
        raise CheckpointError(
            f"model.pretrained: could not download {mask(source)} ({cause}); "
            "download it yourself and pass the file path"
        ) from None
    partial.replace(target)
    return target


def _download(url: str, target: Path) -> None:
    """Download ``url`` to ``target``; a user and password in it are sent as HTTP basic auth."""
    import urllib.request

    from download import download

    bare, user, password = split_credentials(url)
    if user:
        parts = urlparse(bare)
        manager = urllib.request.HTTPPasswordMgrWithPriorAuth()
        manager.add_password(
            None, f"{parts.scheme}://{parts.netloc}/", user, password or "", is_authenticated=True
        )
        urllib.request.install_opener(
            urllib.request.build_opener(urllib.request.HTTPBasicAuthHandler(manager))
        )
    try:  # verbose=False: the library would print the URL, query tokens included
        download(bare, str(target), progressbar=True, replace=True, verbose=False)
    finally:
        if user:
            urllib.request.install_opener(None)


def rename_timm(name: str) -> str:
    """Map one timm/mindcv-style parameter name to our reference name (unknown names unchanged)."""
    for pattern, repl in _TIMM_RULES:
        name = re.sub(pattern, repl, name)
    if match := _NORM_PARAM.match(name):
        name = f"{match.group(1)}.{'gamma' if match.group(2) == 'weight' else 'beta'}"
    return name


def apply_name_map(params: dict, name_map: str) -> dict:
    """Rename checkpoint entries by ``name_map`` ("none", "timm", or "auto" = timm when detected)."""
    if name_map not in NAME_MAPS:
        raise ConfigError(f"model.pretrained_name_map must be one of {NAME_MAPS}, got {name_map!r}")
    if name_map == "auto":
        looks_timm = any(k in params for k in ("cls_token", "pos_embed", "backbone.cls_token"))
        name_map = "timm" if looks_timm else "none"
    if name_map == "none":
        return dict(params)
    return {rename_timm(k): v for k, v in params.items()}


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return shown + (f", and {more} more" if more > 0 else "")


def load_into(net, params: dict, path: Path, head_names: tuple[str, ...] = HEAD_NAMES) -> LoadReport:
    """Check ``params`` against ``net`` and load them; see the module docstring for the rules."""
    import mindspore as ms

    own = {p.name: p for p in net.get_parameters()}
    missing, mismatched, reinitialised, to_load = [], [], [], {}
    for name, param in own.items():
        shape = tuple(param.shape)
        if name in params and tuple(params[name].shape) == shape:
            to_load[name] = params[name]
        elif name in head_names:
            reinitialised.append(name)
        elif name not in params:
            missing.append(f"{name} {shape}")
        else:
            mismatched.append(f"{name} checkpoint {tuple(params[name].shape)} vs model {shape}")
    if missing or mismatched:
        found = {"shape mismatch": mismatched, "missing from checkpoint": missing}
        parts = "; ".join(f"{what}: {_listing(names)}" for what, names in found.items() if names)
        raise CheckpointError(
            f"checkpoint {path} does not fit the model ({parts}); "
            "check the model.* sizes or model.pretrained_name_map"
        )
    ms.load_param_into_net(net, to_load, strict_load=True)
    report = LoadReport(path, sorted(to_load), sorted(set(params) - set(own)), reinitialised)
    if report.reinitialised:
        head, classes = ", ".join(report.reinitialised), getattr(net, "num_classes", "?")
        log.warning(
            f"checkpoint {path}: classification head ({head}) does not match model.num_classes={classes}; "
            "it was re-initialised and must be trained"
        )
    if report.ignored:
        log.info("checkpoint %s: ignored %d entries the network does not own", path, len(report.ignored))
    return report


def load_pretrained(net, source: str | Path, cache_dir: str | Path, name_map: str = "auto") -> LoadReport:
    """Fetch ``source`` (path or URL), rename by ``name_map``, check and load it into ``net``;
    a training-state file (``X.state.ckpt``) stands for its network file."""
    import mindspore as ms

    path = fetch_checkpoint(source, cache_dir)
    if path.name.endswith(STATE_SUFFIX):
        network = network_file(path)
        if not network.is_file():
            raise CheckpointError(
                f"model.pretrained: {path} holds a training state; its network file {network} is missing"
            )
        log.info("model.pretrained: %s is a training state; loading its network file %s", path, network)
        path = network
    try:
        params = ms.load_checkpoint(str(path))
    except Exception as exc:
        first = first_line(str(exc)) or type(exc).__name__
        raise CheckpointError(f"model.pretrained: cannot read checkpoint {path}: {first}") from None
    return load_into(net, apply_name_map(params, name_map), path)


# A vit-exp training checkpoint is <stem>.ckpt (the network) and <stem>.state.ckpt (the rest: train/state.py).
STATE_SUFFIX = ".state.ckpt"


def network_file(checkpoint: Path) -> Path:
    """The network file of a checkpoint given by either of its files."""
    checkpoint = Path(checkpoint)
    if checkpoint.name.endswith(STATE_SUFFIX):
        return checkpoint.with_name(checkpoint.name[: -len(STATE_SUFFIX)] + ".ckpt")
    return checkpoint


# The first name part of every ViT parameter (RECIPE.md); a full-state checkpoint's other entries are
# the optimizer's (moment1.*, adam_m.*, moments.*, global_step, learning_rate, ...) and the loop's.
NETWORK_ROOTS = frozenset({"cls", "pos_embedding", "patch_embedding", "transformer", "norm", "dense"})


def is_network_entry(name: str) -> bool:
    return name.split(".", 1)[0] in NETWORK_ROOTS


def write_network_checkpoint(source: Path, target: Path) -> Path:
    """Write the network's parameters of checkpoint ``source`` (e.g. a full-state one) to ``target``."""
    import mindspore as ms

    params = ms.load_checkpoint(str(source), choice_func=is_network_entry)
    return save_checkpoint([{"name": name, "data": value} for name, value in params.items()], target)


def save_checkpoint(net, path: str | Path) -> Path:
    """Save the network's parameters (no optimizer state) to ``path``."""
    import mindspore as ms

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ms.save_checkpoint(net, str(path))
    return path
