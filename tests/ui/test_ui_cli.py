"""``ganinvert ui`` on the command line: its help, and one-line errors (exit 2) without the ui extra,
with a bad generator and on a port it cannot open (after the warning that --host other than
loopback prints)."""

from __future__ import annotations

import socket
import sys

import pytest

from ganinvert.cli import main


def test_ui_is_a_command(capsys):
    assert main(["ui", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--port" in out and "--host" in out and "--generator" in out


def test_without_gradio_it_says_which_extra_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import gradio raises ImportError
    monkeypatch.delitem(sys.modules, "ganinvert.ui.app", raising=False)
    assert main(["ui"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "ganinvert: error: ganinvert ui needs the 'ui' extra (gradio is missing): pip install -e \".[ui]\""


def test_a_bad_generator_is_one_line(tmp_path, capsys):
    pytest.importorskip("gradio")
    fake = tmp_path / "g.pt"
    fake.write_text("not a checkpoint")
    assert main(["ui", "--generator", str(fake), "--no-lpips"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ganinvert: error:") and "g.pt" in err[0]


def test_another_host_warns_and_a_busy_port_is_one_line(capsys):
    pytest.importorskip("gradio")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["ui", "--no-lpips", "--host", "0.0.0.0", "--port", str(port)]) == 2
    warning, error = capsys.readouterr().err.strip().splitlines()
    assert warning.startswith("ganinvert: warning: serving on 0.0.0.0, not only this machine")
    assert error == (f"ganinvert: error: cannot serve on 0.0.0.0:{port}: the port is in use or the address is "
                     "not this machine's; choose another --port or --host")
