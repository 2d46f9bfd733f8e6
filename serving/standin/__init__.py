"""The stand-in Triton Python-backend model (``model.py``), copied into rendered repositories.

It is a package only so that wheels carry ``model.py``; it is never imported here (it needs
``triton_python_backend_utils``, which exists only inside Triton's Python backend).
"""

from pathlib import Path

MODEL_PY = Path(__file__).with_name("model.py")
