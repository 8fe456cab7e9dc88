"""What is learned and merged: class statistics, their merges and the heads built from
them, LoRA adapters and their merges, drift, one training loop, the fine-tuning baseline
and evaluation. ``stats``, ``prototype_merges``, ``heads`` and ``adapter_merges`` need
numpy only."""
