"""The HTML report's workflow description: config text shows as text, never as reStructuredText markup.

Snakemake renders workflow/report/workflow.rst with Jinja and then docutils, whose `raw` and `include`
directives are enabled; this renders it the same way.
"""

from pathlib import Path

import pytest
import yaml
from docutils.core import publish_parts
from jinja2 import Environment

from circuit_reuse.config import ConfigError, validate_config

REPO = Path(__file__).resolve().parent.parent


def _render(config) -> str:
    class Snakemake:  # what snakemake passes the template
        pass

    Snakemake.config = config
    template = (REPO / "workflow" / "report" / "workflow.rst").read_text()
    text = Environment(trim_blocks=True, lstrip_blocks=True).from_string(template).render(snakemake=Snakemake)
    return publish_parts(text, writer="html", settings_overrides={"report_level": 5})["html_body"]


def _hostile(secret_file: Path) -> str:
    return f"x\n\n.. raw:: html\n\n   <script>alert(1)</script>\n\n.. include:: {secret_file}\n\n"


def test_directives_in_config_strings_take_no_effect(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET-4411")
    config = yaml.safe_load((REPO / "workflow" / "configs" / "smoke.yaml").read_text())
    config["tokenizer"] = _hostile(secret)
    config["model_cache"] = _hostile(secret)
    config["models"]["mine"] = {"source": "local", "path": _hostile(secret)}
    html = _render(validate_config(config))
    assert "<script>" not in html and "TOPSECRET-4411" not in html
    assert "\\u003cscript\\u003e" in html, "the text is shown, as JSON"
    assert '<span class="pre">tiny-a</span></tt> (random, gpt2 shape)' in html


def test_the_same_text_outside_the_template_would_run(tmp_path):
    # The check above means something: docutils, as snakemake calls it, obeys these directives.
    secret = tmp_path / "secret.txt"
    secret.write_text("TOPSECRET-4411")
    html = publish_parts(_hostile(secret), writer="html", settings_overrides={"report_level": 5})["html_body"]
    assert "<script>alert(1)</script>" in html and "TOPSECRET-4411" in html


def test_a_hub_id_is_shown_as_code_and_must_be_a_hub_id(tmp_path):
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    shown = '(hub, <tt class="docutils literal"><span class="pre">gpt2-medium</span></tt>)'
    assert shown in _render(validate_config(config))
    config["models"]["gpt2-small"]["hub_id"] = _hostile(tmp_path / "secret.txt")
    with pytest.raises(ConfigError, match="models.gpt2-small.hub_id: .* does not match"):
        validate_config(config)
