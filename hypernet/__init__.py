"""Text-to-LoRA: a hypernetwork that turns a task description into a LoRA adapter in one forward pass.

This package is the model library (network, embedder, base-model helpers, adapter and checkpoint I/O,
CLI). It never imports the web service in ``server/``.
"""
