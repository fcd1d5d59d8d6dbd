"""timm's models by name (the ``[timm]`` extra): ``zfexp.analyze network=timm/resnet18`` and ``train.py model=timm
model.name=resnet18``, with timm's pretrained weights read from the local Hugging Face cache as timm reads them
(``weights=DEFAULT``: the name's default tag; ``weights=a1_in1k``: that tag), timm's own preprocessing
(``timm.data.resolve_data_config``) as the input config, and ImageNet's class names for ImageNet weights."""

from __future__ import annotations

from typing import Any, TypeGuard

from torch import nn

from zfexp.errors import CheckpointError, InvalidValueError, UserError

PREFIX = "timm/"


def timm_module():
    """``timm``, or an error saying how to install it."""
    try:
        import timm
    except ImportError as err:
        raise UserError("timm is not installed: pip install 'zfexp[timm]' (or pip install timm) for timm's models") \
            from err
    return timm


def names_timm(network: object) -> TypeGuard[str]:
    """``network=timm/<name>``."""
    return isinstance(network, str) and network.startswith(PREFIX)


def check_timm_name(key: str, name: str) -> None:
    timm = timm_module()
    if not timm.is_model(name):
        close = timm.list_models(f"*{name[:4]}*")[:8] if len(name) >= 4 else []
        raise InvalidValueError(f"{key}={name!r} is not a timm model; e.g. "
                                f"{', '.join(close) or 'resnet18, convnext_tiny'} (timm.list_models() lists them all)")


def timm_default_input(name: str) -> dict[str, Any]:
    """:func:`timm_input` of ``name``'s default pretrained config, read without building the model."""
    cfg = timm_module().models.get_pretrained_cfg(name)
    if cfg is None:
        return {}
    crop = int(cfg.input_size[-1])
    return {"resize": int(round(crop / float(cfg.crop_pct or 1.0))), "crop": crop, "mean": [float(m) for m in cfg.mean],
            "std": [float(s) for s in cfg.std], "interpolation": str(cfg.interpolation or "bilinear")}


def build_timm(name: str, weights: str | None, key: str, **kwargs: Any) -> nn.Module:
    """timm's model ``name`` with ``weights``: ``None``/``"none"`` (random), ``DEFAULT`` (the name's default
    pretrained tag) or a tag (``a1_in1k``), from the Hugging Face cache (downloaded when missing and online).
    Offline with nothing cached, a :class:`CheckpointError` names the repository and where its file goes."""
    timm = timm_module()
    check_timm_name("model.name" if key.startswith("model.") else "network", name)
    if weights is None or str(weights).lower() == "none":
        return timm.create_model(name, pretrained=False, **kwargs)
    full = name if str(weights).upper() == "DEFAULT" else f"{name}.{weights}"
    try:
        pretrained_cfg = timm.models.get_pretrained_cfg(full)
    except Exception:
        pretrained_cfg = None
    if pretrained_cfg is None:
        tags = [m.split(".", 1)[1] for m in timm.list_pretrained(f"{name}.*")]
        raise InvalidValueError(f"{key}={weights!r}: not a pretrained tag of timm's {name}; valid: DEFAULT, "
                                f"{', '.join(tags) or '(none: this model has no pretrained weights)'}, none, or a "
                                "state_dict file")
    try:
        return timm.create_model(full, pretrained=True, **kwargs)
    except Exception as err:
        from huggingface_hub import constants

        repo = pretrained_cfg.hf_hub_id or full
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"{key}={weights}: timm's weights for {full} are not in the Hugging Face cache and "
                              f"could not be downloaded ({type(err).__name__}: {first}). On a machine with internet "
                              f"run `huggingface-cli download {repo}` and copy its folder to "
                              f"{constants.HF_HUB_CACHE}/models--{repo.replace('/', '--')} ($HF_HOME/hub; HF_HOME "
                              f"defaults to ~/.cache/huggingface), or give {key}=<a state_dict file>") from None


def timm_input(net: nn.Module) -> dict[str, Any]:
    """The ``input`` config of timm's preprocessing for ``net`` (``resolve_data_config``): crop the model's input
    size, resize ``crop / crop_pct``, its mean, std and interpolation."""
    data = timm_module().data.resolve_data_config({}, model=net)
    crop = int(data["input_size"][-1])
    return {"resize": int(round(crop / float(data.get("crop_pct") or 1.0))), "crop": crop,
            "mean": [float(m) for m in data["mean"]], "std": [float(s) for s in data["std"]],
            "interpolation": str(data.get("interpolation") or "bilinear")}


def timm_class_names(net: nn.Module) -> list[str] | None:
    """ImageNet's class names when ``net``'s outputs are an ImageNet subset timm knows (its 1000 classes)."""
    from timm.data import ImageNetInfo, infer_imagenet_subset

    subset = infer_imagenet_subset(net)
    if not subset:
        return None
    names = ImageNetInfo(subset).label_descriptions()
    return [n.split(",")[0] for n in names] if len(names) == getattr(net, "num_classes", len(names)) else None


def timm_classifier(name: str, num_classes: int, in_channels: int = 3, input_size: int = 224,
                    weights: str | None = None) -> nn.Module:
    """``train.py model=timm model.name=<name>``: timm's model for ``num_classes`` classes of ``in_channels``
    channels (timm adapts the first conv itself, summing pretrained filters for one channel); ``weights`` as
    :func:`build_timm` (a new classifier for the data's classes)."""
    return build_timm(name, weights, "model.weights", num_classes=num_classes, in_chans=in_channels)
