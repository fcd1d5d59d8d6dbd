"""Building the objects of a config group (``callbacks``, ``logger``) from their ``_target_`` entries."""

from __future__ import annotations

import logging
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig

log = logging.getLogger(__name__)


def instantiate_group(group: DictConfig | None, what: str) -> list[Any]:
    """Instantiate every ``_target_`` entry of a config group such as ``callbacks`` or ``logger``. An entry with
    settings but no ``_target_`` is left over from an experiment whose group choice the command line replaced;
    it is skipped with a warning that says how to bring it back."""
    if not group:
        return []
    objects = []
    for key, conf in group.items():
        if isinstance(conf, DictConfig) and "_target_" in conf:
            log.info("instantiating %s %s <%s>", what, key, conf._target_)
            objects.append(instantiate(conf))
        elif isinstance(conf, DictConfig):
            log.warning("%s %s has settings but no _target_ (its config file is not among the chosen ones), so it "
                        "is skipped; to keep it, choose it too, e.g. %s=[default,%s]", what, key, group._key(), key)
    return objects
