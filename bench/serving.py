"""Serving a version without MindSpore: the MindSpore pyfunc vs its ONNX export under ``mlflow models serve``.

    MLFLOW_TRACKING_URI=sqlite:///STORE.db GLOG_v=3 nice .venv/bin/python bench/serving.py
        [--models vit_tiny-digits/1 vit_b16-digits/1] [--prepare] [--work /tmp/vit-exp-bench-serving]
        [--reinstall] [--starts 3] [--requests 30] [--requests-224 10] [--warmup 3] [--quiet-wait 900]
        [--retries 2] [--only install]

For each ``--models`` version (MindSpore pyfunc, ``pyfunc_model.py``) and its ONNX export (found by the
version's ``vit_exp.export.onnx`` tag; ``python -m vit_exp.export ... format=onnx`` made it), measured:

1. install size: the model's own ``requirements.txt`` (from ``mlflow.artifacts.download_artifacts``,
   as it is) goes into a fresh ``python3.11 -m venv`` in ``--work``, one venv per distinct file (the
   versions of one runtime share theirs): ``pip download`` into a wheel folder (network: time and
   wheel bytes), then ``pip install --no-index`` from it (install time); the venv's site-packages
   ``du``, and its largest packages. Venvs are kept in ``--work`` and reused (``--reinstall``: build
   again). The ONNX venv must not import ``mindspore`` (asserted), the MindSpore one must.
2. cold start: ``<venv>/bin/python -m mlflow models serve -m <the model's folder> --env-manager local``
   (the folder downloaded once from ``models:/NAME/V``: resolving ``models:/`` from a SQLite store needs
   the full ``mlflow`` with SQLAlchemy, which the ONNX export's ``mlflow-skinny`` has not; the
   venv's ``bin`` first on ``PATH``: MLflow starts ``uvicorn`` by name) on a free port, a fresh process
   each time, ``--starts`` times, one server at a time: seconds from launch until ``/ping`` answers 200,
   and until the first 1-image request is answered. The median of the starts is reported. vit_exp's C++
   kernels (the MindSpore pyfunc builds them with g++ on first use) are cached in
   ``--work/kernel-cache``; before the counted starts, one MindSpore start with that cache emptied is
   timed and reported apart (a first deployment on a new machine).
3. latency: on the last started server, after ``--warmup`` requests of each size, ``--requests``
   requests (``--requests-224`` for models of 224 px) of 1 image and of 16 images, one after another
   from one client (a new HTTP connection each, as curl): median and p90 in ms, and ms per image.
   Images: the digits validation PNGs (8x8 RGB, as the training data, from
   ``$VIT_EXP_CACHE_DIR/datasets/digits/val``, else the project's ``.cache``) for models below 224 px; the
   same images upscaled to 224x224 (bilinear) and saved as PNG for 224 px models; base64 in
   ``dataframe_split``, as docs/registry.md's request.
4. agreement: the answers of both runtimes to the same requests (the warm-up's 16-image request and
   the first 16 1-image ones): identical class_index / top-k indices? largest probability difference?

Beside each figure: the CPU (in cores, from /proc) used by anything but the server's process group and
this script while it was measured; another job on the machine shows there (figures are then rough).
Before each model x runtime, the script waits (``--quiet-wait`` s at most) until other processes use
under 0.15 cores over 5 s, and measures again (``--retries`` times at most) when they used 0.3 cores
or more meanwhile. ``--only install``: the environments only.

``--prepare`` first makes the default versions when the store lacks them: ``vit_tiny-digits`` (one
epoch of the default run) and ``vit_b16-digits`` (224 px, ONE train step at batch 2, random init:
serving cost does not depend on the weights), and their ONNX exports. Results: printed as markdown,
and written to ``--work/results.json``.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import ClassVar

ROOT = Path(__file__).resolve().parent.parent
PYTHON = "python3.11"
EXPORT_TAG = "vit_exp.export.onnx"
BATCHES = (1, 16)
BUSY = 0.3  # cores used by other processes during a measurement that make it be taken again


# --------------------------------------------------------------------------- the store


def prepare(store: str, work: Path, wanted: list[str]) -> None:
    """Train and export the default versions of ``wanted`` the store lacks (real vit_exp commands,
    child processes)."""
    from mlflow import MlflowClient

    client = MlflowClient(store)
    runs = {
        "vit_tiny-digits": ["trainer.epochs=1"],
        "vit_b16-digits": [
            "model=vit_b16",
            "model.image_size=224",
            "trainer.max_steps=1",
            "trainer.batch_size=2",
            "data.train_fraction=0.01",
            "registry.register=last",
        ],
    }
    env = dict(os.environ, MLFLOW_TRACKING_URI=store, PYTHONPATH=str(ROOT), GLOG_v="3")
    for name, overrides in runs.items():
        if name not in wanted:
            continue
        if not client.search_model_versions(f"name='{name}'"):
            command = [
                sys.executable,
                "-m",
                "vit_exp.run",
                *overrides,
                f"hydra.run.dir={work}/prepare/{name}",
            ]
            print("$", " ".join(command[1:]), flush=True)
            subprocess.run(command, check=True, env=env, cwd=work)
        version = max(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
        if EXPORT_TAG not in client.get_model_version(name, str(version)).tags:
            command = [
                sys.executable,
                "-m",
                "vit_exp.export",
                f"model_uri=models:/{name}/{version}",
                "format=onnx",
                f"hydra.run.dir={work}/prepare/{name}-export",
            ]
            print("$", " ".join(command[1:]), flush=True)
            subprocess.run(command, check=True, env=env, cwd=work)


def served_models(store: str, specs: list[str]) -> list[dict]:
    """Per model spec NAME/VERSION: its URI, its ONNX export's, their folders and image size."""
    import mlflow
    import yaml
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(store)
    client = MlflowClient(store)
    found = []
    for spec in specs:
        name, version = spec.split("/")
        tags = client.get_model_version(name, version).tags
        if EXPORT_TAG not in tags:
            hint = f"python -m vit_exp.export model_uri=models:/{spec} format=onnx"
            sys.exit(f"models:/{spec} has no ONNX export: {hint}")
        uris = {"mindspore": f"models:/{spec}", "onnx": tags[EXPORT_TAG]}
        folders = {runtime: Path(mlflow.artifacts.download_artifacts(uri)) for runtime, uri in uris.items()}
        config = yaml.safe_load((folders["onnx"] / "MLmodel").read_text())["flavors"]["python_function"][
            "config"
        ]
        found.append(
            {
                "name": name,
                "uris": uris,
                "folders": {r: str(f) for r, f in folders.items()},
                "requirements": {r: (f / "requirements.txt").read_text() for r, f in folders.items()},
                "image_size": int(config["image_size"]),
                "artifact_mb": {
                    r: sum(p.stat().st_size for p in f.rglob("*") if p.is_file()) / 1e6
                    for r, f in folders.items()
                },
            }
        )
    return found


