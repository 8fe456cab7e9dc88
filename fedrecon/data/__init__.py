"""Datasets as flat sample arrays with class and group labels: the dataset type
(``dataset``), the registry of built-in loaders and plug-ins (``registry``) and the
loaders (``omniglot``, ``text``, ``images``). The registry imports no torch."""
