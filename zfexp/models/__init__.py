"""Model builders: the ZFNet family with layers named as in the paper (conv1..conv5, fc6..fc8)."""

from zfexp.models.zfnet import (
                                CONV_NAMES,
                                FC_NAMES,
                                LAYER_NAMES,
                                PRESETS,
                                ZFNet,
                                alexnet,
                                alexnet_small,
                                build_zfnet_family,
                                zfnet,
                                zfnet_small,
                                zfnet_v2,
)

__all__ = ["CONV_NAMES", "FC_NAMES", "LAYER_NAMES", "PRESETS", "ZFNet", "alexnet", "alexnet_small",
           "build_zfnet_family", "zfnet", "zfnet_small", "zfnet_v2"]
