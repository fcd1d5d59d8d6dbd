"""What the tests share: image trees (``image_trees``), multiruns (``multiruns``), W&B's offline records
(``wandb_records``), and what they give to the entry points they run (``diverging``: importable as
``tests.helpers...`` from a config's ``_target_``: train.py runs from the checkout, so the ``tests`` package is
importable in its processes). Tests import helpers from here, never from each other's modules."""
