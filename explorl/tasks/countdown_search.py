"""Countdown with its search written out: worked answers that contain genuine choices.

Same problems as ``countdown`` (prompt ``"3,5,7>22:"``: reach 22 from 3, 5 and 7, each used at
most once, with ``+ - *``), but the worked answer is a depth-first search over the numbers,
written move by move, whose order is drawn at random at every decision point, ending with ``>``
and the expression that reached the target::

    7-3=4,5*4=20;5+4=9;;5*3=15,15+7=22>(5*3)+7

- A move ``a op b=r`` combines two of the numbers at hand (the larger first; ``-`` only where
  the result is positive; ``*1`` and duplicates at a node are not tried) into ``r``.
- ``,`` after a move: go deeper, with ``r`` in place of ``a`` and ``b``.
- A move whose result is the target ends the search: ``>`` and the expression (every
  intermediate result in parentheses).
- A move that leaves one number, not the target, is a dead end; each ``;`` backs up one level
  (``;`` tries another move at the same node, ``;;`` returns to its parent, ...).

The order of the moves at each node is a fresh random permutation per trace, so at each decision
point several continuations are plausible; the arithmetic inside a move is determined. A trace
longer than ``MAX_TRACE_CHARS`` is drawn again (the search order is redrawn, so the kept traces
are the searches that found the target within the length), which keeps responses short enough
for the CPU testbed.

``reference_completion(problem)`` is one such trace, seeded by the problem's id (a fixed
answer for checks and reference teachers); ``sample_reference(problem, rng)`` draws a new one
per call (what the warm-up trains on: several traces per problem). The verifier reads only the
final answer, after the last ``>``, and scores it as countdown does, so a policy may shorten,
change or drop the search.
"""
from __future__ import annotations

import random
from collections import Counter

from .countdown import MAX_TARGET, parse_expression, parse_prompt
from .problem import Problem, TaskSource
from .scratchpad import ANSWER_MARK, final_answer

MAX_TRACE_CHARS = 80     # a drawn trace longer than this is drawn again (responses <= 96 tokens with room)
MAX_COMPLETION_CHARS = 4096  # longer completions score 0 without being read
DEEPER, BACK = ",", ";"
_DRAWS = 200             # search orders drawn before falling back to the shortest trace found


def moves(items: list[tuple[int, str]]) -> list[tuple[int, int, str, int, str]]:
    """The distinct moves at a node: ``(i, j, op, value, expression)`` for each pair of the numbers
    at hand ``items`` (``(value, expression)``), the larger operand first; ``-`` only where the
    result is positive, no ``*`` by 1, one move per distinct ``a op b``."""
    out, seen = [], set()
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            (a, ea), (b, eb) = items[i], items[j]
            if b > a:
                (a, ea), (b, eb), (i_, j_) = (b, eb), (a, ea), (j, i)
            else:
                i_, j_ = i, j
            for op, value in (("+", a + b), ("-", a - b), ("*", a * b)):
                if (op == "-" and value <= 0) or (op == "*" and 1 in (a, b)) or (a, op, b) in seen:
                    continue
                seen.add((a, op, b))
                out.append((i_, j_, op, value, f"{_wrap(ea)}{op}{_wrap(eb)}"))
    return out


def _wrap(expression: str) -> str:
    return expression if expression.isdigit() else f"({expression})"


def move_text(items, move) -> str:
    i, j, op, value, _ = move
    return f"{items[i][0]}{op}{items[j][0]}={value}"


def search_trace(numbers: list[int], target: int, rng: random.Random) -> str | None:
    """One depth-first search for ``target`` over ``numbers`` in an order drawn from ``rng`` at each
    node, written out; ``None`` when no expression reaches the target."""
    parts: list[str] = []

    def search(items) -> int | None:
        """``None`` once the target is written; else, all moves here exhausted, how far below this
        node the last written move was made (0: at this node)."""
        options = moves(items)
        rng.shuffle(options)
        below = 0
        for n, move in enumerate(options):
            if n:  # back from the last (dead-end) move to this node: one ';' per level, and one more
                parts.append(BACK * (below + 1))
            parts.append(move_text(items, move))
            i, j, _, value, expression = move
            if value == target:
                parts.append(ANSWER_MARK + expression)
                return None
            rest = [x for k, x in enumerate(items) if k not in (i, j)] + [(value, expression)]
            below = 0
            if len(rest) >= 2:
                parts.append(DEEPER)
                deeper = search(rest)
                if deeper is None:
                    return None
                below = deeper + 1
        return below

    if search([(n, str(n)) for n in numbers]) is not None:
        return None
    return "".join(parts)


