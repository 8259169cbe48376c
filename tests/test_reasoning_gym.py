"""reasoning-gym datasets as task sources (``kind: reasoning_gym``): problems from the dataset,
its ``score_answer`` as the verifier, curriculum attributes as difficulty parameters, held-out
items apart from training ones, the testbed alphabet extended to their text, and a run from
the CLI with ALP-GMM over the attributes."""
import json
import random
import re
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("reasoning_gym")

from explorl.tasks import ALPHABET, TaskMix, TaskSource  # noqa: E402
from explorl.tasks.checker import check_task  # noqa: E402
from explorl.tasks.kinds import make_task_source  # noqa: E402
from run_records import run_metrics

EXAMPLE = Path(__file__).resolve().parent.parent / "configs" / "examples" / "reasoning_gym_alp_gmm.yaml"


def gym(dataset, name=None, **options):
    return make_task_source(name or dataset, {"kind": "reasoning_gym", "dataset": dataset, **options})


def arithmetic(**options):
    return gym("basic_arithmetic", "arith", config={"size": 100_000}, **options)


def spelling(**options):
    return gym("spell_backward", "spell", config={"size": 100_000}, levels={"word_len": [0, 3]}, **options)


def test_problems_are_the_datasets_items_deterministic_with_distinct_ids():
    from reasoning_gym.factory import DATASETS
    src = arithmetic()
    seeds = [10**9 + i for i in range(300)]
    first = [src.problem(s) for s in seeds]
    again = [arithmetic().problem(s) for s in seeds]  # a fresh source: nothing cached
    assert [(p.id, p.prompt, p.answer, p.params) for p in first] == \
           [(p.id, p.prompt, p.answer, p.params) for p in again]
    assert len({p.id for p in first}) == len(first)
    assert len({p.prompt for p in first}) > 250
    # the problem is the dataset's item: the same config at the problem's levels, the index in its id
    p = first[0]
    dataset_cls, config_cls = DATASETS["basic_arithmetic"]
    index = int(p.id.rsplit("/", 1)[1])
    item = dataset_cls(config=config_cls(**src.cell_config(p.params)))[index]
    assert (p.prompt, p.answer) == (item["question"], item["answer"])
    assert p.id.startswith("arith/basic_arithmetic/")
    # sample() draws from the training seeds, deterministically for an rng
    assert src.sample(random.Random(3)) == src.sample(random.Random(3))


def test_score_answer_is_the_verifier_in_the_verifier_process():
    from explorl.tasks.guard import GuardedVerifier
    mix = TaskMix({"arith": arithmetic(), "spell": spelling()})
    rng = random.Random(0)
    problems = [mix.sample(rng, source=s) for s in ("arith", "spell") for _ in range(4)]
    problems += mix.eval_sets(2)["arith"] + mix.eval_sets(2)["spell"]
    spell = [p for p in problems if p.source == "spell"]
    verifier = GuardedVerifier(mix, timeout=30.0)  # the first verification in a fresh process builds datasets
    try:
        rewards, faults = verifier.score(problems, [p.answer for p in problems])
        assert rewards == [1.0] * len(problems) and faults == []
        wrong = [str(int(p.answer) + 1) if p.source == "arith" else p.answer + "x" for p in problems]
        rewards, faults = verifier.score(problems, wrong)
        assert rewards == [0.0] * len(problems) and faults == []
        # spell_backward's score_answer ignores case: that is the dataset's verifier, not string equality
        rewards, _ = verifier.score(spell, [p.answer.upper() for p in spell])
        assert rewards == [1.0] * len(spell)
        # its partial credit for a right prefix (0.8 for 4 of 5 letters) is not a solve
        prefix = [p.answer[:-1] + ("a" if p.answer[-1] != "a" else "b") for p in spell]
        assert all(0 < mix.sources["spell"].dataset_score(p, c) < 1 for p, c in zip(spell, prefix))
        rewards, _ = verifier.score(spell, prefix)
        assert rewards == [0.0] * len(spell)
    finally:
        verifier.close()


