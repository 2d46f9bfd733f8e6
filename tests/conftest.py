"""Test configuration shared by every suite (adapters keep their own conftest files)."""

from hypothesis import settings

# 20 generated fleets per property in CI, the same 20 every run (derandomize): a property that a
# random draw breaks once in a while makes CI flaky, not the code better. New cases are searched
# for with `pytest --hypothesis-profile=deep` (300 random examples), and what it finds is kept
# as an explicit @example.
settings.register_profile("ci", max_examples=20, derandomize=True)
settings.register_profile("deep", max_examples=300)
settings.load_profile("ci")
