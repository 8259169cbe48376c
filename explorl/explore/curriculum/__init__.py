from explorl.explore.curriculum import uniform  # noqa: F401