def test_curriculum_attributes_become_param_ranges():
    from reasoning_gym.factory import create_curriculum
    curriculum = create_curriculum("basic_arithmetic")
    src = arithmetic()
    assert src.param_ranges == {name: (0, len(a.levels) - 1) for name, a in curriculum.attributes.items()}
    assert src.integer_params
    assert arithmetic(levels={"num_terms": [0, 1], "num_digits": 2}).param_ranges == \
        {"num_terms": (0, 1), "num_digits": (2, 2)}
    # an attribute fixed in config is no parameter; a dataset without a curriculum has none
    fixed = gym("basic_arithmetic", config={"min_digits": 2, "max_digits": 2})
    assert list(fixed.param_ranges) == ["num_terms"]
    assert gym("gsm_symbolic").param_ranges == {}
    with pytest.raises(ValueError, match="levels.num_digits.*<= 3"):
        arithmetic(levels={"num_digits": [0, 9]})
    with pytest.raises(ValueError, match="levels.words: not a curriculum attribute"):
        arithmetic(levels={"words": 1})
    with pytest.raises(ValueError, match="did you mean basic_arithmetic"):
        gym("basic_arithmetc")


def test_without_reasoning_gym_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "reasoning_gym", None)  # "import reasoning_gym" raises ImportError
    monkeypatch.setitem(sys.modules, "reasoning_gym.factory", None)
    with pytest.raises(ValueError, match=r"tasks.arith: .*pip install -e \.\[gym\]"):
        arithmetic()


def _longest_number(text: str) -> int:
    return max(len(n) for n in re.findall(r"\d+", text))


def test_a_harder_level_gives_harder_problems():
    src = arithmetic()
    easy = [src.problem(10**9 + i, {"num_terms": 0, "num_digits": 0}) for i in range(100)]
    hard = [src.problem(10**9 + i, {"num_terms": 3, "num_digits": 3}) for i in range(100)]
    assert {_longest_number(p.prompt) for p in easy} == {1}
    assert min(_longest_number(p.prompt) for p in hard) == 4  # (a division's correction term may be longer)
    assert sum(len(p.answer) for p in hard) > 3 * sum(len(p.answer) for p in easy)
    assert {p.params["num_digits"] for p in hard} == {3}
    # spell_backward: the word of level k has levels[k] letters (upper_bound), or up to it (inclusive)
    spell = spelling()
    assert [{len(spell.problem(10**9 + i, {"word_len": k}).answer) for i in range(50)} for k in range(4)] == \
        [{3}, {5}, {7}, {9}]
    inclusive = spelling(mode="inclusive")
    assert {len(inclusive.problem(10**9 + i, {"word_len": 2}).answer) for i in range(200)} == {3, 4, 5, 6, 7}


def _stats(problems, rewards):
    from explorl.explore.base import StepStats
    return StepStats(step=0, problems=problems, rewards=rewards, advantages=[[0.0] * len(r) for r in rewards],
                     entropy=0.0, tokens=0)


