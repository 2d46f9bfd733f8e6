"""Serving adapter: a plan as Triton Inference Server runs it.

Pure layers first: ``settings`` and ``config`` (plan numbers -> ``ModelConfig``), ``repository``
(packed group -> repositories, files), ``metrics.parse/signals`` and ``control.decide``. Around
them the parts that talk to a process: ``local`` (a real tritonserver), ``control.ServerControl``
(repository API), ``metrics.scrape``. The core (``packer``) never imports this package.
See docs/serving.md.
"""
