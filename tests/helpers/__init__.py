"""What the tests give to the entry points they run (importable as ``tests.helpers...`` from a config's
``_target_``: train.py runs from the checkout, so the ``tests`` package is importable in its processes)."""
