from explorl.explore.objective import entropy, kl, ppo_clip  # noqa: F401
from explorl.explore.objective import adaptive_entropy, aepo, clip_cov, entropy_quantile, epo, kl_cov, lp_reg  # noqa: F401
