"""Per-node agent daemon and the training runtime that user scripts import."""
