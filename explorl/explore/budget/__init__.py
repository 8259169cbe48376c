from explorl.explore.budget import fixed  # noqa: F401
from explorl.explore.budget import broad, dynamic_sampling, knapsack, xrpo  # noqa: F401
