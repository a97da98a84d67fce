"""Upload size: request bytes per photo at default settings for ~12 MP camera
originals (base64 included), vs what the `llm` CLI sends for the same photos.

    python benchmarks/upload_size.py
"""

from __future__ import annotations

import os
import subprocess

from _common import FakeServerProcess, camera_jpegs, fake_env, find_llm, llm_env, machine, run_captioner, workdir


def main() -> None:
    work = workdir()
    originals = camera_jpegs(work / "originals")
    print(f"{len(originals)} camera originals: {', '.join(p.name for p in originals)}; {machine()}")
    with FakeServerProcess(0.0) as server:
        run_captioner([str(work / "originals"), "-m", "gpt-4o-mini", "--db", str(work / "u.db")],
                      fake_env(server.base_url, work))
        ours = server.finish()["body_bytes"]
    print(f"captioner: {max(ours) / 1024:.0f} KB max, {sum(ours) / len(ours) / 1024:.0f} KB mean per request"
          f"   (target <= 300 KB)")
    llm = find_llm()
    if llm is None:
        print("llm: skipped (not installed; see benchmarks/throughput.py)")
        return
    with FakeServerProcess(0.0) as server:
        env = {**os.environ, **llm_env(server.base_url, work)}
        for photo in originals:
            subprocess.run([llm, "-m", "fake-vision", "--no-stream", "--no-log", "-a", str(photo), "Describe."],
                           env=env, check=True, capture_output=True)
        theirs = server.finish()["body_bytes"]
    print(f"llm CLI:   {max(theirs) / 1024:.0f} KB max, {sum(theirs) / len(theirs) / 1024:.0f} KB mean per request")
    print(f"ratio captioner / llm: {sum(ours) / sum(theirs):.3f}")


if __name__ == "__main__":
    main()
