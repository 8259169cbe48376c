from explorl.explore.decoding import constant  # noqa: F401
