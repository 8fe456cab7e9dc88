"""Flower ServerApp (the clock), run reports and the ``fedrecon`` CLI."""
