"""Task sources from reasoning-gym's procedural datasets (``kind: reasoning_gym``).

    tasks:
      arith:
        kind: reasoning_gym
        dataset: basic_arithmetic            # any reasoning-gym dataset name
        config: {size: 100000, seed: 0}      # passed to the dataset's config (size, seed, its options)
        levels: {num_terms: [0, 1]}          # optional: the curriculum levels to use, per attribute
        weight: 1.0

Problems. A dataset is ``size`` items (``config.size``, else the dataset's default) generated
from ``config.seed`` (default 0: reasoning-gym would otherwise draw a random seed). A
training problem is item ``i`` of that dataset, ``i`` drawn from the problem's seed; held-out
problems are items of a second dataset of the same configuration seeded ``seed + size``.
Nearly every reasoning-gym generator draws item ``i`` from ``Random(seed + i)``, so the
held-out items come from streams no training item uses: the held-out set never overlaps
training by construction. (Datasets that draw items from a fixed pool, as ``gsm_symbolic``
does from its templates, may repeat a template with other numbers.) Ids are
``<name>/<dataset>/<levels>/<i>`` for training items and ``…/heldout<i>`` for held-out ones
(``<levels>`` only when the source has parameters), so one id names one item.

Difficulty parameters. A dataset with a curriculum (reasoning-gym's ``*Curriculum``: named
attributes, each an ordered list of levels, easiest first) gets one integer parameter per
attribute: its level index, in ``[0, len(levels) - 1]`` (``levels:`` narrows the range). A
parameter cell (one level per attribute) configures the dataset the way reasoning-gym's
curriculum does (``DefaultCurriculumContext``): with ``mode: upper_bound`` (default) a range
attribute spans exactly its level's value (or, for attributes that need an interval, the
previous level's value up to it), with ``mode: inclusive`` it spans from the easiest value up
to its level's. An attribute whose config fields you set in ``config:`` is fixed and is not a
parameter. A dataset without a curriculum has no parameters. Curricula that act on levels
(``alp_gmm``, ``learnability``, ``dump``, ``knapsack`` with ``key: params``) therefore work on
reasoning-gym sources as they are.

Caching. Each parameter cell builds its dataset once (many datasets load a word list or a
puzzle bank when built) and the last ``ENTRY_CACHE`` generated items are kept, so a problem
drawn again, and every completion of a group, costs a dictionary look-up.

Verification: the dataset's own ``score_answer(completion, entry)``, with the entry
regenerated from the problem's id and parameters (the verifier runs in another process; the
source pickles without its caches and rebuilds them there). The reward is 1 when it scores the
completion exactly 1, else 0: reasoning-gym's partial credit (e.g. ``len(answer) /
len(completion)`` for a completion that merely contains the answer) would pay garbage such as
``"9" * 5000``, and a sum of partial credits can round past 1 (``spell_backward`` scores the
answer followed by a stray letter 1.0000000000000002 for some word lengths).
``dataset_score`` gives the dataset's score as it is. The answer is taken out of the completion
by ``extractor`` (``explorl.tasks.extractors``: ``none``, the stripped completion, by default;
``answer_tags`` for the ``<answer>…</answer>`` reasoning-gym's prompts ask a model for); a
completion without one, or longer than 4 times the reference plus 1024 characters, scores 0
unread. A verifier process imports reasoning-gym when it receives the source, before any time
limit runs; the first item of a cell there builds the cell's dataset within
``verify.timeout`` (raise it for a dataset slow to build).
"""
from __future__ import annotations

import difflib
import random
from collections import OrderedDict
from dataclasses import fields

from .extractors import Extractor
from .kinds import register_kind
from .problem import Problem, TaskSource

#: Generated items kept per source (in each process that uses it).
ENTRY_CACHE = 4096
MODES = ("upper_bound", "inclusive")
#: A completion longer than this many times the answer (plus a margin) scores 0 unread: some
#: datasets parse completions with slow parsers, and no model emits that much for a short answer.
_LENGTH_FACTOR, _LENGTH_MARGIN = 4, 1024


def _gym():
    """reasoning-gym's dataset registry (``reasoning_gym.factory``), or an error that says how to
    install the package."""
    try:
        from reasoning_gym import factory
    except ImportError as err:
        raise ValueError(f"kind: reasoning_gym needs the reasoning-gym package ({err}); "
                         f"install it with: pip install -e .[gym]") from None
    return factory


class Attribute:
    """One curriculum attribute: its name, the config fields it sets, and how many levels it has."""

    def __init__(self, attr):
        from reasoning_gym.coaching import RangeAttributeDefinition
        self.name = attr.name
        self.fields = ((attr.lower_field_name, attr.upper_field_name)
                       if isinstance(attr, RangeAttributeDefinition) else (attr.field_name,))
        self.levels = len(attr.levels)


