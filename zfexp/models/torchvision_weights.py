"""torchvision's pretrained weights by name: ``weights=DEFAULT``, ``IMAGENET1K_V1`` or
``ResNet18_Weights.IMAGENET1K_V1`` beside ``network=resnet18`` (or ``model.name=resnet18``).

They are found with torchvision's weights API (``get_model_weights``) and loaded by torchvision's own builder,
from the torch hub cache (``$TORCH_HOME/hub/checkpoints/``, downloaded there when missing, as torchvision does).
torchvision reads that file with ``torch.hub.load_state_dict_from_url``, which unpickles in full by default: it
is read here with torch's safe loading forced (:func:`weights_only_loads`), so a planted file in the cache cannot
run code either. With the weights come their preprocessing (``weights.transforms()``) and class names
(``weights.meta["categories"]``).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from zfexp.errors import CheckpointError, InvalidValueError, UnsafeFileError
from zfexp.models.state_dicts import mismatch
from zfexp.safe_load import refused_global

# DEFAULT, IMAGENET1K_V1, or ResNet18_Weights.IMAGENET1K_V1: what names weights rather than a file.
_WEIGHTS_NAME = re.compile(r"^([A-Za-z][A-Za-z0-9_]*\.)?[A-Z][A-Z0-9_]*$")


def names_weights(value: Any) -> bool:
    """True when ``value`` reads as the name of torchvision weights (upper-case, as the enums spell them) and
    is no file: ``weights=DEFAULT`` with a file called ``DEFAULT`` in the working directory is that file."""
    return isinstance(value, str) and bool(_WEIGHTS_NAME.match(value)) and not Path(value).expanduser().exists()


def torchvision_weights(builder: str, value: str, key: str):
    """``value`` (``DEFAULT``, a member's name, or ``<Enum>.<member>``) -> the ``WeightsEnum`` member of
    torchvision's ``builder``; a :class:`InvalidValueError` naming ``key`` and the valid names otherwise."""
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(builder)
    except (ValueError, KeyError) as err:
        raise InvalidValueError(f"{key}={value!r} names torchvision weights, and {builder!r} is no torchvision "
                                "builder with weights; give a state_dict file, or none") from err
    prefix, _, name = value.rpartition(".")
    valid = ["DEFAULT", *(member.name for member in enum)]  # iterating an Enum skips its aliases
    if (prefix and prefix != enum.__name__) or name not in valid:
        raise InvalidValueError(f"{key}={value!r}: not weights of torchvision's {builder}; valid: "
                                f"{', '.join(valid)} ({enum.__name__}), a state_dict file, or none")
    return enum.DEFAULT if name == "DEFAULT" else enum[name]


def cached_file(weights) -> Path:
    """Where torchvision keeps ``weights`` once downloaded: ``$TORCH_HOME/hub/checkpoints/<file of the url>``
    (``~/.cache/torch`` when ``TORCH_HOME`` is unset)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """Every ``torch.load`` inside reads with ``weights_only=True``, whatever its caller asked for (torch's
    ``TORCH_FORCE_WEIGHTS_ONLY_LOAD``): for builders that load files themselves, torchvision's among them."""
    names = ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")  # torch refuses both set
    previous = {name: os.environ.pop(name, None) for name in names}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        os.environ.update({name: value for name, value in previous.items() if value is not None})


def build_pretrained(builder: str, weights, key: str, **kwargs: Any) -> nn.Module:
    """torchvision's ``builder`` with ``weights`` (a ``WeightsEnum`` member), as
    ``torchvision.models.get_model(builder, weights=weights)`` builds it, its file read safely. Offline with
    nothing cached, a :class:`CheckpointError` names the file torchvision expects and where to put it."""
    import torchvision

    path = cached_file(weights)
    try:
        with weights_only_loads():
            return torchvision.models.get_model(builder, weights=weights, progress=False, **kwargs)
    except pickle.UnpicklingError as err:
        raise UnsafeFileError(f"{key}={weights}: {path} holds Python objects that a safe load refuses "
                              f"({refused_global(err)}); torchvision's weights hold tensors only. Delete the file: "
                              f"the next run downloads {weights.url} again") from None
    except Exception as err:  # a failed download (URLError, a timeout), or a damaged file
        first_line = str(err).splitlines()[0] if str(err) else type(err).__name__
        if not path.is_file():
            raise CheckpointError(
                f"{key}={weights}: torchvision's file for these weights is not in the torch hub cache and could not "
                f"be downloaded ({type(err).__name__}: {first_line}). Download {weights.url} on a machine with "
                f"internet and put it at {path} ($TORCH_HOME/hub/checkpoints/{path.name}; TORCH_HOME defaults to "
                f"~/.cache/torch), or give {key}=<a state_dict file>") from None
        differs = _file_mismatch(builder, path)
        if differs:
            raise CheckpointError(f"{key}={weights}: {path} holds weights of another network than torchvision's "
                                  f"{builder}: {differs}; delete it (the next run downloads {weights.url} again) or "
                                  f"put that file there") from None
        raise CheckpointError(f"{key}={weights}: {path} cannot be read into torchvision's {builder} "
                              f"({type(err).__name__}: {first_line}); delete it (the next run downloads "
                              f"{weights.url} again) or put a complete copy there") from None


def _file_mismatch(builder: str, path: Path) -> str | None:
    """What differs between the state_dict in ``path`` and ``builder``'s network (``None``: it fits, or the file
    is no state_dict that a safe load reads)."""
    import torchvision

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        return None
    if not isinstance(state, dict):
        return None
    return mismatch(torchvision.models.get_model(builder, weights=None), state)


def preprocessing(weights) -> dict[str, Any]:
    """The ``input`` config of ``weights.transforms()``: ``{resize, crop, mean, std, interpolation}``."""
    transform = weights.transforms()
    return {"resize": int(transform.resize_size[0]), "crop": int(transform.crop_size[0]),
            "mean": [float(m) for m in transform.mean], "std": [float(s) for s in transform.std],
            "interpolation": transform.interpolation.value}


def categories(weights) -> list[str] | None:
    """The class names of the weights' outputs (``weights.meta["categories"]``), in output order."""
    names = weights.meta.get("categories")
    return list(names) if names else None
