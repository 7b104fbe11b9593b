"""A teacher–student classification task, generated (no download), where batch size matters."""