class ReasoningGymSource(TaskSource):
    """Problems of one reasoning-gym dataset, verified by its ``score_answer`` (module docstring)."""

    integer_params = True

    def __init__(self, name: str, dataset: str, config: dict | None = None, levels: dict | None = None,
                 mode: str = "upper_bound", extractor: str = "none", pattern: str = ""):
        factory = _gym()
        self.name, self.dataset = name, dataset
        where = f"task source {name!r} (reasoning_gym dataset {dataset!r})"
        if not isinstance(dataset, str) or dataset not in factory.DATASETS:
            close = difflib.get_close_matches(str(dataset), list(factory.DATASETS), n=5)
            raise ValueError(f"task source {name!r}: unknown reasoning-gym dataset {dataset!r}"
                             + (f" (did you mean {', '.join(close)}?)" if close else
                                f" (known: {', '.join(sorted(factory.DATASETS))})"))
        if mode not in MODES:
            raise ValueError(f"{where}: mode must be one of {', '.join(MODES)}, got {mode!r}")
        try:
            self.extractor = Extractor(extractor, pattern)
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from None
        self.mode = mode
        config = {} if config is None else config
        if not isinstance(config, dict):
            raise ValueError(f"{where}: config must be a mapping of the dataset's options, got {config!r}")
        config_cls = factory.DATASETS[dataset][1]
        known = {f.name: f for f in fields(config_cls)}
        unknown = sorted(set(config) - set(known))
        if unknown:
            raise ValueError(f"{where}: unknown config key(s) {unknown} (valid: {', '.join(known)})")
        self.config = dict(config)
        self.config.setdefault("seed", 0)
        default_size = known["size"].default if "size" in known else 500
        self.config.setdefault("size", default_size)
        for key in ("seed", "size"):
            value = self.config[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < (key == "size"):
                raise ValueError(f"{where}: config.{key} must be a {'positive' if key == 'size' else 'non-negative'} "
                                 f"integer, got {value!r}")
        self.size = self.config["size"]

        self.attributes = [a for a in self._curriculum_attributes() if not set(a.fields) & set(config)]
        ranges = {a.name: (0, a.levels - 1) for a in self.attributes}
        for key, value in (levels or {}).items():
            if key not in ranges:
                raise ValueError(f"{where}: levels.{key}: not a curriculum attribute of the dataset "
                                 f"(attributes: {', '.join(ranges) or 'none'}; an attribute whose fields "
                                 f"are set in config is fixed)")
            low, high = (value, value) if isinstance(value, int) and not isinstance(value, bool) else \
                (tuple(value) if isinstance(value, (list, tuple)) and len(value) == 2 else (None, None))
            top = ranges[key][1]
            if not all(isinstance(v, int) and not isinstance(v, bool) for v in (low, high)) \
                    or not 0 <= low <= high <= top:
                raise ValueError(f"{where}: levels.{key} must be a level index or a [low, high] pair "
                                 f"with 0 <= low <= high <= {top}, got {value!r}")
            ranges[key] = (low, high)
        self.param_ranges = ranges
        self._reset_caches()
        self._dataset(self.clip_params({}), "train")  # a configuration the dataset refuses fails now

    # ---- the curriculum -----------------------------------------------------------------
    def _curriculum(self):
        factory = _gym()
        return factory.create_curriculum(self.dataset) if factory.has_curriculum(self.dataset) else None

    def _curriculum_attributes(self) -> list[Attribute]:
        curriculum = self._curriculum()
        return [Attribute(a) for a in curriculum.attributes.values()] if curriculum else []

    def cell_config(self, params: dict) -> dict:
        """The dataset's config options for the parameter cell ``params`` (level per attribute)."""
        from reasoning_gym.coaching.base_curriculum import DefaultCurriculumContext, RangeAttributeMode
        out = dict(self.config)
        if not self.attributes:
            return out
        curriculum = self._curriculum()
        context = DefaultCurriculumContext(mode=RangeAttributeMode(self.mode))
        for a in self.attributes:
            curriculum.set_attr_level(a.name, int(params[a.name]))
        for a in self.attributes:
            value = context.get_attr_value(curriculum, curriculum.attributes[a.name])
            if len(a.fields) == 2:
                value = list(value) if isinstance(value, (list, tuple)) else [value]
                out[a.fields[0]], out[a.fields[1]] = min(value), max(value)
            else:
                out[a.fields[0]] = value
        return out

    # ---- datasets and items, cached ---------------------------------------------------------
    def _reset_caches(self) -> None:
        self._datasets: dict = {}
        self._entries: OrderedDict = OrderedDict()

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_datasets", None)
        state.pop("_entries", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reset_caches()
        _gym()  # importing reasoning-gym takes seconds: in a verifier process, before any time limit runs

    @staticmethod
    def _cell(params: dict) -> tuple:
        return tuple(sorted((k, int(v)) for k, v in params.items()))

    def _dataset(self, params: dict, split: str):
        key = (self._cell(params), split)
        if key not in self._datasets:
            factory = _gym()
            dataset_cls, config_cls = factory.DATASETS[self.dataset]
            options = self.cell_config(params)
            if split == "heldout":
                options["seed"] = options["seed"] + self.size
            try:
                self._datasets[key] = dataset_cls(config=config_cls(**options))
            except Exception as err:  # the dataset's own validation (often an AssertionError)
                at = f" at levels {dict(self._cell(params))}" if params else ""
                raise ValueError(f"task source {self.name!r}: reasoning-gym dataset {self.dataset!r} refuses "
                                 f"its configuration{at}: {type(err).__name__}: {err}") from None
        return self._datasets[key]

    def entry(self, params: dict, split: str, index: int) -> dict:
        """Item ``index`` of the ``split`` ("train" or "heldout") dataset of the cell ``params``."""
        key = (self._cell(params), split, index)
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        dataset = self._dataset(params, split)
        try:
            item = dataset[index]
        except Exception as err:
            at = f" at levels {dict(self._cell(params))}" if params else ""
            raise ValueError(f"task source {self.name!r}: reasoning-gym dataset {self.dataset!r} failed to "
                             f"generate item {index}{at}: {type(err).__name__}: {err} (narrow it with "
                             f"levels: or config:)") from None
        self._entries[key] = item
        if len(self._entries) > ENTRY_CACHE:
            self._entries.popitem(last=False)
        return item

    def _problem(self, params: dict, split: str, index: int) -> Problem:
        item = self.entry(params, split, index)
        answer = item.get("answer")
        if answer is None:
            raise ValueError(f"task source {self.name!r}: reasoning-gym dataset {self.dataset!r} gives item "
                             f"{index} no reference answer; explorl needs one (for the warm start and checks)")
        parts = [self.name, self.dataset]
        if params:
            parts.append("-".join(f"{k}{int(params[k])}" for k in sorted(params)))
        parts.append(f"{'heldout' if split == 'heldout' else ''}{index}")
        return Problem(id="/".join(parts), prompt=item["question"], answer=str(answer), source=self.name,
                       params=dict(params))

    # ---- the TaskSource protocol ------------------------------------------------------------
    def generate(self, rng: random.Random, params: dict[str, float]) -> tuple[str, str]:
        p = self._problem(self.clip_params(params), "train", rng.randrange(self.size))
        return p.prompt, p.answer

    def problem(self, seed: int, params: dict[str, float] | None = None) -> Problem:
        """Training item ``i`` of the cell ``params`` (else drawn from the seed), ``i`` drawn from the seed."""
        rng = random.Random(f"{self.name}:{seed}")
        params = self.clip_params(params) if params is not None else self.sample_params(rng)
        return self._problem(params, "train", rng.randrange(self.size))

    def eval_set(self, n: int, seed: int = 0) -> list[Problem]:
        """Up to ``n`` distinct held-out items (cells uniform), in an order fixed by ``seed``."""
        rng = random.Random(f"{self.name}:heldout:{seed}")
        indices = rng.sample(range(self.size), min(n, self.size))
        return [self._problem(self.sample_params(rng), "heldout", i) for i in indices]

    def _item_of(self, problem: Problem) -> tuple[object, dict]:
        """The dataset and entry a problem of this source was generated from."""
        last = problem.id.rsplit("/", 1)[-1]
        split = "heldout" if last.startswith("heldout") else "train"
        index = int(last[len("heldout"):] if split == "heldout" else last)
        params = self.clip_params(problem.params)
        return self._dataset(params, split), self.entry(params, split, index)

    def reference_completion(self, problem: Problem) -> str:
        return self.extractor.reference(problem.answer)

    def extract_answer(self, completion: str) -> str | None:
        return self.extractor.extract(completion)

    def dataset_score(self, problem: Problem, completion: str) -> float:
        """The dataset's own ``score_answer`` of the completion's answer, partial credit included
        (0 without an answer, or for a completion far longer than the reference)."""
        if len(completion) > _LENGTH_FACTOR * len(problem.answer) + _LENGTH_MARGIN:
            return 0.0
        answer = self.extractor.extract(completion)
        if answer is None:
            return 0.0
        dataset, item = self._item_of(problem)
        return dataset.score_answer(answer, item)

    def score(self, problem: Problem, completion: str) -> float:
        return 1.0 if self.dataset_score(problem, completion) == 1.0 else 0.0


register_kind("reasoning_gym")(ReasoningGymSource)
