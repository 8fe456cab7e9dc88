"""Merge policies (``policies``, no Flower), payload checks, and the Flower strategies:
``recon`` (class statistics), ``adapter_steps`` (adapters trained together first) and
``finetune`` (the FedAvg baseline). Import the module you need."""
