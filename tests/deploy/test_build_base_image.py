"""Building the Jetson base image: release table, wheel checks, and the whole script run with
a fake `docker` (it records what it was asked), wheels served over HTTP as Jetson AI Lab and
Jetson Zoo serve them."""

from __future__ import annotations

import hashlib
import http.server
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import REPO, cuda_works

CONTEXT = REPO / "base_images" / "onnxruntime-jetson"


def _load(path: Path) -> ModuleType:
    loader = importlib.machinery.SourceFileLoader(path.stem.replace("-", "_"), str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


sys.path.insert(0, str(REPO / "scripts"))
build = _load(REPO / "scripts" / "build_base_image")
fetch = _load(CONTEXT / "fetch_wheel.py")

RELEASE = "# R{major} (release), REVISION: {revision}, GCID: 1, BOARD: generic, EABI: aarch64\n"
NVIDIA_RUNTIME = {
    "default-runtime": "nvidia",
    "runtimes": {"nvidia": {"path": "nvidia-container-runtime", "runtimeArgs": []}},
}


def make_wheel(folder: Path, file_name: str, project: str, tag: str) -> Path:
    """A small but well-formed wheel: what pip and fetch_wheel read of a real one."""
    path = folder / file_name
    dist = f"{project.replace('-', '_')}-1.20.0.dist-info"
    with zipfile.ZipFile(path, "w") as wheel:
        metadata = f"Metadata-Version: 2.1\nName: {project}\nVersion: 1.20.0\n"
        wheel.writestr(f"{dist}/METADATA", metadata)
        wheel.writestr(f"{dist}/WHEEL", f"Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: {tag}\n")
        wheel.writestr("onnxruntime/__init__.py", "")
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize(
    ("release", "image", "python"),
    [
        ("r36.3.0", "nvcr.io/nvidia/l4t-jetpack:r36.3.0", "python3"),
        ("r36.4.0", "nvcr.io/nvidia/l4t-jetpack:r36.4.0", "python3"),
        ("r36.4.3", "nvcr.io/nvidia/l4t-jetpack:r36.4.0", "python3"),  # JetPack 6.2
        ("r36.4.4", "nvcr.io/nvidia/l4t-jetpack:r36.4.0", "python3"),  # JetPack 6.2.1
        ("r35.4.1", "nvcr.io/nvidia/l4t-jetpack:r35.4.1", "python3.11"),
        ("r35.6.0", "nvcr.io/nvidia/l4t-jetpack:r35.4.1", "python3.11"),
    ],
)
def test_each_host_release_builds_on_a_published_container(
    release: str, image: str, python: str
) -> None:
    major, minor, patch = release[1:].split(".")
    text = RELEASE.format(major=major, revision=f"{minor}.{patch}")
    assert build.parse_tegra_release(text) == release
    base = build.base_for(release)
    assert (base.l4t_image, base.python) == (image, python)
    assert base.python_tag == ("cp310" if python == "python3" else "cp311")


@pytest.mark.parametrize("release", ["r32.7.1", "r35.3.1", "r36.2.0"])
def test_releases_without_a_row_are_refused_with_the_override_named(release: str) -> None:
    with pytest.raises(build.BuildError, match="--base-image"):
        build.base_for(release)


def test_text_that_is_not_a_release_file_is_refused() -> None:
    with pytest.raises(build.BuildError, match="Jetson"):
        build.parse_tegra_release("Ubuntu 22.04")


@pytest.mark.parametrize("text", [None, "{}", '{"runtimes": {}, "log-driver": "local"}'])
def test_missing_default_runtime_prints_the_exact_change(text: str | None) -> None:
    problem = build.daemon_json_problem(text)
    wanted = json.loads(problem.split("restart docker`:\n", 1)[1])
    assert wanted["default-runtime"] == "nvidia"
    assert wanted["runtimes"]["nvidia"]["path"] == "nvidia-container-runtime"
    if text and "log-driver" in text:
        assert wanted["log-driver"] == "local"  # the rest of the file is kept
    assert build.daemon_json_problem(json.dumps(NVIDIA_RUNTIME)) is None
    assert "not valid JSON" in build.daemon_json_problem("{oops")


def test_a_wheel_is_saved_under_its_real_name(tmp_path: Path) -> None:
    opaque = make_wheel(tmp_path, "x1y2z3", "onnxruntime-gpu", "cp310-cp310-linux_aarch64")
    saved = fetch.save(opaque, sha(opaque), tmp_path, "cp310")
    assert saved.name == "onnxruntime_gpu-1.20.0-cp310-cp310-linux_aarch64.whl"


@pytest.mark.parametrize(
    ("project", "tag", "digest", "message"),
    [
        ("onnxruntime-gpu", "cp310-cp310-linux_aarch64", "0" * 64, "SHA-256"),
        ("onnxruntime", "cp310-cp310-linux_aarch64", None, "not onnxruntime-gpu"),
        ("onnxruntime-gpu", "cp38-cp38-linux_aarch64", None, "built for cp38"),
    ],
)
def test_wrong_wheels_are_refused(
    tmp_path: Path, project: str, tag: str, digest: str | None, message: str
) -> None:
    wheel = make_wheel(tmp_path, "some.whl", project, tag)
    with pytest.raises(fetch.WheelError, match=message):
        fetch.check_wheel(wheel, digest or sha(wheel), "cp310")


def test_an_html_page_fails_with_a_clear_message(tmp_path: Path) -> None:
    page = tmp_path / "onnxruntime_gpu-1.20.0-cp310-cp310-linux_aarch64.whl"
    page.write_text("<!DOCTYPE html>\n<html><head><title>Sign in</title></head></html>")
    result = subprocess.run(
        [sys.executable, str(CONTEXT / "fetch_wheel.py"), "--sha256", sha(page), "--file",
         str(page), "--dest", str(tmp_path / "out")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 1
    assert "is an HTML page, not a wheel" in result.stderr


@pytest.fixture
def wheel_server(tmp_path: Path) -> Iterator[tuple[str, dict[str, Path]]]:
    """Serves wheels at the paths of both link styles; the URL fragment is never sent."""
    folder = tmp_path / "served"
    folder.mkdir()
    files = {
        # Jetson AI Lab: a real name, a #sha256= fragment on the link
        "/jp6/cu126/+f/1a2/onnxruntime_gpu-1.20.0-cp310-cp310-linux_aarch64.whl": make_wheel(
            folder, "a.whl", "onnxruntime-gpu", "cp310-cp310-linux_aarch64"
        ),
        # Jetson Zoo: an opaque box name
        "/shared/static/iizg3ggrtdkqawkmebbfixo7sce6j365": make_wheel(
            folder, "b", "onnxruntime-gpu", "cp311-cp311-linux_aarch64"
        ),
    }

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = files.get(self.path)
            if path is None:
                self.send_error(404)
                return
            data = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", files
    server.shutdown()


@pytest.fixture
def jetson(tmp_path: Path) -> dict[str, Path]:
    """A fake Jetson host: release file, daemon.json, /etc/group, .env and a fake docker."""
    folder = tmp_path / "host"
    folder.mkdir()
    (folder / "daemon.json").write_text(json.dumps(NVIDIA_RUNTIME))
    (folder / "group").write_text("root:x:0:\nvideo:x:44:\nrender:x:104:\n")
    (folder / ".env").write_text(
        "CONTAINER_REGISTRY_SERVER=myregistry.azurecr.io  # the fleet's registry\n"
        "GPU_VIDEO_GROUP=video\nGPU_RENDER_GROUP=104\n"
    )
    calls = folder / "docker-calls.jsonl"
    docker = folder / "bin" / "docker"
    docker.parent.mkdir()
    docker.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "call = {'argv': sys.argv[1:]}\n"
        "if sys.argv[1] == 'build':\n"
        "    call['wheels'] = sorted(os.listdir(os.path.join(sys.argv[-1], 'wheels')))\n"
        "    call['files'] = sorted(os.listdir(sys.argv[-1]))\n"
        f"with open({str(calls)!r}, 'a') as log:\n"
        "    log.write(json.dumps(call) + '\\n')\n"
    )
    docker.chmod(0o755)
    return {"folder": folder, "calls": calls, "env": folder / ".env"}


def run_build(jetson: dict[str, Path], release: str, *args: str) -> subprocess.CompletedProcess:
    major, minor, patch = release[1:].split(".")
    host = jetson["folder"]
    release_file = host / "nv_tegra_release"
    release_file.write_text(RELEASE.format(major=major, revision=f"{minor}.{patch}"))
    env = {**os.environ, "PATH": f"{jetson['folder'] / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    env.pop("CONTAINER_REGISTRY_SERVER", None)
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_base_image"), *args,
         "--release-file", str(release_file), "--daemon-json", str(host / "daemon.json"),
         "--group-file", str(host / "group"), "--env", str(jetson["env"])],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip


def calls(jetson: dict[str, Path]) -> list[dict]:
    return [json.loads(line) for line in jetson["calls"].read_text().splitlines()]


def test_two_builds_in_a_row_each_with_exactly_one_wheel_under_its_real_name(
    jetson: dict[str, Path], wheel_server: tuple[str, dict[str, Path]], tmp_path: Path
) -> None:
    base_url, files = wheel_server
    lab_path = next(iter(files))
    first = run_build(
        jetson, "r36.4.3",
        "--wheel-url", f"{base_url}{lab_path}#sha256={sha(files[lab_path])}",
        "--wheel-sha256", sha(files[lab_path]), "--push",
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    given = tmp_path / "downloaded-by-hand.bin"
    given.write_bytes(files[lab_path].read_bytes())
    second = run_build(jetson, "r36.4.4", "--wheel-file", str(given), "--wheel-sha256", sha(given))
    assert second.returncode == 0, second.stderr
    builds = [c for c in calls(jetson) if c["argv"][0] == "build"]
    assert len(builds) == 2
    for each in builds:
        assert each["wheels"] == ["onnxruntime_gpu-1.20.0-cp310-cp310-linux_aarch64.whl"]
        assert each["files"] == ["Dockerfile", "fetch_wheel.py", "gpu_check.py", "wheels"]
        argv = each["argv"]
        assert "L4T_IMAGE=nvcr.io/nvidia/l4t-jetpack:r36.4.0" in argv
        assert "PYTHON=python3" in argv
        assert argv[argv.index("-t") + 1] == "onnxruntime-jetson:jp6-r36.4.0"
    checks = [c["argv"] for c in calls(jetson) if c["argv"][0] == "run"]
    for argv in checks:  # as the module runs: its uid, the manifest's groups, the runtime
        assert argv[argv.index("--user") + 1] == "10001:10001"
        assert argv[argv.index("--runtime") + 1] == "nvidia"
        assert [argv[i + 1] for i, a in enumerate(argv) if a == "--group-add"] == ["video", "104"]
    pushed = [c["argv"] for c in calls(jetson) if c["argv"][0] == "push"]
    assert pushed == [["push", "myregistry.azurecr.io/onnxruntime-jetson:jp6-r36.4.0"]]
    env_text = jetson["env"].read_text()
    assert "BASE_IMAGE=onnxruntime-jetson:jp6-r36.4.0" in env_text  # the second, unpushed build
    assert "# the fleet's registry" in env_text  # the rest of .env kept as it was


def test_jetpack_5_takes_python_3_11_and_an_opaque_zoo_link(
    jetson: dict[str, Path], wheel_server: tuple[str, dict[str, Path]]
) -> None:
    base_url, files = wheel_server
    zoo_path = list(files)[1]
    (jetson["folder"] / "group").write_text("video:x:44:\n")  # JetPack 5: no render group
    jetson["env"].write_text("GPU_VIDEO_GROUP=video\nGPU_RENDER_GROUP=video\n")
    result = run_build(
        jetson, "r35.6.0", "--wheel-url", f"{base_url}{zoo_path}",
        "--wheel-sha256", sha(files[zoo_path]),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (built,) = [c for c in calls(jetson) if c["argv"][0] == "build"]
    assert built["wheels"] == ["onnxruntime_gpu-1.20.0-cp311-cp311-linux_aarch64.whl"]
    assert "PYTHON=python3.11" in built["argv"]
    assert "L4T_IMAGE=nvcr.io/nvidia/l4t-jetpack:r35.4.1" in built["argv"]


def test_a_cp310_wheel_on_jetpack_5_stops_before_docker(
    jetson: dict[str, Path], wheel_server: tuple[str, dict[str, Path]]
) -> None:
    base_url, files = wheel_server
    lab_path = next(iter(files))
    jetson["env"].write_text("GPU_RENDER_GROUP=104\n")
    result = run_build(
        jetson, "r35.4.1", "--wheel-url", f"{base_url}{lab_path}",
        "--wheel-sha256", sha(files[lab_path]),
    )  # fmt: skip
    assert result.returncode == 1
    assert "built for cp310-cp310-linux_aarch64, but the image runs cp311" in result.stderr
    assert not jetson["calls"].exists()


def test_a_host_with_a_render_group_needs_it_in_the_manifest(
    jetson: dict[str, Path], tmp_path: Path
) -> None:
    jetson["env"].write_text("GPU_RENDER_GROUP=video  # not enough on JetPack 6\n")
    wheel = make_wheel(tmp_path, "w.whl", "onnxruntime-gpu", "cp310-cp310-linux_aarch64")
    result = run_build(jetson, "r36.4.3", "--wheel-file", str(wheel), "--wheel-sha256", sha(wheel))
    assert result.returncode == 1
    assert "set GPU_RENDER_GROUP=104 in .env" in result.stderr


def test_build_script_refuses_off_a_jetson(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "build_base_image"), "--wheel-url", "http://x",
         "--wheel-sha256", "0" * 64, "--release-file", str(tmp_path / "nv_tegra_release")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 1 and "run this on the Jetson" in result.stderr


def test_gpu_check_fails_unless_cuda_really_runs(tmp_path: Path) -> None:
    """The image's self-check, run here: it must fail on a machine where CUDA does not run."""
    result = subprocess.run(
        [sys.executable, str(CONTEXT / "gpu_check.py")], capture_output=True, text=True
    )
    if cuda_works():
        assert result.returncode == 0 and "CUDAExecutionProvider" in result.stdout
    else:
        assert result.returncode == 1
        assert "FAILED, CUDAExecutionProvider did not run" in result.stderr
