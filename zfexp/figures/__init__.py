"""The paper's pictures from analysis results: image grids (``grid``), feature tiles and sheets
(``feature_tiles``: Figs. 2, 4, 6) and matplotlib panels (``plots``: Figs. 5, 7). Pure: tensors in, images
(``[3, H, W]`` in [0, 1]) or figures out; writing them somewhere is ``zfexp.runs.outputs``' job."""