def test_curricula_and_budgets_act_on_the_levels_unchanged():
    """ALP-GMM samples level cells that reach the generated problems; Knapsack (key: params)
    keys its state by level cell; learnability's pool and DUMP's sources work as they are."""
    from explorl.registry import build
    mix = TaskMix({"arith": arithmetic(levels={"num_terms": [0, 2], "num_digits": [0, 2]}), "spell": spelling()})
    alp = build("curriculum", {"name": "alp_gmm", "fit_rate": 16, "bootstrap": 16, "k_max": 3,
                               "random_task_ratio": 0.0})
    alp.bind(mix, 0)
    for _ in range(3):
        problems, metrics = alp.next(16)
        alp.observe(_stats(problems, [[float(p.source == "spell" and p.params["word_len"] < 2)] * 4
                                      for p in problems]))
    problems, metrics = alp.next(32)
    assert metrics["curriculum/random_frac"] == 0.0 and alp.gmm is not None  # sampled from the mixture
    for p in problems:
        ranges = mix.sources[p.source].param_ranges
        assert set(p.params) == set(ranges) and all(ranges[k][0] <= v <= ranges[k][1] for k, v in p.params.items())
        if p.source == "spell":  # the level reached the dataset: a word of the level's length
            assert len(p.answer) == [3, 5, 7, 9][p.params["word_len"]]

    knapsack = build("budget", {"name": "knapsack", "key": "params"})
    seen = [mix.sources["spell"].problem(10**9 + i, {"word_len": k}) for k in (0, 3) for i in range(4)]
    knapsack.observe(_stats(seen, [[1.0] * 4] * 4 + [[1.0, 0.0, 1.0, 0.0]] * 4))
    fresh = [mix.sources["spell"].problem(2 * 10**9 - 1, {"word_len": k}) for k in (0, 3)]
    assert not {p.id for p in fresh} & {p.id for p in seen}
    # new problems of a seen cell share its success rate (ids alone would leave them unknown)
    assert [knapsack.success_rate(p) for p in fresh] == [1.0, 0.5]
    _, metrics = knapsack.allocate(fresh, 16)
    assert metrics["budget/frac_valid"] == 1.0

    learnability = build("curriculum", {"name": "learnability", "pool_size": 8})
    learnability.bind(mix, 0)
    chosen, _ = learnability.next(6)
    learnability.observe(_stats(chosen, [[1.0, 0.0]] * len(chosen)))
    assert all(learnability.p_hat[p.id] == 0.5 for p in chosen)
    fresh_mix = TaskMix({"arith": arithmetic(levels={"num_terms": [0, 2], "num_digits": [0, 2]}), "spell": spelling()})
    pool = {fresh_mix.sources[name].problem(seed) for name, seeds in learnability.pool.items() for seed in seeds}
    assert set(chosen) <= pool  # the pool's problems come back the same (ids, prompts) when regenerated
    dump = build("curriculum", "dump")
    dump.bind(mix, 0)
    problems, metrics = dump.next(8)
    assert set(metrics) == {"curriculum/weight/arith", "curriculum/weight/spell", "curriculum/weight_ratio"}
    assert {p.source for p in problems} <= {"arith", "spell"}


def test_check_task_passes():
    from explorl.tasks.alphabet import mix_alphabet
    for src in (arithmetic(), spelling()):
        report = check_task(src, n=20, alphabet="")
        assert report["unique_ids"] == report["problems"]
        check_task(src, n=5, alphabet=mix_alphabet([TaskMix({src.name: src})]))
    with pytest.raises(AssertionError, match="outside the alphabet"):
        check_task(spelling(), n=5)  # "Spell ...": the default alphabet has no upper case


def test_held_out_items_never_are_training_items():
    src = gym("basic_arithmetic", "arith", config={"size": 300}, levels={"num_terms": 2, "num_digits": 2})
    cell = {"num_terms": 2, "num_digits": 2}
    training = {src.entry(cell, "train", i)["question"] for i in range(300)}  # every training item
    held_out = src.eval_set(300)
    assert len(held_out) == 300 and len({p.id for p in held_out}) == 300
    assert all("/heldout" in p.id for p in held_out)
    assert not {p.prompt for p in held_out} & training
    drawn = [src.sample(random.Random(i)) for i in range(200)]
    assert {p.prompt for p in drawn} <= training
    assert not {p.id for p in drawn} & {p.id for p in held_out}


def test_the_testbed_alphabet_extends_only_when_needed(tmp_path):
    from explorl.config import load_config
    from explorl.policy.tokenizer import build_char_tokenizer
    from explorl.tasks.alphabet import ASCII, mix_alphabet
    from explorl.policy.warmup import testbed_alphabet, warm_model_dir
    from transformers import AutoTokenizer
    default = load_config()
    assert testbed_alphabet(default) == ALPHABET
    # the default testbed's warm start is the one it always was
    assert warm_model_dir(default).name == "testbed-f3f60c7da153ac15"
    example = load_config(EXAMPLE)
    extended = testbed_alphabet(example)
    assert extended.startswith(ALPHABET) and set(extended) == set(ASCII) and len(extended) == 128
    assert warm_model_dir(example).name != warm_model_dir(default).name
    # the alphabet's ids do not move; every ASCII character survives a save and a reload as Qwen2Tokenizer
    tok = build_char_tokenizer(extended)
    assert tok(ALPHABET, add_special_tokens=False)["input_ids"] == list(range(4, 4 + len(ALPHABET)))
    tok.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    text = ASCII[1:] + " Spell this word backward (example: sun -> nus):\n\n\"X\""
    for t in (tok, reloaded):
        ids = t(text, add_special_tokens=False)["input_ids"]
        assert len(ids) == len(text) and t.unk_token_id not in ids
        assert t.decode(ids) == text

    class Accents(TaskSource):
        name = "accents"

        def generate(self, rng, params):
            return "caf\u00e9=", "1"

        def score(self, problem, completion):
            return float(completion.strip() == problem.answer)

    with pytest.raises(ValueError, match=r"task source 'accents'.*U\+00E9.*not ASCII.*model.path"):
        mix_alphabet([TaskMix({"accents": Accents()})])


