from explorl.explore.reference import initial, soup  # noqa: F401
