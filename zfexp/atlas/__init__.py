"""An atlas of every unit: Fig. 2 for every map of every chosen layer of a network, as a static site (a page per
layer and per map, opened from disk or any web server) and as W&B tables (a row per map, to sort and filter).

    python -m zfexp.atlas ckpt_path=logs/train/runs/<time>/checkpoints/last.ckpt
    python -m zfexp.atlas network=resnet18 weights=DEFAULT images=~/photos

In training, ``callbacks.atlas`` (``callbacks=[paper,atlas]``) writes the same at the end of fit."""

from zfexp.atlas.build import write_atlas
from zfexp.atlas.units import AtlasLayer, UnitChunk, layer_chunks, top_k_every_map

__all__ = ["AtlasLayer", "UnitChunk", "layer_chunks", "top_k_every_map", "write_atlas"]
