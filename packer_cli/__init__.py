"""The application layer: the ``packer`` command line, wiring the core (``packer``) to the
adapters (``serving``, ``sims``, ``k8s``) and to the machine (NVML discovery).

Nothing imports it but its own entry points; it may import anything. The layers below are kept
by import-linter's contracts in ``pyproject.toml`` (``tests/test_layers.py``).
"""
