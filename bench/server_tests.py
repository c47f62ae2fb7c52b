"""llama.cpp's own server tests (tools/server/tests in the pinned sdist) against edged and
against llama-server, each started the same way on the same local model.

The suite starts a server per test through `$LLAMA_SERVER_BIN_PATH` with llama-server's
flags and a Hugging Face repository to download. Nothing is downloaded here: both servers
run through a small launcher that replaces `--hf-repo`/`--hf-file`/`--model-url` with one
local GGUF (the embedded SmolLM2 unless `--model`), and the suite's up-front download
(`ServerPreset.load_all`) is switched off in the copy it runs. For edged the launcher maps
llama-server's flags to `edged serve`'s (`FLAGS`) and drops those edged has no equivalent of
(listed in the launcher's log). Tests that check the exact text of the suite's own tiny
models fail on both servers alike; what matters is the difference.

    python bench/server_tests.py                     # the default files, a table
    python bench/server_tests.py --write             # and into bench/RESULTS.md
    python bench/server_tests.py --files test_tokenize.py test_stream.py
    python bench/server_tests.py --servers edged     # llama-server's outcomes as last kept

Each server's outcomes per test are kept in bench/server_tests.json (with the date and files
of the run), so a change on edged's side needs only edged's run: llama-server's per-test
start is fast, edged's (a Python process) takes seconds, and the whole suite against both
takes over an hour on two cores.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from llama_server import _pinned_version, llama_server_binary
from results import write_section

from daemon.config import embedded_model_path

BEGIN, END = "<!-- server-tests:begin -->", "<!-- server-tests:end -->"
KEPT = Path(__file__).resolve().parent / "server_tests.json"
SERVERS = ("edged", "llama-server")
FILES = [
    "test_chat_completion.py",
    "test_completion.py",
    "test_stream.py",
    "test_tokenize.py",
    "test_compat_anthropic.py",
    "test_compat_oai_responses.py",
    "test_tool_call.py",
]
# llama-server flag -> edged serve flag (None: taken, nothing to pass); flags taking a value.
FLAGS: dict[str, str | None] = {
    "--port": "--port",
    "--host": "--host",
    "--ctx-size": "--ctx-size",
    "-c": "--ctx-size",
    "--parallel": "--parallel",
    "-np": "--parallel",
    "--batch-size": "--batch-size",
    "-b": "--batch-size",
    "--ubatch-size": "--ubatch-size",
    "-ub": "--ubatch-size",
    "--threads": "--threads",
    "-t": "--threads",
    "-ctk": "--cache-type-k",
    "-ctv": "--cache-type-v",
    "--lora": "--lora",
    "--draft": None,
    "--temp": None,  # a request's default temperature: edged takes it per request
    "--seed": "--seed",
    "--n-predict": None,  # a default max tokens: edged bounds by context and --max-tokens-cap
    "--reasoning-format": None,
    "--chat-template": "--chat-template",
    "--chat-template-file": "--chat-template-file",
    "--api-key": None,  # handled below: edged reads keys from its environment
    "--model": None,
    "--hf-repo": None,
    "--hf-file": None,
    "--model-url": None,
    "-fa": None,
    "--pooling": None,
    "--slot-save-path": None,
    "--spec-type": None,
    "--spec-draft-n-max": None,
    "--spec-draft-n-min": None,
    "--grp-attn-n": None,
    "--grp-attn-w": None,
    "--models-dir": None,
    "--models-max": None,
    "--cache-ram": None,
    "--tags": None,
    "--cors-origins": None,
    "--n-gpu-layers": None,
}
LAUNCHER = '''#!{python}
"""llama-server's command line, for {which}, on one local model (bench/server_tests.py)."""
import os, sys
MODEL = {model!r}
WHICH = {which!r}
FLAGS = {flags!r}
TAKES = {{"--hf-repo", "--hf-file", "--model-url", "--model", "-m"}}
SUITE = {suite!r}  # the suite's own folder: its relative paths (templates) are from there
args = sys.argv[1:]
for i, a in enumerate(args[:-1]):
    if a == "--chat-template-file" and not os.path.isabs(args[i + 1]):
        args[i + 1] = os.path.normpath(os.path.join(SUITE, args[i + 1]))
