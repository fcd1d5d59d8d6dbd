"""Train a network of the ZFNet family with Hydra configs from conf/.

    python train.py experiment=quickstart                     # the main job (Fashion-MNIST, CPU is fine)
    python train.py experiment=paper_imagenet data.root=/path/to/imagenet trainer=gpu
    python train.py ckpt_path=last                            # resume the newest run's last checkpoint
    python train.py -m model.remove=[],[conv3,conv4]          # a multirun

Writes checkpoints, metrics.json and the resolved config into logs/<task_name>/runs/<time>/; the task itself is
``zfexp.training.train``.
"""

import logging
import sys

import hydra
from omegaconf import DictConfig

from zfexp.errors import UserError
from zfexp.runs.launchers import check_launcher_extra, check_launcher_reachable, quiet_repeated_launcher_warnings
from zfexp.runs.reporting import reported_errors
from zfexp.training import train

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    with reported_errors():
        metrics = train(cfg)
    # Sweepers (Optuna, Ax, ...) minimise what this returns.
    key = cfg.get("optimized_metric")
    if key is None:
        return None
    if metrics.get(key) is None:  # a run that stopped early, or test=false (val/ comes from its final evaluation)
        log.info("optimized_metric=%s: this run recorded no such metric; a sweeper gets None", key)
        return None
    return float(metrics[key])


if __name__ == "__main__":
    try:
        check_launcher_extra(sys.argv[1:])
        check_launcher_reachable(sys.argv[1:])
    except UserError as err:
        sys.exit(f"Error: {err}")
    quiet_repeated_launcher_warnings()
    main()
