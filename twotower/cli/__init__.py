"""Command-line entry points, one module per command, each with a ``main()``.

``scripts/X.py`` wrap these; ``pyproject.toml`` installs them as ``twotower-*`` console scripts; and
``python -m twotower.cli.X`` runs one from the repository root without installing the package. Nothing
here imports torch: the serving-side commands (batch_score, bench_serving, check_adaptation) stay torch-free.
"""
