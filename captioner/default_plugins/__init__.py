"""The built-in model plugins, one module per provider wire format.

They are registered in-package by `captioner.plugins` (as `llm` and Datasette
register theirs) through the same hooks a third-party plugin implements.
"""
