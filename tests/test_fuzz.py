"""A fuzz pass over every endpoint of the dashboard (issue 16, evidence): the app runs on a free loopback port and
each of its event handlers is called over HTTP, through the queue protocol the page itself speaks, with bad values in
one input at a time (wrong types, NaN and infinities, huge numbers, unknown names, paths out of the store, very long
text). Every answer must be either a normal completion or a message a person can act on (it names the field, the
value or what is allowed): never a bare "Error", never a traceback, never the absolute path of the run store, and
the server must answer normally afterwards."""

from __future__ import annotations

import json
import math
import socket
import uuid
from dataclasses import dataclass, field

import pytest
import requests

#: the values sent into one input at a time, by kind of component
TEXT_CASES = ["", "nan", "inf", "-inf", "1e308", "-1", "no-such-thing", "../../../etc/passwd", "x" * 20_000,
              "{'__class__': 1}"]
NUMBER_CASES = [float("nan"), float("inf"), -float("inf"), 1e308, -1e308, -1, "abc", None, [1, 2]]
CHOICE_CASES = ["no-such-thing", "../../etc/passwd", 5, None, ["lora", "dora"], {"a": 1}]
TABLE_CASES = [{"headers": ["field", "value"], "data": [["steps", "nan"], ["lr", "inf"]]},
               {"headers": ["field", "value"], "data": [["no_such_field", "1"]]},
               {"headers": ["field", "value"], "data": [["steps", "1e308"], ["seed", "-1"]]},
               {"headers": ["x"], "data": [[None]]},
               {"headers": [], "data": []},
               "not a table", 7, None]
