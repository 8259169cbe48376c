"""``model.path`` naming a GGUF file: converted once into a float model folder cached by the file's
content, with the same weights, tokenizer and chat template; clear errors for what cannot be read.
The GGUF files are written here (``gguf_model.py``): nothing is downloaded."""
import json
import sys

import pytest
import torch

pytest.importorskip("gguf")

from gguf_model import write_tiny_gguf  # noqa: E402

from explorl.policy import gguf_file  # noqa: E402
from explorl.policy.model import load_pretrained  # noqa: E402


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("EXPLORL_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_a_gguf_file_loads_as_its_float_model_tokenizer_and_chat_template(tmp_path, home):
    path = tmp_path / "tiny.gguf"
    original, tokenizer = write_tiny_gguf(path)
    model, loaded_tokenizer = load_pretrained(path, log=lambda *_: None)

    want, got = original.state_dict(), model.state_dict()
    assert set(got) == set(want)
    for name in want:  # float32 in the file: exact, q/k un-permuted back to the HF layout
        assert torch.equal(got[name], want[name]), name
    ids = torch.tensor([[5, 17, 42, 99, 3, 250]])
    assert torch.equal(model(ids).logits, original(ids).logits)

    text = "Natalia sold 48 clips in April <|im_end|> and then 24."
    assert loaded_tokenizer(text).input_ids == tokenizer(text).input_ids
    assert loaded_tokenizer.chat_template == tokenizer.chat_template
    assert loaded_tokenizer.eos_token == "<|endoftext|>" and loaded_tokenizer.padding_side == "left"

    folder = home / "gguf" / gguf_file.file_sha256(path)[:16]
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json",
            gguf_file.SOURCE_FILE} <= {p.name for p in folder.iterdir()}
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert json.loads((folder / gguf_file.SOURCE_FILE).read_text())["source"] == "tiny.gguf"
    assert [p.name for p in (home / "gguf").iterdir()] == [folder.name]  # no temporary folder left


def test_the_conversion_runs_once_per_file_content(tmp_path, home, monkeypatch):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    first = gguf_file.gguf_model_folder(path, log=lambda *_: None)
    copy = tmp_path / "elsewhere" / "renamed.gguf"
    copy.parent.mkdir()
    copy.write_bytes(path.read_bytes())

    def no_second_conversion(*args):
        raise AssertionError("converted again")
    monkeypatch.setattr(gguf_file, "read_gguf", no_second_conversion)
    assert gguf_file.gguf_model_folder(copy) == first  # same content, same folder, not converted again
    model, _ = load_pretrained(copy)
    assert model.config.model_type == "llama"


def test_a_failed_conversion_leaves_no_folder(tmp_path, home, monkeypatch):
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    read = gguf_file.read_gguf

    def read_then_fail_to_save(path, what):
        model, tokenizer = read(path, what)

        def disk_full(folder, *args, **kwargs):
            (folder / "tokenizer.json").write_text("{")  # part of the folder written, then the failure
            raise OSError(28, "No space left on device")
        tokenizer.save_pretrained = disk_full
        return model, tokenizer
    monkeypatch.setattr(gguf_file, "read_gguf", read_then_fail_to_save)
    with pytest.raises(OSError, match="No space"):
        gguf_file.gguf_model_folder(path, log=lambda *_: None)
    assert list((home / "gguf").iterdir()) == []  # neither the model folder nor the temporary one


def test_errors_name_the_file_and_the_problem(tmp_path, home, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"model.path '.*missing.gguf': no such GGUF file"):
        load_pretrained(tmp_path / "missing.gguf")
    (tmp_path / "folder.gguf").mkdir()
    with pytest.raises(ValueError, match=r"folder.gguf': is not a file"):
        load_pretrained(tmp_path / "folder.gguf")
    (tmp_path / "text.gguf").write_text("hello, not a model")
    with pytest.raises(ValueError, match=r"text.gguf': not a GGUF file \(it does not start with the bytes"):
        load_pretrained(tmp_path / "text.gguf")

    good = tmp_path / "tiny.gguf"
    write_tiny_gguf(good)
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"cut.gguf': transformers cannot read this GGUF file"):
        load_pretrained(cut, log=lambda *_: None)
    assert not (home / "gguf").exists() or list((home / "gguf").iterdir()) == []

    monkeypatch.setitem(sys.modules, "gguf", None)  # as if the package were not installed
    with pytest.raises(ValueError, match=r"tiny.gguf': reading a GGUF file needs the gguf package "
                                         r"\(pip install -e .\[gguf\]\)"):
        load_pretrained(good)


def test_a_gguf_model_trains_from_the_cli(tmp_path, home, tiny_overrides):
    from explorl.cli import main
    path = tmp_path / "tiny.gguf"
    write_tiny_gguf(path)
    out = tmp_path / "run"
    sets = [*tiny_overrides, f"model.path={path}", "prompt.template=chat", "train.steps=1",
            "eval.problems_per_source=1"]
    code = main(["train", "--out", str(out), "--quiet", *[x for item in sets for x in ("--set", item)]])
    assert code == 0
    assert (out / "ckpt").exists()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows and rows[-1]["step"] == 1
