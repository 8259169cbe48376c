from explorl.explore.advantage import grpo  # noqa: F401
