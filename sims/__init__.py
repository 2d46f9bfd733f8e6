"""Traffic simulator: replay traffic against a plan and a scaling policy (``docs/simulator.md``)."""
