"""The defaults live in conf/, and the classes say the same: a user who builds a callback, the module or a
datamodule from Python gets what docs/recipe.md (and a run of train.py) states."""

import dataclasses
import inspect
from pathlib import Path

import pytest
from hydra.utils import get_object
from omegaconf import OmegaConf

from tests.conftest import ROOT
from zfexp.data.transforms import Preprocessing
from zfexp.module import ImageClassifier

CONF = ROOT / "conf"


def yaml_values(path: Path, node: str | None = None) -> dict:
    """The plain values of a config file (or of one node of it), interpolations and defaults lists left out."""
    values = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    values = values[node] if node else values
    return {k: v for k, v in values.items() if k not in ("defaults", "_target_")
            and not (isinstance(v, str) and v.startswith("${"))}


def python_defaults(signature_of) -> dict:
    if dataclasses.is_dataclass(signature_of):
        return {f.name: f.default for f in dataclasses.fields(signature_of)}
    return {name: p.default for name, p in inspect.signature(signature_of).parameters.items()
            if p.default is not inspect.Parameter.empty}


def differences(yaml: dict, python: dict) -> dict:
    normalised = {k: list(v) if isinstance(v, tuple) else v for k, v in python.items()}
    return {k: (v, normalised[k]) for k, v in yaml.items() if k in normalised and v != normalised[k]}


def defines_its_defaults(target: str) -> bool:
    """A class of ours whose defaults are its own (``BestCheckpoint`` takes Lightning's ``ModelCheckpoint``'s,
    which its config sets as the paper's runs want them)."""
    made_by = get_object(target) if target.startswith("callbacks.") else None
    made_by = made_by if inspect.isfunction(made_by) else getattr(made_by, "__init__", None)
    return getattr(made_by, "__module__", "").startswith("callbacks.")


OUR_CALLBACKS = sorted(p for p in (CONF / "callbacks").glob("*.yaml")
                       if defines_its_defaults(str(OmegaConf.load(p).get(p.stem, {}).get("_target_", ""))))


def shared_settings(path: Path) -> dict:
    """The values a config file takes from ``conf/analysis/`` (its defaults list's ``/analysis/<name>@...``)."""
    values: dict = {}
    for entry in OmegaConf.to_container(OmegaConf.load(path)).get("defaults", []):
        if isinstance(entry, str) and entry.lstrip("/").startswith("analysis/"):
            values.update(yaml_values(CONF / (entry.lstrip("/").split("@")[0] + ".yaml")))
    return values


@pytest.mark.parametrize("path", OUR_CALLBACKS, ids=lambda p: p.stem)
def test_a_callbacks_config_states_its_classs_own_defaults(path):
    node = OmegaConf.load(path)[path.stem]
    target = get_object(node._target_)
    values = {**shared_settings(path), **yaml_values(path, path.stem)}
    assert differences(values, python_defaults(target)) == {}
    assert set(values) <= set(python_defaults(target)), set(values) - set(python_defaults(target))


def test_the_analyses_and_the_callbacks_share_their_figures_settings():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF), version_base="1.3"):
        analyze = compose("analyze", overrides=["ckpt_path=x.ckpt"])
        train = compose("train", overrides=["callbacks=paper"])
    pairs = {"deconv": ("deconv", "deconv_snapshots"), "top9": ("top9", "top_activations"),
             "occlusion": ("occlusion", "occlusion_maps"), "invariance": ("invariance", "invariance_curves")}
    assert {p.stem for p in (CONF / "analysis").glob("*.yaml")} == set(pairs)
    for name, (analysis, callback) in pairs.items():
        shared = yaml_values(CONF / "analysis" / f"{name}.yaml")
        assert shared, name
        for key, value in shared.items():  # one value, written once, in both entry points' configs
            assert analyze[analysis][key] == train.callbacks[callback][key] == value, (name, key)


@pytest.mark.parametrize("yaml_path, node, target", [
    ("train.yaml", "module", ImageClassifier),
    ("data/base.yaml", None, "zfexp.data.base.ImageClassificationDataModule"),
    ("data/base.yaml", "preprocess", Preprocessing),
    ("data/base_few_shot.yaml", None, "zfexp.data.few_shot.FewShotDataModule"),
])
def test_the_module_the_datamodules_and_the_preprocessing_default_to_their_configs(yaml_path, node, target):
    target = get_object(target) if isinstance(target, str) else target
    yaml = yaml_values(CONF / yaml_path, node)
    yaml.pop("preprocess", None)  # compared on its own, against Preprocessing
    assert differences(yaml, python_defaults(target)) == {}
    assert set(yaml) <= set(python_defaults(target)) | {"root"}, set(yaml) - set(python_defaults(target))


def test_the_comparison_sees_a_difference():
    assert differences({"every_n_train_steps": 200, "lr": 0.01}, {"every_n_train_steps": 500, "lr": 0.01}) == {
        "every_n_train_steps": (200, 500)}
