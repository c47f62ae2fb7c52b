"""--chat-template-file replaces a model's own chat template (llama-server's flag of the same
name): for the default model (PATH) or a named one (NAME=PATH, by alias too); everything that
reads the template (rendering, the family's calls, /props) reads the replacement.
--chat-template NAME picks one of llama.cpp's built-in formats instead, as llama-server's does."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from daemon.config import Settings
from tests.conftest import Server, start_server, stop_server
from tests.families.conftest import template

QWEN = "Qwen-Qwen2.5-7B-Instruct"
LLAMA = "meta-llama-Llama-3.1-8B-Instruct"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("override")
    out = {}
    for name in (QWEN, LLAMA):
        out[name] = tmp / f"{name}.jinja"
        out[name].write_text(template(name))
    out["reloaded"] = tmp / "reloaded.jinja"
    out["reloaded"].write_text("{% for m in messages %}first:{{ m.content }}{% endfor %}")
    out["broken"] = tmp / "broken.jinja"
    out["broken"].write_text("{% for m in messages %}{{ m.content }")  # never closed
    return out


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, files: dict[str, Path], smollm_gguf: Path
) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("override_http")
    # A template belongs to a model file (aliases of one file share its loaded model): each
    # name here is a file of its own, a link to the embedded model.
    links = {}
    for name in ("other", "own", "broken", "builtin", "reloaded"):
        links[name] = tmp / f"{name}.gguf"
        links[name].symlink_to(smollm_gguf)
    srv = start_server(
        tmp,
        "--alias",
        f"other={links['other']}",
        "--alias",
        f"own={links['own']}",
        "--alias",
        f"broken={links['broken']}",
        "--chat-template-file",
        str(files[QWEN]),
        "--chat-template-file",
        f"other={files[LLAMA]}",
        "--chat-template-file",
        f"broken={files['broken']}",
        "--alias",
        f"builtin={links['builtin']}",
        "--chat-template",
        "builtin=command-r",
        "--alias",
        f"reloaded={links['reloaded']}",
        "--chat-template-file",
        f"reloaded={files['reloaded']}",
    )
    yield srv
    stop_server(srv)


def _props(server: Server, model: str) -> dict[str, object]:
    r = httpx.get(f"{server.url}/props", params={"model": model}, timeout=60)
    r.raise_for_status()
    return dict(r.json())


def _rendered(server: Server, model: str) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": "Hi"}]}
    r = httpx.post(f"{server.url}/apply-template", json=body, timeout=60)
    r.raise_for_status()
    return str(r.json()["prompt"])


def test_the_default_and_a_named_model_render_their_files(
    server: Server, files: dict[str, Path], smollm_gguf: Path
) -> None:
    default = _props(server, smollm_gguf.stem)
    assert default["chat_template"] == files[QWEN].read_text()
    assert "You are Qwen, created by Alibaba Cloud" in _rendered(server, smollm_gguf.stem)
    other = _props(server, "other")
    assert other["chat_template"] == files[LLAMA].read_text()
    assert "<|start_header_id|>" in _rendered(server, "other")
    # An alias without a file of its own keeps the GGUF's template (SmolLM2's ChatML).
    own = _props(server, "own")
    assert own["chat_template"] not in (files[QWEN].read_text(), files[LLAMA].read_text())
    assert _rendered(server, "own").startswith("<|im_start|>system")


def test_the_replacement_decides_the_family(server: Server, smollm_gguf: Path) -> None:
    """Qwen 2.5's template lists tools itself and teaches `<tool_call>` blocks: a required
    call on the overridden default model comes back parsed from that markup."""
    assert _props(server, "other")["chat_family"] == {
        "family": "llama3",
        "tool_format": "llama3",
        "reasoning": None,
    }
    assert _props(server, smollm_gguf.stem)["chat_family"]["family"] == "hermes"  # type: ignore[index]
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    tool = {
        "type": "function",
        "function": {
            "name": "ping",
            "parameters": {"type": "object", "properties": {}},
        },
    }
    out = client.chat.completions.create(
        model=smollm_gguf.stem,
        messages=[{"role": "user", "content": "Ping."}],
        tools=[tool],  # type: ignore[list-item]
        tool_choice="required",
        max_tokens=40,
        temperature=0,
    )
    (call,) = out.choices[0].message.tool_calls or []
    assert call.function.name == "ping"


def test_a_template_that_does_not_compile_fails_that_models_load_alone(server: Server) -> None:
    r = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": "broken", "messages": [{"role": "user", "content": "Hi"}]},
        timeout=60,
    )
    assert r.status_code >= 400 and "chat-template-file" in r.text
    assert _props(server, "own")["chat_template"]  # the daemon goes on serving the others


def test_a_missing_file_or_two_for_one_model_is_refused_at_start(
    files: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="no file"):
        Settings(chat_template_file=[str(tmp_path / "nowhere.jinja")])
    with pytest.raises(ValueError, match="two chat templates"):
        Settings(chat_template_file=[f"m={files[QWEN]}", f"m={files[LLAMA]}"])
    assert Settings(chat_template_file=[f"m={files[QWEN]}"]).chat_template_file


# llama-server's own test of the format (tools/server/tests, test_apply_chat_template).
COMMAND_R = (
    "<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>You are a test.<|END_OF_TURN_TOKEN|>"
    "<|START_OF_TURN_TOKEN|><|USER_TOKEN|>Hi there<|END_OF_TURN_TOKEN|>"
    "<|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"
)


def test_a_builtin_format_renders_as_llama_cpp_writes_it(server: Server) -> None:
    body = {
        "model": "builtin",
        "messages": [
            {"role": "system", "content": "You are a test."},
            {"role": "user", "content": "Hi there"},
        ],
    }
    r = httpx.post(f"{server.url}/apply-template", json=body, timeout=60)
    assert r.status_code == 200 and r.json()["prompt"] == COMMAND_R
    assert _props(server, "builtin")["chat_template"] == "command-r"
    # Tools reach a built-in format as the generic prompt (it has no tool syntax of its own),
    # through every dialect.
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    tool = {
        "type": "function",
        "function": {"name": "now", "parameters": {"type": "object", "properties": {}}},
    }
    answer = client.chat.completions.create(
        model="builtin",
        messages=[{"role": "user", "content": "Hi"}],
        tools=[tool],  # type: ignore[list-item]
        max_tokens=4,
        temperature=0,
        extra_body={"verbose": True},
    )
    assert answer.choices[0].finish_reason in {"stop", "length", "tool_calls"}
    prompt = (answer.model_extra or {})["__verbose"]["prompt"]
    assert prompt.startswith("<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>") and '"now"' in prompt
    shown = _rendered(server, "builtin")
    assert shown.startswith("<|START_OF_TURN_TOKEN|><|USER_TOKEN|>Hi<|END_OF_TURN_TOKEN|>")


def test_builtin_names_are_checked_at_start(files: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match=r"not a llama\.cpp built-in format"):
        Settings(chat_template=["m=nonsense"])
    with pytest.raises(ValueError, match="two chat templates"):
        Settings(chat_template=["m=chatml", "m=llama3"])
    with pytest.raises(ValueError, match="both given"):
        Settings(chat_template=["m=chatml"], chat_template_file=[f"m={files[QWEN]}"])
    assert Settings(chat_template=["chatml", "m=llama3"]).chat_template


def test_a_template_file_is_read_again_when_its_model_loads_again(
    server: Server, files: dict[str, Path]
) -> None:
    """The file is the model's template at each load: edited while the model is loaded it
    changes nothing, until the model is unloaded (eviction, keep-alive, admin) and loads
    again."""
    assert _rendered(server, "reloaded") == "first:Hi"
    files["reloaded"].write_text("{% for m in messages %}second:{{ m.content }}{% endfor %}")
    assert _rendered(server, "reloaded") == "first:Hi"  # loaded: the compiled template serves
    r = httpx.post(f"{server.url}/admin/unload", json={"model": "reloaded"}, timeout=60)
    assert r.status_code == 200 and r.json()["was_loaded"] is True
    assert _rendered(server, "reloaded") == "second:Hi"
    assert _props(server, "reloaded")["chat_template"] == files["reloaded"].read_text()
