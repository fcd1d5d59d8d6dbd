"""What the entry points (``train.py``, ``zfexp.analyze``, ``zfexp.features``) share: one run lifecycle
(``lifecycle``), the config's resolvers and groups, loggers, where results go (``outputs``) and how a user's
mistake is reported (``reporting``)."""
