"""What is learned and merged: class statistics and the heads built from them, LoRA
adapters and their merges, drift, one training loop, the fine-tuning baseline and
evaluation. ``stats``, ``heads`` and ``adapter_merges`` need numpy only."""