# --------------------------------------------------------------------------- 1. the environments


def du_bytes(path: Path) -> int:
    return int(
        subprocess.run(
            ["du", "-s", "--block-size=1", str(path)], capture_output=True, text=True, check=True
        ).stdout.split()[0]
    )


def build_venv(work: Path, runtime: str, requirements: str, reinstall: bool) -> dict:
    """A fresh venv with ``requirements`` (cached by the file's digest); what it took and weighs."""
    digest = hashlib.sha256(requirements.encode()).hexdigest()[:10]
    venv = work / f"venv-{runtime}-{digest}"
    marker = venv / "bench-install.json"
    if marker.exists() and not reinstall:
        info = json.loads(marker.read_text())
        info["reused"] = True
        return info
    shutil.rmtree(venv, ignore_errors=True)
    wheels = work / f"wheels-{runtime}-{digest}"
    shutil.rmtree(wheels, ignore_errors=True)
    subprocess.run([PYTHON, "-m", "venv", str(venv)], check=True)
    (venv / "requirements.txt").write_text(requirements)
    python = venv / "bin" / "python"
    info = {"runtime": runtime, "venv": str(venv), "requirements": requirements.split(), "ok": False}
    started = time.perf_counter()
    download = subprocess.run(
        [
            python,
            "-m",
            "pip",
            "download",
            "--no-cache-dir",
            "-q",
            "-d",
            wheels,
            "-r",
            venv / "requirements.txt",
        ],
        capture_output=True,
        text=True,
    )
    info["download_s"] = time.perf_counter() - started
    if download.returncode != 0:
        info["error"] = "pip download failed:\n" + download.stderr[-3000:]
        print(info["error"], file=sys.stderr)
        return info
    info["wheels_mb"] = sum(p.stat().st_size for p in wheels.iterdir()) / 1e6
    started = time.perf_counter()
    install = subprocess.run(
        [
            python,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--find-links",
            wheels,
            "-r",
            venv / "requirements.txt",
        ],
        capture_output=True,
        text=True,
    )
    info["install_s"] = time.perf_counter() - started
    if install.returncode != 0:
        info["error"] = "pip install failed:\n" + install.stderr[-3000:]
        print(info["error"], file=sys.stderr)
        return info
    site = next((venv / "lib").glob("python3*/site-packages"))
    info["site_packages_mb"] = du_bytes(site) / 1e6
    info["venv_mb"] = du_bytes(venv) / 1e6
    sizes = sorted(((du_bytes(p), p.name) for p in site.iterdir() if p.is_dir()), reverse=True)
    info["largest"] = [[name, size / 1e6] for size, name in sizes[:8]]
    info["packages"] = len([p for p in site.glob("*.dist-info")])
    freeze = subprocess.run(
        [python, "-m", "pip", "freeze"], capture_output=True, text=True, check=True
    ).stdout
    info["freeze"] = freeze.split()
    info["imports_mindspore"] = (
        subprocess.run([python, "-c", "import mindspore"], capture_output=True).returncode == 0
    )
    info["ok"] = True
    info["reused"] = False
    marker.write_text(json.dumps(info, indent=1))
    shutil.rmtree(wheels, ignore_errors=True)
    return info


