"""Test configuration shared by every suite (adapters keep their own conftest files)."""

from hypothesis import settings

# 20 generated fleets per property in CI; `pytest --hypothesis-profile=deep` searches 300.
settings.register_profile("ci", max_examples=20)
settings.register_profile("deep", max_examples=300)
settings.load_profile("ci")