def random_trace(numbers: list[int], target: int, rng: random.Random, max_chars: int = MAX_TRACE_CHARS) -> str:
    """A search trace of at most ``max_chars`` characters (the order redrawn until one fits; after
    ``_DRAWS`` draws, the shortest drawn). Raises ``ValueError`` when the target is unreachable."""
    best = None
    for _ in range(_DRAWS):
        trace = search_trace(numbers, target, rng)
        if trace is None:
            raise ValueError(f"countdown_search: {target} cannot be reached from {numbers}")
        if len(trace) <= max_chars:
            return trace
        best = trace if best is None or len(trace) < len(best) else best
    return best


def text_roles(completion: str) -> list[str]:
    """The role of each character of a (possibly malformed) trace: ``decision`` for the operands
    and operator of a move (which combination to try: the choices of the search), ``arithmetic``
    for ``=`` and the result, ``control`` for ``,`` ``;`` and the answer mark (deeper, back,
    done), ``answer`` for the expression after the last ``>``."""
    cut = completion.rfind(ANSWER_MARK)
    head = completion if cut < 0 else completion[:cut]
    roles, in_result = [], False
    for ch in head:
        if ch in DEEPER + BACK:
            roles.append("control")
            in_result = False
        elif ch == "=" or in_result:
            roles.append("arithmetic")
            in_result = True
        else:
            roles.append("decision")
    if cut >= 0:
        roles.append("control")
        roles.extend(["answer"] * (len(completion) - cut - 1))
    return roles


class CountdownSearch(TaskSource):
    """Countdown whose worked answer is a randomized depth-first search ending in the answer.

    ``numbers`` values in 1..``max_value``; the target is the value of a random sequence of moves
    that uses every number (``moves``), in 1..``MAX_TARGET`` and never one of the numbers.
    """

    name = "countdown_search"
    param_ranges = {"numbers": (3, 4), "max_value": (3, 9)}

    def generate(self, rng: random.Random, params: dict[str, float]) -> tuple[str, str]:
        count = max(2, int(params["numbers"]))
        numbers = [rng.randint(1, max(1, int(params["max_value"]))) for _ in range(count)]
        for _ in range(50):
            items = [(n, str(n)) for n in numbers]
            while len(items) > 1:
                i, j, _, value, expression = rng.choice(moves(items))
                items = [x for k, x in enumerate(items) if k not in (i, j)] + [(value, expression)]
            target, expression = items[0]
            if 1 <= target <= MAX_TARGET and target not in numbers:
                break
        else:  # the sum of all the numbers always qualifies: it exceeds each of them
            target, expression = sum(numbers), "+".join(map(str, numbers))
        return f"{','.join(map(str, numbers))}>{target}:", expression

    def reference_completion(self, problem: Problem) -> str:
        return self.sample_reference(problem, random.Random(f"trace:{problem.id}"))

    def sample_reference(self, problem: Problem, rng: random.Random) -> str:
        numbers, target = parse_prompt(problem.prompt)
        return random_trace(numbers, target, rng)

    def write_answer(self, expression: str) -> str:
        """An expression written as this verifier reads it (a search with no tries shown)."""
        return ANSWER_MARK + expression

    text_roles = staticmethod(text_roles)

    def score(self, problem: Problem, completion: str) -> float:
        if not isinstance(completion, str) or len(completion) > MAX_COMPLETION_CHARS:
            return 0.0
        answer = final_answer(completion)
        if answer is None:
            return 0.0
        numbers, target = parse_prompt(problem.prompt)
        try:
            value, used = parse_expression(answer)
        except ValueError:
            return 0.0
        if Counter(used) - Counter(numbers):  # a number not given, or used too often
            return 0.0
        return 1.0 if value == target else 0.0