out, dropped, i, key = [], [], 0, None
while i < len(args):
    a = args[i]
    nxt = args[i + 1] if i + 1 < len(args) else None
    if a in TAKES:
        i += 2
        continue
    if a == "--offline":
        i += 1
        continue
    if WHICH == "llama-server":
        out.append(a)
        i += 1
        continue
    if a == "--api-key":
        key = nxt
        i += 2
        continue
    if a == "--alias":  # edged's alias names its model: NAME=MODEL
        out += ["--alias", nxt + "=" + os.path.basename(MODEL)[: -len(".gguf")]]
        i += 2
        continue
    if a in FLAGS:
        if FLAGS[a] is not None:
            out += [FLAGS[a], nxt]
        else:
            dropped += [a, nxt]
        i += 2
        continue
    if a == "--verbose":  # answers carry `__verbose`, as llama-server's do under it
        out.append(a)
        i += 1
        continue
    dropped.append(a)  # a switch edged has no equivalent of (--jinja: edged always renders)
    i += 1
# llama-server's --ctx-size is shared by its slots; edged's is one sequence's. Under
# --kv-unified one sequence may use all of it, as one of edged's may use its --ctx-size.
if "--ctx-size" in out and "--kv-unified" not in args:
    at = out.index("--ctx-size")
    slots = int(out[out.index("--parallel") + 1]) if "--parallel" in out else 1
    out[at + 1] = str(max(16, int(out[at + 1]) // slots))
env = dict(os.environ)
if WHICH == "llama-server":
    cmd = [{server!r}, "--model", MODEL, *out]
else:
    sys.stderr.write("edged launcher: not passed: " + " ".join(map(str, dropped)) + "\\n")
    if key:
        env["EDGED_API_KEYS"] = key
    cmd = [{python!r}, "-m", "daemon", "serve", "--model", MODEL, *out]
os.execvpe(cmd[0], cmd, env)
'''


def suite_dir() -> Path:
    ver = _pinned_version()
    root = Path.home() / ".cache" / "edged-peer" / ver / f"llama_cpp_python-{ver}"
    path = root / "vendor" / "llama.cpp" / "tools" / "server" / "tests"
    if not path.is_dir():
        raise SystemExit(f"no server tests at {path}: run bench/build_llama_server.sh")
    return path


def prepare(work: Path) -> Path:
    """A copy of the suite whose up-front model download does nothing."""
    tests = work / "tests"
    shutil.copytree(suite_dir(), tests)
    utils = tests / "utils.py"
    text = utils.read_text()
    marker = "    def load_all() -> None:"
    if marker not in text:
        raise SystemExit("the suite's ServerPreset.load_all changed: update bench/server_tests.py")
    utils.write_text(text.replace(marker, marker + "\n        return  # offline: local model"))
    # `wget` only downloads models, which nothing here does: a stand-in keeps the import.
    (tests / "wget.py").write_text(
        "def download(*a, **k):\n    raise RuntimeError('offline: no downloads')\n"
    )
    return tests


def launcher(work: Path, which: str, model: Path) -> Path:
    path = work / f"{which}-launcher"
    path.write_text(
        LAUNCHER.format(
            python=sys.executable,
            which=which,
            model=str(model),
            flags=FLAGS,
            server=str(llama_server_binary()),
            suite=str(suite_dir()),
        )
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def run(tests: Path, files: list[str], which: str, exe: Path, timeout: int) -> dict[str, str]:
    """Outcome per test id ("passed", "failed", "skipped") of the files against `which`."""
    xml = tests.parent / f"{which}.xml"
    env = {**os.environ, "LLAMA_SERVER_BIN_PATH": str(exe), "PYTHONPATH": str(Path.cwd())}
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        *[f"unit/{f}" for f in files],
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:randomly",
        f"--junitxml={xml}",
        "-o",
        "addopts=",
    ]
    subprocess.run(cmd, cwd=tests, env=env, timeout=timeout, check=False)
    out: dict[str, str] = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        if kinds & {"failure", "error"}:
            out[name] = "failed"
        else:
            out[name] = "skipped" if "skipped" in kinds else "passed"
    return out


def _dates(kept: dict[str, Any], files: list[str]) -> str:
    """When each server's outcomes of `files` were taken, compactly."""
    out = []
    for which in SERVERS:
        dates = kept[which].get("dates") or dict.fromkeys(files, kept[which].get("date", "?"))
        by_date: dict[str, list[str]] = {}
        for f in files:
            by_date.setdefault(dates.get(f, "?"), []).append(f.removesuffix(".py"))
        if len(by_date) == 1:
            out.append(f"{which} {next(iter(by_date))}")
        else:
            parts = "; ".join(f"{', '.join(fs)} {d}" for d, fs in sorted(by_date.items()))
            out.append(f"{which}: {parts}")
    return "; ".join(out)


def _file_of(test_id: str) -> str:
    """`unit.test_stream::test_x[...]` -> `test_stream.py`."""
    return test_id.split("::", 1)[0].removeprefix("unit.") + ".py"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", nargs="*", default=FILES)
    p.add_argument("--model", type=Path, default=embedded_model_path())
    p.add_argument("--timeout", type=int, default=3600, help="seconds per server")
    p.add_argument("--write", action="store_true")
    p.add_argument(
        "--servers",
        nargs="*",
        choices=SERVERS,
        default=list(SERVERS),
        help="the ones to run (none: the table from the kept outcomes)",
    )
    args = p.parse_args()
    kept = json.loads(KEPT.read_text()) if KEPT.exists() else {}
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    with tempfile.TemporaryDirectory(prefix="edged-server-tests-") as tmp:
        work = Path(tmp)
        tests = prepare(work)
        for which in args.servers:
            exe = launcher(work, which, args.model)
            outcomes = run(tests, args.files, which, exe, args.timeout)
            previous = kept.get(which, {})
            kept[which] = {
                "model": args.model.name,
                "dates": {**previous.get("dates", {}), **dict.fromkeys(args.files, stamp)},
                "outcomes": {**previous.get("outcomes", {}), **outcomes},
            }
    KEPT.write_text(json.dumps(kept, indent=1, sort_keys=True) + "\n")
    missing = [w for w in SERVERS if w not in kept]
    if missing:
        raise SystemExit(f"no outcomes kept for {missing}: run them (--servers)")
    results = {
        w: {t: o for t, o in kept[w]["outcomes"].items() if _file_of(t) in args.files}
        for w in SERVERS
    }
    lines = [
        f"llama.cpp's server tests from the pinned sdist (llama-cpp-python "
        f"{_pinned_version()}), both servers on `{args.model.name}` through the same launcher "
        f"(runs: {_dates(kept, args.files)}).",
        "",
        "| file | tests | edged passed | llama-server passed |",
        "| --- | --- | --- | --- |",
    ]
    total = [0, 0, 0]
    for f in args.files:
        ids = sorted({t for r in results.values() for t in r if _file_of(t) == f})
        e = sum(results["edged"].get(t) == "passed" for t in ids)
        s = sum(results["llama-server"].get(t) == "passed" for t in ids)
        total = [total[0] + len(ids), total[1] + e, total[2] + s]
        lines.append(f"| {f} | {len(ids)} | {e} | {s} |")
    lines.append(f"| **all** | {total[0]} | {total[1]} | {total[2]} |")
    only_peer = sorted(
        t
        for t, o in results["llama-server"].items()
        if o == "passed" and results["edged"].get(t) != "passed"
    )
    only_edged = sorted(
        t
        for t, o in results["edged"].items()
        if o == "passed" and results["llama-server"].get(t) != "passed"
    )
    lines += ["", f"Passing on llama-server only ({len(only_peer)}):", ""]
    lines += [f"- `{t}`" for t in only_peer] or ["- none"]
    lines += ["", f"Passing on edged only ({len(only_edged)}):", ""]
    lines += [f"- `{t}`" for t in only_edged] or ["- none"]
    table = "\n".join(lines)
    print(table)
    if args.write:
        write_section(table, BEGIN, END, "## llama.cpp's server tests against edged")


if __name__ == "__main__":
    main()
