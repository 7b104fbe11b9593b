"""Adding, draining, revoking and deleting a node from the UI, over the real stack (web,
Celery, PostgreSQL, Redis, a real agent and TensorFlow workers) in headless Chromium.

An admin adds a node on the *Add a node* page; an agent started with exactly the
environment file the page shows enrols and appears on the nodes page. As root it runs
in a network namespace of its own (a host on a virtual network, the control plane on
the bridge), with an empty ``/var/lib`` of its own for the file's ``AGENT_STATE_DIR``,
and it advertises its veth address without ``AGENT_ADDRESS``. Without root it runs on
this host with the state directory moved to a temporary folder (said in the output).
Then: a drained node gets no job until it is resumed; revoking it ends the job placed
there and the agent, with a clear message and exit status 78; a revoked node is
deleted from the page; and an agent speaking a newer protocol is refused, saying to
upgrade the control plane first.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.protocol import EXIT_REFUSED
from devtools.devstack import NetworkNamespaces
from tests.e2e.conftest import _stack, log_in, wait_for, wait_for_job
from tests.support.screenshots import screenshots_dir

pytestmark = [pytest.mark.e2e, pytest.mark.browser]

NODE = "added-1"
SCREENSHOTS = screenshots_dir()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The control plane with no agent of its own, and (as root) a spare network
    namespace for the node the test adds."""
    use_namespaces = (
        os.environ.get("ADAPTRAIN_TEST_NETNS", "1") != "0" and NetworkNamespaces.available()
    )
    yield from _stack(
        tmp_path_factory,
        suffix="addnode",
        agents=0,
        slots=1,
        namespaces=use_namespaces,
        spare_namespaces=1,
    )


@pytest.fixture(scope="module")
def page(stack, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    log_in(page, stack, "/nodes/")
    yield page
    page.close()


class AgentProcess:
    """An agent the test starts with a given environment, its output in a log file."""

    def __init__(self, stack, name: str, argv: list[str], env: dict[str, str]):
        self.namespace = None
        self.log = stack.log_dir / f"{name}.log"
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout_s: float) -> int:
        return self.proc.wait(timeout=timeout_s)

    def end(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        if self.namespace is not None:  # its workers too (sessions of their own)
            pids = subprocess.run(
                ["ip", "netns", "pids", self.namespace], capture_output=True, text=True
            ).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass


@pytest.fixture(scope="module")
def agents():
    started: list[AgentProcess] = []
    yield started
    for agent in started:
        agent.end()


def environment_file(text: str) -> dict[str, str]:
    """The variables an environment file sets (systemd's EnvironmentFile= syntax)."""
    return dict(
        line.split("=", 1)
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    )


def start_agent(stack, agents, env_file: dict[str, str], tmp: Path) -> AgentProcess:
    """Run ``python -m agent`` with exactly ``env_file`` (and a PATH and HOME)."""
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp), **env_file}
    argv = [sys.executable, "-m", "agent"]
    namespace = None
    if stack.namespaces is not None:
        namespace = stack.namespaces.names[0]
        # A /var/lib of its own (empty tmpfs, in the namespace's mounts only) for the
        # AGENT_STATE_DIR the page's file names.
        argv = stack.namespaces.wrap(
            0, ["sh", "-c", 'mount -t tmpfs tmpfs /var/lib && exec "$@"', "sh", *argv]
        )
    else:
        print(f"[test] no network namespace: AGENT_STATE_DIR moved to {tmp / 'state'}")
        env["AGENT_STATE_DIR"] = str(tmp / "state")
        env["AGENT_ON_EXIT"] = "stop"  # nothing to clean its workers up otherwise
    agent = AgentProcess(stack, f"agent-{env_file.get('AGENT_NAME', 'host')}", argv, env)
    agent.namespace = namespace
    agents.append(agent)
    return agent


def node_row(page, name: str):
    return page.locator("#nodes tbody tr", has_text=name)


def test_an_admin_adds_a_node_and_an_agent_with_the_shown_environment_enrols(
    stack, page, agents, tmp_path_factory
):
    page.goto(f"{stack.url}/nodes/")
    page.click("#add-node")
    page.wait_for_url("**/nodes/add/")
    page.fill("#node-label", "e2e rack")
    page.fill("#node-name", NODE)
    page.fill("#node-uses", "1")
    page.fill("#node-expires", "1")
    page.check("input[name=kind][value=cpu]")
    page.click("#node-create")
    page.wait_for_selector("#node-setup:not([hidden])")
    assert "pip install 'adaptrain[node,cpu]'" in page.inner_text("#setup-install")
    assert "KillMode=process" in page.inner_text("#setup-unit")
    assert "systemctl enable --now adaptrain-agent" in page.inner_text("#setup-start")
    assert page.locator("#node-setup button.copy").count() == 4
    assert page.get_attribute("#node-setup a[href$='agent-install.md']", "href")
    env_file = environment_file(page.text_content("#setup-env"))
    assert env_file["AGENT_SERVER"] == stack.url
    assert env_file["AGENT_NAME"] == NODE and "AGENT_ADDRESS" not in env_file
    row = page.locator("#join-tokens tbody tr", has_text="e2e rack")
    row.locator(".status-active").wait_for()

    agent = start_agent(stack, agents, env_file, tmp_path_factory.mktemp("added-node"))
    page.wait_for_selector(f"#setup-enrolled:has-text('Node {NODE} enrolled')", timeout=60_000)
    row.locator(".status-used_up").wait_for()
    # For the docs: the page as the admin sees it, the secret blanked out.
    page.evaluate(
        "t => { const e = document.getElementById('setup-env');"
        " e.textContent = e.textContent.replace(t, 'join_…'); }",
        env_file["AGENT_JOIN_TOKEN"],
    )
    page.screenshot(path=str(SCREENSHOTS / "node-add.png"), full_page=True)

    page.goto(f"{stack.url}/nodes/")
    node = node_row(page, NODE)
    node.locator(".status-online").wait_for(timeout=30_000)
    address = node.locator("td").nth(2).inner_text()
    if stack.namespaces is not None:
        # Worked out from the route to the control plane: its veth address.
        assert address == stack.namespaces.addresses[0]
    assert f"advertising address {address}" in agent.text()
    headers = [h.strip() for h in page.locator("#nodes thead th").all_inner_texts()]
    assert "protocol 1" in node.locator("td").nth(headers.index("Agent")).inner_text()


