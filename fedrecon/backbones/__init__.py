"""Feature extractors: a registry of built-in backbones and the plug-in protocol (``registry``),
the modules themselves, embedding and the embedding cache. Import the submodules you need:
the registry imports no torch."""
