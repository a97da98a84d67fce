"""Shared helpers for the benchmarks: real photo sets, a fake server, timed runs.

Every benchmark runs its baseline in the same process run, so the ratios it
prints compare like with like on this machine.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

CORPUS = next(
    (Path(p) / "corpus" for p in (os.environ.get("CAPTIONER_SHARED"), REPO.parent / "shared")
     if p and (Path(p) / "corpus").is_dir()),
    None,
)
# Camera originals of about 12 megapixels from the shared corpus.
CAMERA_ORIGINALS = ["pug.heic", "IMG_2682.heic", "exif-at-eof.heic", "Oppo_R7_Plus.jpg", "japanese-shop.jpg"]


def camera_jpegs(folder: Path) -> list[Path]:
    """The ~12 MP originals as camera JPEGs (HEIC re-encoded at quality 92, as a phone set to JPEG would)."""
    import pillow_heif
    from PIL import Image

    pillow_heif.register_heif_opener()
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for name in CAMERA_ORIGINALS:
        source = CORPUS / "photos" / name
        target = folder / (Path(name).stem + ".jpg")
        if not target.exists():
            if source.suffix == ".jpg":
                shutil.copy(source, target)
            else:
                with Image.open(source) as im:
                    im.save(target, "JPEG", quality=92, exif=im.info.get("exif", b""))
        made.append(target)
    return made


def photo_library(folder: Path, sources: list[Path], count: int) -> Path:
    """`count` distinct files: the sources repeated, each with unique bytes after
    the JPEG end marker (so every file has its own sha256 and is captioned)."""
    folder.mkdir(parents=True, exist_ok=True)
    datas = [s.read_bytes() for s in sources]
    for n in range(count):
        data = datas[n % len(datas)]
        (folder / f"IMG_{n:05d}{sources[n % len(sources)].suffix}").write_bytes(data + f"\n{n}".encode())
    return folder


def _serve(latency: float, port_queue, stop_event, stats_queue) -> None:
    from fakes import FakeOpenAI

    with FakeOpenAI(latency=latency) as server:
        # The benchmark measures the client, so the fake skips decoding images.
        server.prompt_tokens = lambda body, images: 1000
        import fakes
        fakes.image_label = lambda jpeg: f"photo {len(jpeg)}"
        port_queue.put(server.base_url)
        stop_event.wait()
        sizes = [len(json.dumps(r.body)) for r in server.received]
        stats_queue.put({"requests": len(server.received), "body_bytes": sizes})


class FakeServerProcess:
    """A FakeOpenAI server in its own process, so its CPU and memory are not the client's."""

    def __init__(self, latency: float) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.port_queue, self.stats_queue, self.stop = ctx.Queue(), ctx.Queue(), ctx.Event()
        self.proc = ctx.Process(target=_serve, args=(latency, self.port_queue, self.stop, self.stats_queue))

    def __enter__(self) -> FakeServerProcess:
        self.proc.start()
        self.base_url = self.port_queue.get(timeout=30)
        return self

    def finish(self) -> dict:
        self.stop.set()
        stats = self.stats_queue.get(timeout=60)
        self.proc.join(timeout=30)
        return stats

    def __exit__(self, *exc: object) -> None:
        if self.proc.is_alive():
            self.stop.set()
            self.proc.join(timeout=10)


def captioner_bin() -> str:
    return str(Path(sys.executable).with_name("captioner"))


def run_captioner(args: list[str], env: dict[str, str]) -> tuple[float, dict, int]:
    """Run `captioner caption ... --json`; return wall seconds, the summary and peak RSS (KB) of the child."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    started = time.perf_counter()
    proc = subprocess.run([captioner_bin(), "caption", *args, "--json"], env={**os.environ, **env},
                          capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if proc.returncode not in (0, 1):
        raise SystemExit(f"captioner failed ({proc.returncode}): {proc.stderr[-2000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return elapsed, json.loads(proc.stdout), max(peak, before)


def fake_env(base_url: str, workdir: Path) -> dict[str, str]:
    return {"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": "not-a-real-key-benchmark",
            "CAPTIONER_USER_DIR": str(workdir / "user")}


def find_llm() -> str | None:
    """The `llm` CLI (PyPI `llm`), if installed: on PATH or in benchmarks/.llm-venv."""
    local = REPO / "benchmarks" / ".llm-venv" / "bin" / "llm"
    return str(local) if local.exists() else shutil.which("llm")


def llm_env(base_url: str, workdir: Path) -> dict[str, str]:
    """An llm user dir with one extra OpenAI-compatible model pointed at the fake server."""
    user = workdir / "llm-user"
    user.mkdir(parents=True, exist_ok=True)
    (user / "extra-openai-models.yaml").write_text(
        f"- model_id: fake-vision\n  model_name: gpt-4o-mini\n  api_base: \"{base_url}\"\n"
        "  vision: true\n  api_key_name: fake\n"
    )
    (user / "keys.json").write_text(json.dumps({"fake": "not-a-real-key-benchmark"}))
    return {"LLM_USER_PATH": str(user)}


def machine() -> str:
    import platform

    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="captioner-bench-"))
