"""Rollout shape: how a problem's rollouts are drawn — independent sequences, or a tree of
continuations that share prefixes (``explorl.policy.tree``)."""
from explorl.explore.rollout import flat  # noqa: F401
from explorl.explore.rollout import tree  # noqa: F401
from explorl.explore.rollout import ets  # noqa: F401
from explorl.explore.rollout import dts  # noqa: F401