BARE = {"", "error", "Error", "None", "null"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Answer:
    """What one call came back with: its outputs (or None), its warnings and its error (if any)."""

    success: bool
    outputs: list | None
    messages: list[str] = field(default_factory=list)
    error: str | None = None
    status: int = 200


class Page:
    """A minimal client of Gradio's queue protocol (what the browser uses): ``call(fn_index, data)`` joins the
    queue for one session and reads the event stream until the call completes, keeping warnings (``gr.Warning``)."""

    def __init__(self, base: str, session: str | None = None):
        self.base = base
        self.session = session or uuid.uuid4().hex[:11]
        self.http = requests.Session()
        self.http.headers["Origin"] = base.split("/gradio_api")[0]

    def call(self, fn_index: int, data: list, timeout: float = 60) -> Answer:
        # event data as a click on a table's first cell sends it (handlers of other events ignore it)
        body = json.dumps({"data": data, "fn_index": fn_index, "session_hash": self.session, "trigger_id": None,
                           "event_data": {"index": [0, 0], "value": "x", "row_value": ["x"], "col_value": ["x"]}},
                          allow_nan=True)
        r = self.http.post(f"{self.base}/queue/join", data=body, headers={"Content-Type": "application/json"},
                           timeout=timeout)
        if r.status_code != 200:
            return Answer(False, None, error=r.text[:500], status=r.status_code)
        event = r.json()["event_id"]
        messages: list[str] = []
        with self.http.get(f"{self.base}/queue/data", params={"session_hash": self.session}, stream=True,
                           timeout=timeout) as stream:
            for line in stream.iter_lines(decode_unicode=True):
                if not line or not line.startswith("data:"):
                    continue
                msg = json.loads(line[5:])
                if msg.get("event_id") not in (None, event):
                    continue
                if msg.get("msg") == "log":
                    messages.append(str(msg.get("log")))
                elif msg.get("msg") == "process_completed":
                    out = msg.get("output") or {}
                    if msg.get("success"):
                        return Answer(True, out.get("data"), messages)
                    return Answer(False, None, messages, error=str(out.get("error")))
                elif msg.get("msg") == "close_stream":
                    break
        return Answer(False, None, messages, error="the stream closed before the call completed")


def endpoints(demo) -> list[dict]:
    """Every event handler of the app with the kind and default value of each input."""
    out = []
    for index, fn in demo.fns.items():
        inputs = []
        for comp in fn.inputs:
            kind = type(comp).__name__
            default = getattr(comp, "value", None)
            if kind == "Dataframe" and default is not None:
                default = comp.postprocess(default).model_dump() if hasattr(comp, "postprocess") else None
            inputs.append({"kind": kind, "label": getattr(comp, "label", None), "default": default,
                           "columns": list(getattr(comp, "columns", None) or [])})
        out.append({"index": index, "api": fn.api_name, "inputs": inputs})
    return out


CHECKBOX_CASES = [True, False, None, "yes", 3]
#: nothing, an empty list, and a file the page never uploaded (a path outside Gradio's upload folder must be refused,
#: never read)
FILE_CASES = [None, [], [{"path": "/etc/passwd", "orig_name": "passwd", "meta": {"_type": "gradio.FileData"}}]]


def cases_for(kind: str) -> list:
    if kind in ("Textbox",):
        return TEXT_CASES
    if kind in ("Slider", "Number"):
        return NUMBER_CASES
    if kind in ("Dropdown", "Radio", "CheckboxGroup"):
        return CHOICE_CASES
    if kind == "Dataframe":
        return TABLE_CASES
    if kind == "Checkbox":
        return CHECKBOX_CASES
    if kind == "File":
        return FILE_CASES
    return []  # State: held by the server, never sent by the page


def malformed(info: dict, value) -> bool:
    """Whether ``value`` is of the wrong shape for the input (not a number for a slider, not a list for a checkbox
    group, not a table with the columns the callbacks read): refused before any callback, with the field's label."""
    if info["kind"] == "Slider":
        return not isinstance(value, (int, float))
    if info["kind"] == "CheckboxGroup":
        return not isinstance(value, list)
    if info["kind"] == "Dataframe":
        if isinstance(value, dict) and not value.get("headers") and not any(value.get("data") or []):
            return False  # an empty table: no rows to read
        return not isinstance(value, dict) or any(c not in value.get("headers", []) for c in info["columns"])
    return False


def names_the_field(answer: Answer, label: str | None) -> str | None:
    """None when a refused malformed value's message names the field (its label, without the hint in brackets)."""
    short = (label or "table").split(" (")[0]
    texts = [*answer.messages, *([answer.error] if answer.error is not None else [])]
    if answer.success and not answer.messages:
        return "accepted a value of the wrong shape"
    if not any(text.startswith(f"{short}: ") for text in texts):
        return f"the message does not start with the field's name {short!r}"
    return None


def judge(answer: Answer, runs_root: str) -> str | None:
    """None when the answer is acceptable, else why not."""
    texts = [*answer.messages, *([answer.error] if answer.error is not None else [])]
    for text in texts:
        if text.strip() in BARE:
            return f"a bare {text!r}"
        if "Traceback" in text:
            return "a traceback"
        if runs_root in text:
            return "the absolute path of the run store"
    if answer.status >= 500:
        return f"HTTP {answer.status}"
    if not answer.success and answer.error is None and not answer.messages:
        return "failed without a message"
    return None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from workbench.dashboard import app as dashboard_app

    root = tmp_path_factory.mktemp("fuzz-runs")
    port = free_port()
    demo = dashboard_app.build_app(str(root))
    dashboard_app.launch(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
    yield demo, f"http://127.0.0.1:{port}/gradio_api", str(root.resolve())
    demo.close()
    settle()


def settle(timeout: float = 60) -> None:
    """Stop every job the calls started and wait for them and the app's warm-up thread: a thread still inside
    torch when the interpreter exits aborts the process."""
    import threading
    import time

    from workbench.dashboard import jobs

    with jobs._LOCK:
        running = [j for j in jobs._JOBS.values() if not j.done]
    for job in running:
        job.request_stop()
    deadline = time.time() + timeout
    while any(not j.done for j in running) and time.time() < deadline:
        time.sleep(0.05)
    for thread in threading.enumerate():
        if thread.name == "warm-up":
            thread.join(max(deadline - time.time(), 1))


KINDS = ["Textbox", "Slider", "Dropdown", "Radio", "CheckboxGroup", "Dataframe", "Checkbox", "File"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_every_endpoint_answers_bad_input_with_a_message(server, kind):
    demo, base, root = server
    failures, count, eps = [], 0, endpoints(demo)
    assert len(eps) >= 40  # the whole app, not a part of it
    for ep in eps:
        baseline = [None if i["kind"] == "State" else i["default"] for i in ep["inputs"]]
        for position, info in enumerate(ep["inputs"]):
            if info["kind"] != kind:
                continue
            for value in cases_for(info["kind"]):
                data = list(baseline)
                data[position] = value
                answer = Page(base).call(ep["index"], data)  # a fresh session per case: no job is left in the way
                count += 1
                problem = judge(answer, root) or (names_the_field(answer, info["label"])
                                                   if malformed(info, value) else None)
                if problem:
                    failures.append(f"{ep['api']} input {position} ({info['kind']} {info['label']!r}) = "
                                    f"{str(value)[:40]!r}: {problem}: {(answer.error or answer.messages)!s:.200}")
    print(f"fuzz {kind}: {len(eps)} endpoints, {count} cases, {len(failures)} failures", *failures, sep="\n")
    assert count > 0
    # the server still serves the page and its API after all of it
    assert requests.get(base.replace("/gradio_api", "/"), timeout=30).status_code == 200
    assert not failures, "\n".join(failures)


def test_other_inputs_are_covered():
    # every kind of input the app has is fuzzed by one of the cases above (a new kind needs its own values)
    import tempfile

    from workbench.dashboard import app as dashboard_app

    with tempfile.TemporaryDirectory() as root:
        kinds = {i["kind"] for ep in endpoints(dashboard_app.build_app(root)) for i in ep["inputs"]}
    assert kinds <= {*KINDS, "State"}, kinds - {*KINDS, "State"}


def test_nan_and_infinity_reach_the_server_as_json():
    # the fuzz sends NaN and infinities the way a hand-written client would (Python's json writes them as literals)
    body = json.dumps({"data": [math.nan, math.inf]}, allow_nan=True)
    assert "NaN" in body and "Infinity" in body
