"""Payload checks and the Flower strategies: ``recon`` (class statistics), ``adapter_steps``
(adapters trained together first) and ``finetune`` (the FedAvg baseline). Their merge
policies are Flower-free, in ``fedrecon.learning.prototype_merges`` and ``adapter_merges``.
Import the module you need."""
