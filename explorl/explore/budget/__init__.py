from explorl.explore.budget import fixed  # noqa: F401
