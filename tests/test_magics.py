"""The IPython extension in a real InteractiveShell: `%load_ext nbinspect`, then the magics."""

import pytest
from IPython.core.interactiveshell import InteractiveShell

import nbinspect
from nbinspect import magics


@pytest.fixture(scope="module")
def shell():
    ip = InteractiveShell.instance()
    ip.run_line_magic("load_ext", "nbinspect")
    yield ip


def run(ip, code):
    result = ip.run_cell(code)
    return result


def test_load_ext_registers_both_magics_and_twice_is_harmless(shell):
    assert "nbinspect" in shell.magics_manager.magics["cell"]
    assert "nbinspect" in shell.magics_manager.magics["line"]
    again = run(shell, "%load_ext nbinspect\n%reload_ext nbinspect")
    assert again.success, again.error_in_exec
    assert "nbinspect" in shell.magics_manager.magics["cell"]
    assert nbinspect.load_ipython_extension is magics.load_ipython_extension


@pytest.mark.real_model
def test_cell_magic_shows_the_dashboard_for_the_cell_text_with_the_default_model(shell):
    result = run(shell, "%%nbinspect --layer 4\nThe capital of France is Paris. The capital of Italy is\n")
    assert result.success, result.error_in_exec
    dash = result.result
    assert isinstance(dash, nbinspect.Dashboard)
    assert dash.selection.layer == 4 and dash.attention.layer == 4
    assert "".join(dash.attention.tokens).replace("Ġ", " ").strip().startswith("The capital of France")
    # The default model is cached for the session: the next cell reuses the very same object.
    model = dash.attention._adapter.model
    again = run(shell, "%nbinspect The capital of Italy is").result
    assert again.attention._adapter.model is model
    assert len(again.attention.tokens) < len(dash.attention.tokens)


@pytest.mark.real_model
def test_cell_magic_takes_a_model_id(shell):
    result = run(shell, "%%nbinspect minilm\nParis is the capital of France.")
    assert result.success, result.error_in_exec
    assert result.result.attention._adapter.model.config.model_type == "bert"
    assert result.result.attention.tokens[0] == "[CLS]"


def test_bad_input_says_what_to_do(shell):
    empty = run(shell, "%%nbinspect\n\n")
    assert isinstance(empty.error_in_exec, ValueError) and "cell body" in str(empty.error_in_exec)
    no_text = run(shell, "%nbinspect --layer 2")
    assert isinstance(no_text.error_in_exec, ValueError) and "needs some text" in str(no_text.error_in_exec)


@pytest.mark.real_model
def test_a_layer_out_of_range_is_refused_with_the_range(shell):
    bad = run(shell, "%%nbinspect --layer 99\nHello there")
    assert bad.error_in_exec is not None and "0..29" in str(bad.error_in_exec)
