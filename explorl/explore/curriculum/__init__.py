from explorl.explore.curriculum import uniform  # noqa: F401
from explorl.explore.curriculum import alp_gmm, bandit, dump, learnability, uniform_pool  # noqa: F401
