"""Building the objects of a config group (``callbacks``, ``logger``) from their ``_target_`` entries."""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

log = logging.getLogger(__name__)
_CONFIG_KEY: ContextVar[str | None] = ContextVar("config_key", default=None)


def config_key(default: str) -> str:
    """The full config key of the group entry :func:`instantiate_group` is building (``callbacks.occlusion_maps``),
    else ``default`` (an object built from Python: its class name)."""
    return _CONFIG_KEY.get() or default


def instantiate_group(group: DictConfig | None, what: str) -> list[Any]:
    """Instantiate every ``_target_`` entry of a config group such as ``callbacks`` or ``logger``. An entry with
    settings but no ``_target_`` is left over from an experiment whose group choice the command line replaced;
    it is skipped with a warning that says how to bring it back.

    While an entry is built, :func:`config_key` gives its full key (``callbacks.filter_renorm``): an object of
    ours names its settings by it in its messages (``callbacks.filter_renorm.radius=0: ...``)."""
    if not group:
        return []
    objects = []
    for key, conf in group.items():
        if isinstance(conf, DictConfig) and "_target_" in conf:
            log.info("instantiating %s %s <%s>", what, key, conf._target_)
            # str(): a config group's keys are the strings its YAML names them by (DictConfig types them wider)
            token = _CONFIG_KEY.set(f"{group._get_full_key(None) or what}.{str(key)}")
            try:
                objects.append(instantiate(conf))
            finally:
                _CONFIG_KEY.reset(token)
        elif isinstance(conf, DictConfig):
            log.warning("%s %s has settings but no _target_ (its config file is not among the chosen ones), so it "
                        "is skipped; to keep it, choose it too, e.g. %s=[default,%s]", what, key, group._key(), key)
    return objects
