from explorl.explore.curriculum import uniform  # noqa: F401
from explorl.explore.curriculum import alp_gmm, bandit, dump, learnability  # noqa: F401
