"""The paper's pictures from analysis results: image grids (``grid``), the Fig. 2 sheet and table and the Fig. 6
filter grid (``feature_tiles``) and matplotlib panels (``plots``: Figs. 5, 7). Every module is pure: tensors in,
images (``[3, H, W]`` in [0, 1]) or figures out; the units they lay out are computed by ``zfexp.analysis``
(``unit_crops``), and writing pictures somewhere is ``zfexp.runs.outputs``' job."""
