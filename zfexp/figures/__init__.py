"""The paper's pictures from analysis results: image grids (``grid``), feature tiles and sheets
(``feature_tiles``: Figs. 2, 4, 6) and matplotlib panels (``plots``: Figs. 5, 7). ``grid`` and ``plots`` are
pure: tensors in, images (``[3, H, W]`` in [0, 1]) or figures out. ``feature_tiles`` also runs the deconvnet
(:class:`~zfexp.analysis.deconv.DeconvNet`) for the units it lays out, since each tile is a unit's projection
cut to its receptive field. Writing pictures somewhere is ``zfexp.runs.outputs``' job."""