def test_a_context_too_small_for_the_prompts_is_refused_naming_its_key():
    from explorl.config import load_config
    with pytest.raises(ValueError, match=r"task source 'spelling'.*model.tiny.max_positions"):
        load_config(EXAMPLE, ["model.tiny.max_positions=48"])


def test_warmup_respects_the_context():
    from explorl.policy.tokenizer import build_char_tokenizer
    from explorl.tasks import Problem
    from explorl.policy.warmup import _sft_batch
    tok = build_char_tokenizer(ALPHABET)
    long = Problem(id="x", prompt="1+1=", answer="2" * 50, source="x")
    ids, labels = _sft_batch(tok, [long], max_positions=16)
    assert ids.shape == (1, 16) and (labels != -100).sum() == 12
    with pytest.raises(ValueError, match="model.tiny.max_positions"):
        _sft_batch(tok, [Problem(id="y", prompt="1" * 20, answer="2", source="x")], max_positions=16)
    # the warm start learns the answer as the verifier reads it
    from explorl.tasks.alphabet import ASCII
    mix = TaskMix({"arith": arithmetic(extractor="answer_tags")})
    p = mix.sample(random.Random(0))
    wide = build_char_tokenizer(ALPHABET + "".join(c for c in ASCII if c not in ALPHABET))
    ids, labels = _sft_batch(wide, [p], max_positions=80, tasks=mix)
    assert wide.decode(labels[labels != -100]) == f"<answer>{p.answer}</answer>" + wide.eos_token
    assert mix.verify(p, f"<answer>{p.answer}</answer>") == 1.0 and mix.verify(p, p.answer) == 0.0


@pytest.mark.slow
def test_train_from_the_cli_with_alp_gmm_over_the_attributes(tmp_path):
    from explorl import cli
    from explorl.train.checkpoint import decode_state, latest
    out = tmp_path / "run"
    assert cli.main(["train", "--config", str(EXAMPLE), "--out", str(out)]) == 0
    results = json.loads((out / "eval.json").read_text())
    for when in ("start", "end"):
        assert set(results[when]["pass@1"]) == {"arithmetic", "spelling", "all"}
    assert max(results["start"]["pass@8"][s] for s in ("arithmetic", "spelling")) > 0  # the warm start solves some
    metrics = run_metrics(out)
    assert len(metrics) == 8
    assert any(m.get("curriculum/gmm_k", 0) >= 1 for m in metrics)  # the mixture was fitted and sampled
    assert any(m["curriculum/random_frac"] < 1 for m in metrics)
    # every level of every attribute was sampled: ALP-GMM's episodes, decoded from its task vectors
    state = torch.load(latest(out) / "trainer.pt", weights_only=True)
    alp = decode_state(state["plugins"][0])
    vectors = [x for x, _ in alp["history"]]
    assert len(vectors) == 8 * 8
    # tau = [one-hot of (arithmetic, spelling), arithmetic's num_digits and num_terms, spelling's
    # word_len], each level normalised to [0, 1] over its range
    layout = [("arithmetic", 0, "num_digits", 2, 1), ("arithmetic", 0, "num_terms", 3, 1),
              ("spelling", 1, "word_len", 4, 2)]
    for source, hot, attribute, coordinate, top in layout:
        seen = {round(x[coordinate] * top) for x in vectors if x[hot] == 1.0}
        assert seen == set(range(top + 1)), (source, attribute, seen)
