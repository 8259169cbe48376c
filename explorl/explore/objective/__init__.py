from explorl.explore.objective import entropy, kl, ppo_clip  # noqa: F401
