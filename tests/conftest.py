"""Test configuration shared by every suite (adapters keep their own conftest files)."""