# --------------------------------------------------------------------------- 2 and 3. the servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: bytes, timeout: float = 600) -> tuple[float, list]:
    """Seconds for one request and its predictions."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=timeout) as response:
        data = response.read()
    elapsed = time.perf_counter() - started
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {data[:300]!r}")
    return elapsed, json.loads(data)["predictions"]


class Server:
    """One ``mlflow models serve`` process group of a venv; ``stop()`` ends the whole group."""

    live: ClassVar[list[Server]] = []

    def __init__(self, venv: Path, uri: str, store: str, work: Path, log_name: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = work / "logs" / f"{log_name}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = self.log_path.open("w")
        env = dict(
            os.environ,
            MLFLOW_TRACKING_URI=store,
            PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            VIT_EXP_KERNEL_CACHE=str(work / "kernel-cache"),
            GLOG_v="3",
        )
        env.pop("PYTHONPATH", None)  # only the venv and the model's own code
        env.pop("VIRTUAL_ENV", None)
        cwd = work / "cwd"
        cwd.mkdir(exist_ok=True)
        command = [str(venv / "bin" / "python"), "-m", "mlflow", "models", "serve", "-m", uri]
        command += ["--env-manager", "local", "-h", "127.0.0.1", "-p", str(self.port), "-t", "600"]
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )
        Server.live.append(self)

    def wait_ping(self, timeout: float = 900) -> float:
        while time.perf_counter() - self.started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"server exited ({self.process.returncode}); log: {self.log_path}\n{self.tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/ping", timeout=2) as response:
                    if response.status == 200:
                        return time.perf_counter() - self.started
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.05)
        raise RuntimeError(f"no /ping after {timeout} s; log: {self.log_path}\n{self.tail()}")

    def tail(self) -> str:
        self.log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-30:])

    def stop(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
            except ProcessLookupError:
                pass
        try:  # uvicorn's workers, if any outlived the leader
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.log.close()
        if self in Server.live:
            Server.live.remove(self)


TICKS = os.sysconf("SC_CLK_TCK")


def busy_ticks() -> int:
    """The machine's busy CPU time (user, nice, system, irq, softirq, steal), in clock ticks."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return sum(fields[i] for i in (0, 1, 2, 5, 6, 7))


