"""docs/deployment.md read without a deployment: every ``$NAME`` its shell blocks use is set
earlier in the doc, the variables block names what the loopback test sets, the copy step
writes exactly the paths the SuperNode reads; ``fedrecon certs`` and ``node-key``.
(tests/test_deploy_docs.py runs the doc's blocks on loopback.)"""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "deployment.md"
BLOCK = re.compile(r"<!-- (?:loopback: )?(?P<tag>[a-z ]+?) -->\n```bash\n(?P<body>.*?)```", re.S)
LOOPBACK = re.compile(r"<!-- loopback: (?P<tag>[a-z ]+?) -->\n```bash\n(?P<body>.*?)```", re.S)
BASH = re.compile(r"```bash\n(.*?)```", re.S)
NODES = 3
# set by the shell or the login, not by the doc
ENVIRONMENT = {"HOME", "PATH", "USER"}


def loopback_blocks() -> list[tuple[str, str]]:
    return [(m["tag"], m["body"]) for m in LOOPBACK.finditer(DOC.read_text())]


def block(tag: str) -> str:
    (body,) = [m["body"] for m in BLOCK.finditer(DOC.read_text()) if m["tag"] == tag]
    return body


# --- the doc, read -------------------------------------------------------------------------------

USE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")
DEFINE = re.compile(r"(?:^|[\s;&|(])(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=")
LOOP = re.compile(r"\bfor\s+([A-Za-z_][A-Za-z0-9_]*)\s+in\b")


def undefined_names(blocks: list[str]) -> list[str]:
    """``$NAME``s used in a shell block before any earlier line of the doc's shell blocks set
    them (an assignment, ``export``, a ``for`` loop's name), in reading order."""
    defined, missing = set(ENVIRONMENT), []
    for text in blocks:
        for number, line in enumerate(text.splitlines(), 1):
            defined |= set(DEFINE.findall(line)) | set(LOOP.findall(line))
            missing += [f"{name} (line {number}: {line.strip()})" for name in USE.findall(line) if name not in defined]
    return missing


def block_with(text: str) -> str:
    (body,) = [b for b in BASH.findall(DOC.read_text()) if text in b]
    return body


def doc_variables(work: Path, port: int, node_ports: dict, sites: Path) -> dict[str, str]:
    """The doc's variables (its ``variables`` block) for one machine; K, SITE and NODE_PORT per node."""
    return {"FEDRECON": str(REPO), "WORK": str(work), "LINK": "localhost", "LINK_IP": "127.0.0.1", "PORT": str(port),
            "N": str(NODES), "SCENARIO": str(work / "sites.yaml"), "RUNS": str(work / "runs"),
            "NODES": " ".join(["localhost"] * NODES), "K": "0", "SITE": str(sites / "site-0"),
            "NODE_PORT": str(node_ports.get(0, 9094)), "SCP_LOG": str(work / "scp.log")}


def script_only() -> str:
    """The ``node`` block that writes the SuperNode's script (not the one that predicts)."""
    (script,) = [b for tag, b in loopback_blocks() if tag == "node" and "supernode.sh" in b]
    return script


def test_every_variable_the_doc_uses_is_set_earlier_in_the_doc():
    blocks = BASH.findall(DOC.read_text())
    assert len(blocks) > 10
    assert undefined_names(blocks) == []
    # the checker itself: a name used before it is set is found, a loop's name is set
    assert undefined_names(['echo "$RUNS"\n', "RUNS=/tmp/r\n"]) == ['RUNS (line 1: echo "$RUNS")']
    assert undefined_names(["for K in 1 2; do echo $K; done\n"]) == []


def test_the_variables_block_names_what_the_test_sets():
    names = set(DEFINE.findall(block("variables")))
    assert names == set(doc_variables(Path("/w"), 1, {}, Path("/s"))) - {"SCP_LOG"}


def test_the_copy_step_writes_exactly_the_paths_the_supernode_reads():
    copy, node = block("copy"), script_only()
    written = re.findall(r'scp "[^"]+" "\$HOST:([^"]+)"', copy)
    sources = re.findall(r'scp "([^"]+)" "\$HOST:', copy)
    read = re.findall(r'--(?:root-certificates|auth-supernode-private-key) "([^"]+)"', node)
    assert written and sorted(written) == sorted(read) == sorted(sources)
    made = re.findall(r'mkdir -p ((?:"[^"]+" ?)+)', copy)[0]
    assert {str(Path(p).parent) for p in written} <= set(re.findall(r'"([^"]+)"', made))
    # and step 2 makes them: fedrecon certs writes ca.crt into $WORK/certs, node-key $WORK/keys/node$K
    certs = block_with("fedrecon certs")
    assert '"$WORK/certs"' in certs and '"$WORK/keys/node$K"' in certs
    assert set(written) == {"$WORK/certs/ca.crt", "$WORK/keys/node$K"}


def test_certs_name_the_hosts_given_and_never_overwrite(tmp_path):
    from cryptography import x509

    from server.cli import main

    assert main(["certs", str(tmp_path / "c"), "--host", "fl.example.org", "--ip", "10.1.2.3"]) == 0
    cert = x509.load_pem_x509_certificate((tmp_path / "c" / "server.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["fl.example.org"]
    assert [str(a) for a in names.get_values_for_type(x509.IPAddress)] == ["10.1.2.3"]
    ca = x509.load_pem_x509_certificate((tmp_path / "c" / "ca.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    before = (tmp_path / "c" / "server.key").read_bytes()
    assert main(["certs", str(tmp_path / "c"), "--host", "other"]) == 2
    assert (tmp_path / "c" / "server.key").read_bytes() == before
    assert main(["certs", str(tmp_path / "d"), "--ip", "10.1.2"]) == 2
    assert main(["node-key", str(tmp_path / "k" / "node0")]) == 0
    assert (tmp_path / "k" / "node0.pub").read_text().startswith("ecdsa-sha2-nistp384 ")
    assert main(["node-key", str(tmp_path / "k" / "node0")]) == 2