def test_a_drained_node_gets_no_job_until_it_is_resumed(stack, page):
    page.goto(f"{stack.url}/nodes/")
    node = node_row(page, NODE)
    node.get_by_role("button", name=f"Drain {NODE}").click()
    page.click("#confirm-yes")
    node.locator(".status-draining:visible").wait_for()

    status, job = stack.api.post(
        "/api/v1/jobs/",
        {
            "name": "not on a drained node",
            "entrypoint": "examples.digits",
            "hyperparameters": {"batch_size": 32, "lr": 0.05, "steps": 1_000_000},
            "workers": {"initial": 1},
        },
    )
    assert status == 201, job
    stack.job_id = job["id"]
    time.sleep(12)  # two placement sweeps (every 5 s) besides the placement at creation
    assert stack.api.get(f"/api/v1/jobs/{job['id']}/")[1]["status"] == "pending"

    node.get_by_role("button", name=f"Resume {NODE}").click()
    node.locator(".status-draining").wait_for(state="hidden")
    wait_for_job(
        stack.api,
        job["id"],
        lambda j: [w["node"] for w in j["workers"]] == [NODE],
        timeout_s=30,
        what="the job to be placed on the resumed node",
        stack=stack,
    )


def test_revoking_the_node_ends_its_job_and_its_agent_with_a_clear_message(stack, page, agents):
    (agent,) = agents
    wait_for(
        lambda: "started 1 worker(s)" in agent.text(),
        timeout_s=120,
        what="the agent to start the job's worker",
    )
    page.goto(f"{stack.url}/nodes/")
    node = node_row(page, NODE)
    node.get_by_role("button", name=f"Revoke {NODE}").click()
    page.click("#confirm-yes")
    node.locator(".status-revoked").wait_for()

    assert agent.wait(timeout_s=60) == EXIT_REFUSED
    log = agent.text()
    assert "this node was revoked by an admin" in log
    assert "delete AGENT_STATE_DIR/credential" in log
    assert "stopping the workers of 1 job(s): the node was revoked" in log
    job = stack.api.get(f"/api/v1/jobs/{stack.job_id}/")[1]
    assert job["status"] == "failed"
    assert f"node {NODE} was revoked by user:e2e" in job["status_reason"]


def test_a_revoked_node_is_deleted_from_the_page(stack, page):
    page.goto(f"{stack.url}/nodes/")
    node = node_row(page, NODE)
    node.get_by_role("button", name=f"Delete {NODE}").click()
    page.click("#confirm-yes")
    node.wait_for(state="detached")
    assert NODE not in [n["name"] for n in stack.api.get("/api/v1/nodes/")[1]]


def test_an_agent_speaking_a_newer_protocol_is_told_to_upgrade_the_control_plane(stack, tmp_path):
    status, token = stack.api.post("/api/v1/join-tokens/", {"label": "too new"})
    assert status == 201, token
    # This agent as a release speaking protocol 2 would be.
    newer = (
        "import agent.daemon.client as client\n"
        "client.PROTOCOL_VERSION = 2\n"
        "from agent.__main__ import main\n"
        "main()\n"
    )
    agent = AgentProcess(
        stack,
        "agent-too-new",
        [sys.executable, "-c", newer],
        {
            "PATH": os.environ["PATH"],
            "HOME": str(tmp_path),
            "AGENT_SERVER": stack.url,
            "AGENT_JOIN_TOKEN": token["token"],
            "AGENT_NAME": "too-new",
            "AGENT_STATE_DIR": str(tmp_path / "state"),
        },
    )
    try:
        assert agent.wait(timeout_s=60) == EXIT_REFUSED
    finally:
        agent.end()
    assert "upgrade the control plane first" in agent.text()
    (listed,) = [t for t in stack.api.get("/api/v1/join-tokens/")[1] if t["id"] == token["id"]]
    assert listed["uses_left"] == 1  # a refused enrolment uses nothing


def test_the_add_a_node_page_fits_a_narrow_screen(stack, browser):
    narrow = browser.new_page(viewport={"width": 390, "height": 844})
    try:
        log_in(narrow, stack, "/nodes/add/")
        narrow.fill("#node-label", "narrow")
        narrow.click("#node-create")
        narrow.wait_for_selector("#node-setup:not([hidden])")
        width = narrow.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, f"/nodes/add/ scrolls sideways at 390 px ({width} px wide)"
    finally:
        narrow.close()