def group_ticks(pgid: int) -> int:
    """CPU time of the live processes of process group ``pgid`` (and their waited-for children)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:
            total += sum(int(x) for x in fields[11:15])
    return total


class OtherCpu:
    """How much of the machine's CPU went to anything but one server's process group and this
    process, over a window: another job running beside the bench shows here (in cores)."""

    def __init__(self, pgid: int):
        self.pgid = pgid
        self.start = self._now()

    def _now(self) -> tuple[float, int, int, float]:
        mine = os.times()
        return time.perf_counter(), busy_ticks(), group_ticks(self.pgid), mine.user + mine.system

    def cores(self) -> float:
        t0, b0, g0, m0 = self.start
        t1, b1, g1, m1 = self._now()
        other = (b1 - b0) - (g1 - g0) - (m1 - m0) * TICKS
        return max(0.0, other / TICKS / (t1 - t0))


def wait_quiet(limit_s: float, threshold: float = 0.15) -> float:
    """Wait (at most ``limit_s``) until other processes use under ``threshold`` cores over 5 s; the
    seconds waited."""
    started = time.perf_counter()
    while time.perf_counter() - started < limit_s:
        window = OtherCpu(-1)
        time.sleep(5)
        if (used := window.cores()) < threshold:
            return time.perf_counter() - started
        print(f"  waiting: other processes use {used:.2f} cores", flush=True)
    print(f"  the machine is not quiet after {limit_s:.0f} s: measuring anyway", flush=True)
    return time.perf_counter() - started


def images_for(size: int, count: int = 16) -> list[bytes]:
    """``count`` digits validation PNGs, classes interleaved; upscaled to ``size`` when it is 224+."""
    from PIL import Image

    folder = Path(os.environ.get("VIT_EXP_CACHE_DIR", ROOT / ".cache")) / "datasets" / "digits" / "val"
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    per_class = [sorted(c.glob("*.png")) for c in classes]
    files = [per_class[i % len(classes)][i // len(classes)] for i in range(count)]
    if size < 224:
        return [f.read_bytes() for f in files]
    out = []
    for f in files:
        buffer = io.BytesIO()
        Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR).save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def body(images: list[bytes]) -> bytes:
    rows = [[base64.b64encode(b).decode()] for b in images]
    return json.dumps({"dataframe_split": {"columns": ["image"], "data": rows}}).encode()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def measure(model: dict, runtime: str, venv: Path, store: str, work: Path, args) -> dict:
    """Cold starts, then latency on the last server; every server stopped before returning."""
    # Each server loads the model's folder, downloaded once: resolving models:/ from a SQLite store
    # needs the full mlflow (SQLAlchemy), and a deployment fetches its model once anyway.
    folder = model["folders"][runtime]
    images = images_for(model["image_size"])
    one = [body([images[i]]) for i in range(len(images))]
    sixteen = body(images)
    result = {
        "uri": model["uris"][runtime],
        "starts": [],
        "request_kb": {1: len(one[0]) / 1e3, 16: len(sixteen) / 1e3},
    }
    result["loadavg_before"] = os.getloadavg()[0]
    label = f"{model['name']}-{runtime}"
    if runtime == "mindspore":  # a first deployment: vit_exp's kernels are built with g++
        shutil.rmtree(work / "kernel-cache", ignore_errors=True)
        server = Server(venv, folder, store, work, f"{label}-first")
        try:
            ping = server.wait_ping()
            post(f"{server.url}/invocations", one[0])
            result["first_deploy"] = {"ping_s": ping, "first_answer_s": time.perf_counter() - server.started}
            print(
                f"  {label}: first start (empty kernel cache): ping {ping:.1f} s, "
                f"answer {result['first_deploy']['first_answer_s']:.1f} s",
                flush=True,
            )
        finally:
            server.stop()
    server = None
    try:
        for start in range(args.starts):
            server = Server(venv, folder, store, work, f"{label}-start{start}")
            others = OtherCpu(server.process.pid)
            ping = server.wait_ping()
            post(f"{server.url}/invocations", one[0])
            answered = time.perf_counter() - server.started
            result["starts"].append(
                {"ping_s": ping, "first_answer_s": answered, "other_cores": others.cores()}
            )
            print(
                f"  {label}: start {start + 1}: ping {ping:.1f} s, first answer {answered:.1f} s", flush=True
            )
            if start < args.starts - 1:
                server.stop()
        url = f"{server.url}/invocations"
        answers = {"b16": post(url, sixteen)[1]}
        for i in range(args.warmup):
            post(url, one[i % len(one)])
            post(url, sixteen)
        answers["b1"] = [post(url, one[i])[1][0] for i in range(len(one))]
        result["answers"] = answers
        requests = args.requests_224 if model["image_size"] >= 224 else args.requests
        result["requests"] = requests
        result["latency_ms"] = {}
        others = OtherCpu(server.process.pid)
        for batch in BATCHES:
            times = [
                1e3 * post(url, one[i % len(one)] if batch == 1 else sixteen)[0] for i in range(requests)
            ]
            result["latency_ms"][batch] = {
                "median": statistics.median(times),
                "p90": percentile(times, 0.9),
                "min": min(times),
                "all": times,
            }
            print(
                f"  {label}: batch {batch}: median {statistics.median(times):.1f} ms, "
                f"p90 {percentile(times, 0.9):.1f} ms",
                flush=True,
            )
        result["other_cores"] = others.cores()
    finally:
        if server is not None:
            server.stop()
    result["loadavg_after"] = os.getloadavg()[0]
    print(
        "  other processes' CPU: during the starts "
        f"{max(s['other_cores'] for s in result['starts']):.2f} cores at most, "
        f"during the latency requests {result['other_cores']:.2f} cores",
        flush=True,
    )
    return result


def agreement(a: dict, b: dict) -> dict:
    """Same classes, same top-k order, largest probability difference, over both answer sets."""
    rows_a = a["answers"]["b16"] + a["answers"]["b1"]
    rows_b = b["answers"]["b16"] + b["answers"]["b1"]
    assert len(rows_a) == len(rows_b)
    return {
        "rows": len(rows_a),
        "errors": sum(r["error"] is not None for r in rows_a + rows_b),
        "same_class": sum(x["class_index"] == y["class_index"] for x, y in zip(rows_a, rows_b, strict=True)),
        "same_top_k": sum(
            x["top_k_indices"] == y["top_k_indices"] for x, y in zip(rows_a, rows_b, strict=True)
        ),
        "max_prob_diff": max(
            abs(p - q)
            for x, y in zip(rows_a, rows_b, strict=True)
            for p, q in zip(x["top_k_probabilities"], y["top_k_probabilities"], strict=True)
        ),
        "classes_seen": sorted({r["class_index"] for r in rows_a}),
    }


# --------------------------------------------------------------------------- the report


def row(*cells: object) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def report(models: list[dict], envs: dict, results: dict) -> str:
    """The three markdown tables: environments, serving figures, agreement."""
    head = ("environment (requirements.txt as registered)", "pip download", "wheels", "install")
    lines = [row(*head, "site-packages", "largest packages (MB)"), row(*["---"] * 6)]
    for runtime, info in envs.items():
        if not info.get("ok"):
            lines.append(row(runtime, f"FAILED: {info.get('error', '?').splitlines()[0]}", "", "", "", ""))
            continue
        lines.append(
            row(
                f"{runtime}: `{' '.join(info['requirements'])}`",
                f"{info['download_s']:.0f} s",
                f"{info['wheels_mb']:.0f} MB",
                f"{info['install_s']:.0f} s",
                f"**{info['site_packages_mb']:.0f} MB** ({info['packages']} packages)",
                ", ".join(f"{n} {mb:.0f}" for n, mb in info["largest"][:5]),
            )
        )
    head = ("model", "runtime", "artifacts", "/ping ready", "first answer (1 image)")
    head += ("batch 1: median / p90", "batch 16: median / p90", "ms/image at 16", "requests")
    lines += ["", row(*head, "other CPU (starts / requests)"), row(*["---"] * 10)]
    for model in models:
        for runtime in ("mindspore", "onnx"):
            r = results.get(f"{model['name']}|{runtime}")
            if r is None or "error" in r:
                why = (
                    "not measured (--only install)"
                    if r is None
                    else f"FAILED: {r['error'].splitlines()[0][:120]}"
                )
                lines.append(row(model["name"], runtime, why, *[""] * 7))
                continue
            first = f"{statistics.median(s['first_answer_s'] for s in r['starts']):.1f} s"
            if "first_deploy" in r:
                first += f" (first deploy, kernels built: {r['first_deploy']['first_answer_s']:.1f} s)"
            l1, l16 = r["latency_ms"][1], r["latency_ms"][16]
            lines.append(
                row(
                    model["name"],
                    "MindSpore pyfunc" if runtime == "mindspore" else "ONNX Runtime",
                    f"{model['artifact_mb'][runtime]:.0f} MB",
                    f"{statistics.median(s['ping_s'] for s in r['starts']):.1f} s",
                    first,
                    f"{l1['median']:.0f} / {l1['p90']:.0f} ms",
                    f"{l16['median']:.0f} / {l16['p90']:.0f} ms",
                    f"{l16['median'] / 16:.1f}",
                    r["requests"],
                    f"{max(s['other_cores'] for s in r['starts']):.2f} / {r['other_cores']:.2f} cores",
                )
            )
    head = ("model", "rows compared", "same top-1", "same top-k order", "max prob. difference", "errors")
    lines += ["", row(*head), row(*["---"] * 6)]
    for model in models:
        a, b = results.get(f"{model['name']}|mindspore"), results.get(f"{model['name']}|onnx")
        if a and b and "answers" in a and "answers" in b:
            g = agreement(a, b)
            n = g["rows"]
            lines.append(
                row(
                    model["name"],
                    n,
                    f"{g['same_class']}/{n}",
                    f"{g['same_top_k']}/{n}",
                    f"{g['max_prob_diff']:.2g}",
                    g["errors"],
                )
            )
    return "\n".join(lines)


def build_envs(models: list[dict], args) -> tuple[dict, dict]:
    """One venv per runtime and requirements file: what each took and weighs, and the venv of each."""
    envs, venvs = {}, {}
    for runtime in ("mindspore", "onnx"):
        texts = {m["requirements"][runtime] for m in models}
        if len(texts) > 1:
            print(f"note: the {runtime} versions' requirements differ; one venv each", flush=True)
        for text in sorted(texts):
            print(f"venv for {runtime}: {' '.join(text.split())}", flush=True)
            info = build_venv(args.work, runtime, text, args.reinstall)
            digest = hashlib.sha256(text.encode()).hexdigest()[:10]
            envs[runtime if len(texts) == 1 else f"{runtime}:{digest}"] = info
            venvs[(runtime, text)] = Path(info["venv"]) if info.get("ok") else None
            if not info.get("ok"):
                continue
            reused = " (reused)" if info.get("reused") else ""
            print(
                f"  site-packages {info['site_packages_mb']:.0f} MB, "
                f"install {info['install_s']:.0f} s{reused}",
                flush=True,
            )
            if runtime == "onnx":
                assert not info["imports_mindspore"], f"{info['venv']} imports mindspore"
            else:
                assert info["imports_mindspore"], f"{info['venv']} cannot import mindspore"
    return envs, venvs


def measure_quietly(model: dict, runtime: str, venv: Path, args) -> dict:
    """``measure`` on a quiet machine: again (``--retries`` times) when other processes were busy."""
    result = {}
    for _ in range(1 + args.retries):
        print(f"serving {model['uris'][runtime]} from {venv.name}", flush=True)
        wait_quiet(args.quiet_wait)
        try:
            result = measure(model, runtime, venv, args.store, args.work, args)
        except Exception as exc:  # report it, go on with the others
            print(f"  FAILED: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
            return {"error": f"{type(exc).__name__}: {exc}"}
        finally:
            for server in list(Server.live):
                server.stop()
        busy = max([result["other_cores"]] + [s["other_cores"] for s in result["starts"]])
        if busy < BUSY:
            break
        print(f"  other processes used {busy:.2f} cores meanwhile: measuring again", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", default=os.environ.get("MLFLOW_TRACKING_URI"))
    parser.add_argument("--models", nargs="+", default=["vit_tiny-digits/1", "vit_b16-digits/1"])
    parser.add_argument("--work", type=Path, default=Path("/tmp/vit-exp-bench-serving"))
    parser.add_argument("--prepare", action="store_true", help="train and export missing default versions")
    parser.add_argument("--reinstall", action="store_true", help="build the venvs again")
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--requests-224", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--quiet-wait", type=float, default=900, help="wait at most this long for an idle machine"
    )
    parser.add_argument("--retries", type=int, default=2, help="measure again when other processes were busy")
    parser.add_argument("--only", nargs="+", choices=["install", "serve"], default=["install", "serve"])
    args = parser.parse_args()
    if not args.store:
        sys.exit("set MLFLOW_TRACKING_URI (or --store) to the store holding the versions")
    args.work.mkdir(parents=True, exist_ok=True)
    if args.prepare:
        prepare(args.store, args.work, [spec.split("/")[0] for spec in args.models])
    models = served_models(args.store, args.models)
    envs, venvs = build_envs(models, args)
    results = {}
    if "serve" in args.only:
        for model in models:
            for runtime in ("mindspore", "onnx"):
                venv = venvs[(runtime, model["requirements"][runtime])]
                key = f"{model['name']}|{runtime}"
                if venv is None:
                    results[key] = {"error": "its environment did not install"}
                else:
                    results[key] = measure_quietly(model, runtime, venv, args)
    table = report(models, envs, results)
    print()
    print(table)
    summary = {"models": models, "envs": envs, "results": results, "table": table}
    (args.work / "results.json").write_text(json.dumps(summary, indent=1, default=str))


if __name__ == "__main__":
    try:
        main()
    finally:
        for server in list(Server.live):
            server.stop()
