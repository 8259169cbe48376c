"""``explorl compare``: recipes × seeds trained to the same budget of generated tokens, their
results, leaderboard and report (see ``explorl.compare.study``)."""
from explorl.compare.study import run_compare

__all__ = ["run_compare"]
